//! Spawning a gateway for a test, and the client steps every test shares.

use std::sync::Arc;

use base64::Engine as _;
use mcp_oauth_gateway::authz::AuthzState;
use mcp_oauth_gateway::clock::FixedClock;
use mcp_oauth_gateway::config::SigningAlg;
use mcp_oauth_gateway::store::Store;
use mcp_oauth_gateway::store::memory::InMemoryStore;
use mcp_oauth_gateway::store::sqlite::{DB_FILE, SqliteStore};
use mcp_oauth_gateway::tokens::keys::{KeyRing, SigningKey};
use mcp_oauth_gateway::{Config, Gateway, Listeners};
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The time every test starts at.
pub const T0: u64 = 1_800_000_000;
pub const REDIRECT: &str = "http://127.0.0.1:7777/callback";

pub struct TestGateway {
    pub base: String,
    pub state: AuthzState,
    pub clock: Arc<FixedClock>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn() -> TestGateway {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestGateway {
    let key = SigningKey::generate(SigningAlg::ES256).expect("key");
    spawn_parts(adjust, Arc::new(InMemoryStore::new()), key).await
}

/// A gateway whose state and key live in `dir`, as the binary keeps them.
pub async fn spawn_persistent(dir: &std::path::Path, public_url: &str) -> TestGateway {
    let store = SqliteStore::open(&dir.join(DB_FILE)).expect("sqlite");
    let key = SigningKey::load_ring(dir, SigningAlg::ES256, T0, 3600 + 10).expect("key");
    let url = public_url.to_string();
    spawn_parts(|c| c.public_url = Some(url), Arc::new(store), key).await
}

/// A gateway whose key ring lives in `dir` and rotates as the binary's does (its
/// background rotation is off: tests call `rotate_if_due` with the clock they set).
pub async fn spawn_with_ring(dir: &std::path::Path) -> TestGateway {
    let ring = KeyRing::open(dir, SigningAlg::ES256, T0, 3600 + 10).expect("ring");
    spawn_parts(
        |c| c.key_rotation_seconds = 0,
        Arc::new(InMemoryStore::new()),
        ring,
    )
    .await
}

async fn spawn_parts(
    adjust: impl FnOnce(&mut Config),
    store: Arc<dyn Store>,
    key: impl Into<KeyRing>,
) -> TestGateway {
    let mut config = Config::for_test(std::env::temp_dir().join("mog-unused"));
    adjust(&mut config);
    let config_tls = config.tls_cert.is_some();
    let listeners = Listeners::bind(&config).await.expect("bind port 0");
    let clock = Arc::new(FixedClock::new(T0));
    let gateway =
        Gateway::with_parts(config, listeners, store, clock.clone(), key).expect("gateway");
    let addrs = gateway.addrs();
    let scheme = if config_tls { "https" } else { "http" };
    let state = gateway.state().authz.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async move {
        let _ = rx.await;
    }));
    TestGateway {
        base: format!("{scheme}://{}", addrs.proxy),
        state,
        clock,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        stop: Some(tx),
        task: Some(task),
    }
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let verifier = mcp_oauth_gateway::secret::random_token(48).expect("rng");
    let challenge = mcp_oauth_gateway::secret::sha256_b64(&verifier);
    Pkce {
        verifier,
        challenge,
    }
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The value of the hidden input `name` in a page's form.
pub fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').expect("quote")].to_string()
}

/// Parse a JSON-RPC answer that came as JSON or as SSE `data:` lines.
pub fn jsonrpc_body(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or(Value::Null)
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

impl TestGateway {
    /// Use `http` for every request the helpers make (a client that trusts a test CA, say).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a URL; its status.
    pub async fn get_status(&self, url: impl reqwest::IntoUrl) -> u16 {
        self.http
            .get(url)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16()
    }

    /// GET a URL; its JSON body.
    pub async fn get_json(&self, url: impl reqwest::IntoUrl) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    pub fn resource(&self) -> String {
        self.state.settings.resource.clone()
    }

    pub async fn register(&self) -> String {
        let res = self
            .http
            .post(self.url("/register"))
            .json(&json!({"redirect_uris": [REDIRECT], "client_name": "integration test"}))
            .send()
            .await
            .expect("register");
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.expect("json");
        body["client_id"].as_str().expect("client_id").to_string()
    }

    pub fn authorize_url(&self, client_id: &str, pkce: &Pkce, scope: Option<&str>) -> String {
        let mut url = url::Url::parse(&self.url("/authorize")).expect("url");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", REDIRECT)
                .append_pair("code_challenge", &pkce.challenge)
                .append_pair("code_challenge_method", "S256")
                .append_pair("state", "st-123")
                .append_pair("resource", &self.resource());
            if let Some(s) = scope {
                q.append_pair("scope", s);
            }
        }
        url.to_string()
    }

    /// Load the consent page and submit `decision`; returns the redirect Location.
    pub async fn consent(&self, authorize_url: &str, decision: &str) -> String {
        let res = self
            .http
            .get(authorize_url)
            .send()
            .await
            .expect("authorize");
        if res.status() == 302 && decision == "approve" {
            // This user already approved this client: no page is shown again.
            return res.headers()[LOCATION]
                .to_str()
                .expect("location")
                .to_string();
        }
        assert_eq!(res.status(), 200, "consent page");
        let html = res.text().await.expect("html");
        let field = |name: &str| form_field(&html, name);
        let res = self
            .http
            .post(self.url("/consent"))
            .form(&[
                ("request_id", field("request_id")),
                ("csrf_token", field("csrf_token")),
                ("decision", decision.to_string()),
            ])
            .send()
            .await
            .expect("consent");
        assert_eq!(res.status(), 302);
        res.headers()[LOCATION]
            .to_str()
            .expect("location")
            .to_string()
    }

    pub async fn code(&self, client_id: &str, pkce: &Pkce, scope: Option<&str>) -> String {
        let loc = self
            .consent(&self.authorize_url(client_id, pkce, scope), "approve")
            .await;
        query_param(&loc, "code").expect("code in redirect")
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
        let res = self
            .http
            .post(self.url("/token"))
            .form(form)
            .send()
            .await
            .expect("token");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn redeem(&self, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
        let (s, _, v) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("client_id", client_id),
                ("code_verifier", verifier),
                ("resource", &self.resource()),
            ])
            .await;
        (s, v)
    }

    pub async fn refresh(&self, client_id: &str, refresh: &str) -> (u16, Value) {
        let (s, _, v) = self
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", client_id),
            ])
            .await;
        (s, v)
    }

    /// Register, consent and redeem: a fresh client with tokens.
    pub async fn login(&self, scope: Option<&str>) -> (String, Tokens) {
        let client_id = self.register().await;
        let p = pkce();
        let code = self.code(&client_id, &p, scope).await;
        let (status, body) = self.redeem(&client_id, &code, &p.verifier).await;
        assert_eq!(status, 200, "{body}");
        let tokens = Tokens {
            access: body["access_token"].as_str().expect("access").into(),
            refresh: body["refresh_token"].as_str().expect("refresh").into(),
        };
        (client_id, tokens)
    }

    /// POST a JSON-RPC message to /mcp through the proxy.
    pub async fn mcp(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        body: Value,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let res = req.send().await.expect("mcp");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        (status, headers, jsonrpc_body(&text))
    }

    /// initialize + initialized; returns the session id.
    pub async fn mcp_session(&self, token: &str) -> String {
        let (s, h, v) = self
            .mcp(
                Some(token),
                None,
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                    "protocolVersion":"2025-06-18","capabilities":{},
                    "clientInfo":{"name":"it","version":"1"}}}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["result"]["serverInfo"]["name"], "mcp-oauth-gateway");
        let sid = h["mcp-session-id"].to_str().expect("sid").to_string();
        let (s, _, _) = self
            .mcp(
                Some(token),
                Some(&sid),
                json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            )
            .await;
        assert_eq!(s, 202);
        sid
    }

    pub async fn call_tool(
        &self,
        token: &str,
        sid: &str,
        name: &str,
        args: Value,
    ) -> (u16, HeaderMap, Value) {
        self.mcp(
            Some(token),
            Some(sid),
            json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":name,"arguments":args}}),
        )
        .await
    }

    /// Sign arbitrary claims with the gateway's own key, typed `at+jwt` as its tokens are.
    pub fn mint(&self, claims: Value) -> String {
        self.mint_with(claims, |_| {})
    }

    /// Sign claims with the gateway's own key, with the header as `edit` leaves it.
    pub fn mint_with(&self, claims: Value, edit: impl FnOnce(&mut jsonwebtoken::Header)) -> String {
        let key = self.state.keys.current();
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        edit(&mut header);
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign")
    }

    pub fn claims(&self) -> Value {
        json!({
            "iss": self.state.settings.issuer, "sub": "mallory", "aud": self.resource(),
            "exp": T0 + 600, "iat": T0, "nbf": T0, "jti": "minted",
            "scope": "mcp:read mcp:write", "client_id": "x"
        })
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("gateway ran cleanly");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Decode a JWT's payload without verifying it (for assertions on claims).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("json")
}

/// Decode a JWT's header without verifying it.
pub fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("json")
}
