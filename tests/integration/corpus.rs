//! The bad-input corpus (issue 5): a table of malformed, hostile and replayed requests to
//! every endpoint. Each gets the standard error and status (RFC 6749 §5.2 JSON errors,
//! RFC 7591 §3.2.2, RFC 6750 challenges and JSON-RPC errors on /mcp, an HTML page and no
//! redirect for an authorization request that cannot be trusted), none is a 5xx, none
//! splits a header, and afterwards tokens obtained before the corpus still work.
//!
//! Failures are collected over the whole table and reported together at the end.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use mcp_oauth_gateway::clock::Clock as _;
use mcp_oauth_gateway::config::SigningAlg;
use mcp_oauth_gateway::tokens::keys::SigningKey;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::common::{self, REDIRECT, TestGateway, jsonrpc_body, pkce, query_param};

/// A request to the gateway's public proxy, path and raw query as written.
struct Req {
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn path_with_query(mut self, query: &str) -> Self {
        self.path = format!("{}?{query}", self.path);
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A form body, written raw (so repeated and non-UTF-8 parameters can be sent).
    fn form(self, raw: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(raw)
    }

    fn json(self, raw: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/json").body(raw)
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn basic(self, id: &str, secret: &str) -> Self {
        let v = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        self.header("authorization", v)
    }

    /// A POST to /mcp as an MCP client sends it.
    fn mcp(token: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        let r = Self::post("/mcp")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(body);
        match token {
            Some(t) => r.bearer(t),
            None => r,
        }
    }

    fn summary(&self) -> String {
        let mut s = format!("{} {}", self.method, cut(&self.path, 240));
        for (k, v) in &self.headers {
            s.push_str(&format!(
                "\n      {k}: {}",
                cut(&String::from_utf8_lossy(v), 120)
            ));
        }
        if let Some(b) = &self.body {
            s.push_str(&format!(
                "\n      body ({} bytes): {}",
                b.len(),
                cut(&String::from_utf8_lossy(b), 200)
            ));
        }
        s
    }
}

fn cut(s: &str, max: usize) -> String {
    let s = s.escape_debug().to_string();
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// What came back.
struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn summary(&self) -> String {
        let mut s = format!("{}", self.status);
        for h in [
            "content-type",
            "location",
            "www-authenticate",
            "allow",
            "cache-control",
        ] {
            if let Some(v) = self.header(h) {
                s.push_str(&format!("\n      {h}: {}", cut(&v, 240)));
            }
        }
        s.push_str(&format!("\n      body: {}", cut(&self.text, 300)));
        s
    }
}

type CheckFn = Box<dyn Fn(&Resp) -> Result<(), String>>;

/// The standard answer a case must get.
enum Expect {
    /// RFC 6749 §5.2 / RFC 7591 §3.2.2 JSON error: one of these statuses and codes.
    OAuth(&'static [u16], &'static [&'static str]),
    /// RFC 6750 challenge on /mcp: this status, and this `error` (None: no error code).
    Bearer(u16, Option<&'static str>),
    /// A JSON-RPC error body on /mcp: one of these statuses and codes.
    JsonRpc(&'static [u16], &'static [i64]),
    /// An HTML error page and no Location: the request cannot be trusted to redirect.
    Page(u16),
    /// An error sent back to the registered redirect URI with the exact state and `iss`.
    Redirect(&'static str, Option<String>),
    /// Either an error page or an error redirect with this code (both are standard).
    PageOrRedirect(&'static str),
    /// 405 with an `Allow` header (RFC 9110 §15.5.6).
    MethodNotAllowed,
    /// 413 (RFC 9110 §15.5.14).
    TooLarge,
    /// Any of these statuses.
    Status(&'static [u16]),
    /// Anything else.
    Check(CheckFn),
}

struct Case {
    name: String,
    req: Req,
    expect: Expect,
}

struct Ctx {
    issuer: String,
}

fn check_oauth(r: &Resp, statuses: &[u16], codes: &[&str]) -> Result<(), String> {
    if !statuses.contains(&r.status) {
        return Err(format!("status {} (want one of {statuses:?})", r.status));
    }
    let ct = r.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content-type `{ct}` is not application/json"));
    }
    let v = r.json();
    let Some(code) = v["error"].as_str() else {
        return Err("no `error` string in the JSON body".into());
    };
    if !codes.contains(&code) {
        return Err(format!("error `{code}` (want one of {codes:?})"));
    }
    if !(v["error_description"].is_null() || v["error_description"].is_string()) {
        return Err("error_description is not a string".into());
    }
    if !r
        .header("cache-control")
        .is_some_and(|c| c.contains("no-store"))
    {
        return Err("no `Cache-Control: no-store`".into());
    }
    if r.status == 401 && r.header("www-authenticate").is_none() {
        return Err("401 without WWW-Authenticate (RFC 6749 §5.2, RFC 9110 §15.5.2)".into());
    }
    Ok(())
}

fn check_bearer(r: &Resp, status: u16, code: Option<&str>) -> Result<(), String> {
    if r.status != status {
        return Err(format!("status {} (want {status})", r.status));
    }
    let Some(c) = r.header("www-authenticate") else {
        return Err("no WWW-Authenticate".into());
    };
    if !c.to_ascii_lowercase().starts_with("bearer ") {
        return Err(format!("challenge `{c}` is not Bearer"));
    }
    if !c.contains("resource_metadata=\"") {
        return Err(format!("challenge `{c}` lacks resource_metadata"));
    }
    match code {
        Some(code) if !c.contains(&format!("error=\"{code}\"")) => {
            Err(format!("challenge `{c}` lacks error=\"{code}\""))
        }
        None if c.contains("error=") => Err(format!("challenge `{c}` has an error code")),
        _ => Ok(()),
    }
}

fn check_jsonrpc(r: &Resp, statuses: &[u16], codes: &[i64]) -> Result<(), String> {
    if !statuses.contains(&r.status) {
        return Err(format!("status {} (want one of {statuses:?})", r.status));
    }
    let v = jsonrpc_body(&r.text);
    // A refused batch is answered per element (JSON-RPC 2.0 §6): every element an error.
    if let Value::Array(replies) = &v
        && !replies.is_empty()
    {
        return replies.iter().try_for_each(|one| {
            check_jsonrpc(
                &Resp {
                    status: r.status,
                    headers: r.headers.clone(),
                    text: one.to_string(),
                },
                statuses,
                codes,
            )
        });
    }
    if v["jsonrpc"] != "2.0" {
        return Err("not a JSON-RPC 2.0 body".into());
    }
    if v.get("result").is_some() {
        return Err("a result, not an error".into());
    }
    match v["error"]["code"].as_i64() {
        Some(c) if codes.contains(&c) => Ok(()),
        other => Err(format!("error code {other:?} (want one of {codes:?})")),
    }
}

fn check_page(r: &Resp, status: u16) -> Result<(), String> {
    if r.status != status {
        return Err(format!("status {} (want {status})", r.status));
    }
    if let Some(loc) = r.header("location") {
        return Err(format!("redirects to `{loc}`"));
    }
    let ct = r.header("content-type").unwrap_or_default();
    if !ct.starts_with("text/html") {
        return Err(format!("content-type `{ct}` is not text/html"));
    }
    Ok(())
}

fn check_redirect(ctx: &Ctx, r: &Resp, error: &str, state: Option<&str>) -> Result<(), String> {
    if !matches!(r.status, 302 | 303) {
        return Err(format!("status {} (want a 302 redirect)", r.status));
    }
    let loc = r.header("location").ok_or("no Location")?;
    let base = loc.split('?').next().unwrap_or_default();
    if base != REDIRECT {
        return Err(format!("redirects to `{loc}`, not the registered URI"));
    }
    if query_param(&loc, "error").as_deref() != Some(error) {
        return Err(format!("Location `{loc}` lacks error={error}"));
    }
    if query_param(&loc, "code").is_some() {
        return Err("an error redirect carries a code".into());
    }
    if query_param(&loc, "state").as_deref() != state {
        return Err(format!("state in `{loc}` is not exactly {state:?}"));
    }
    if query_param(&loc, "iss").as_deref() != Some(ctx.issuer.as_str()) {
        return Err(format!("Location `{loc}` lacks iss (RFC 9207)"));
    }
    Ok(())
}

/// Invariants every answer keeps, whatever the case.
fn check_always(r: &Resp) -> Result<(), String> {
    if r.status >= 500 {
        return Err(format!("server error {}", r.status));
    }
    if r.headers.contains_key("x-injected") {
        return Err("a parameter split the response headers (X-Injected came back)".into());
    }
    if r.headers.get_all("set-cookie").iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains("injected")
    }) {
        return Err("an injected Set-Cookie came back".into());
    }
    Ok(())
}

fn check(ctx: &Ctx, expect: &Expect, r: &Resp) -> Result<(), String> {
    check_always(r)?;
    match expect {
        Expect::OAuth(s, c) => check_oauth(r, s, c),
        Expect::Bearer(s, c) => check_bearer(r, *s, *c),
        Expect::JsonRpc(s, c) => check_jsonrpc(r, s, c),
        Expect::Page(s) => check_page(r, *s),
        Expect::Redirect(e, st) => check_redirect(ctx, r, e, st.as_deref()),
        Expect::PageOrRedirect(e) => {
            if r.header("location").is_some() {
                let st = r.header("location").and_then(|l| query_param(&l, "state"));
                check_redirect(ctx, r, e, st.as_deref())
            } else {
                check_page(r, 400)
            }
        }
        Expect::MethodNotAllowed => match (r.status, r.header("allow")) {
            (405, Some(_)) => Ok(()),
            (405, None) => Err("405 without an Allow header".into()),
            (s, _) => Err(format!("status {s} (want 405)")),
        },
        Expect::TooLarge => match r.status {
            413 => Ok(()),
            s => Err(format!("status {s} (want 413)")),
        },
        Expect::Status(s) => match s.contains(&r.status) {
            true => Ok(()),
            false => Err(format!("status {} (want one of {s:?})", r.status)),
        },
        Expect::Check(f) => f(r),
    }
}

async fn send(gw: &TestGateway, req: &Req) -> Result<Resp, String> {
    let mut b = gw.http.request(req.method.clone(), gw.url(&req.path));
    for (k, v) in &req.headers {
        let value = HeaderValue::from_bytes(v).map_err(|e| format!("test bug: header: {e}"))?;
        b = b.header(HeaderName::from_static(k), value);
    }
    if let Some(body) = &req.body {
        b = b.body(body.clone());
    }
    let res = b
        .send()
        .await
        .map_err(|e| format!("transport error: {e:?}"))?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e:?}"))?;
    Ok(Resp {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Write `bytes` to the proxy as they are and read the answer (the request asks the server to
/// close the connection after it).
async fn raw_send(addr: &str, bytes: &[u8]) -> Result<Resp, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .map_err(|_| "no answer and the connection stayed open".to_string())?
    .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {}", cut(&text, 200)))?;
    let mut headers = HeaderMap::new();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            )
        {
            headers.append(k, v);
        }
    }
    Ok(Resp {
        status,
        headers,
        text,
    })
}

fn b64json(v: &Value) -> String {
    B64.encode(v.to_string())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A query or form string from pairs, values encoded.
fn pairs(p: &[(&str, &str)]) -> String {
    p.iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `base` with `key` set to `value` (None: removed).
fn with(base: &[(&'static str, String)], changes: &[(&'static str, Option<&str>)]) -> String {
    let mut out: Vec<(&str, String)> = base.to_vec();
    for (k, v) in changes {
        match (out.iter().position(|(name, _)| name == k), v) {
            (Some(i), Some(v)) => out[i].1 = (*v).to_string(),
            (Some(i), None) => {
                out.remove(i);
            }
            (None, Some(v)) => out.push((k, (*v).to_string())),
            (None, None) => {}
        }
    }
    let p: Vec<(&str, &str)> = out.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs(&p)
}

async fn register(gw: &TestGateway, body: Value) -> Value {
    let res = gw
        .http
        .post(gw.url("/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "setup registration {body}");
    res.json().await.unwrap()
}

/// Call `name` in a fresh session; the tool's text, or why not.
async fn tool_text(
    gw: &TestGateway,
    token: &str,
    name: &str,
    args: Value,
) -> Result<String, String> {
    let sid = gw.mcp_session(token).await;
    let (s, _, v) = gw.call_tool(token, &sid, name, args).await;
    match (s, v["result"]["content"][0]["text"].as_str()) {
        (200, Some(t)) if v["result"]["isError"] != true => Ok(t.to_string()),
        _ => Err(format!("tools/call {name}: {s} {v}")),
    }
}

#[tokio::test]
async fn bad_input_corpus() {
    let gw = common::spawn_with(|c| c.register_rate_per_minute = 0).await;
    let issuer = gw.state.settings.issuer.clone();
    let resource = gw.resource();
    let ctx = Ctx {
        issuer: issuer.clone(),
    };

    // ---- State the corpus must not disturb, and state some cases need. ----
    // Kept untouched: a read-only login whose tokens must work after the corpus.
    let (keep_client, keep) = gw.login(Some("mcp:read")).await;
    // A read-write login whose token carries the /mcp body cases.
    let (work_client, work) = gw.login(None).await;
    // A code still waiting to be redeemed: malformed verifiers must not burn it.
    let pending_pkce = pkce();
    let pending_code = gw.code(&work_client, &pending_pkce, None).await;
    // A code redeemed once, to be replayed.
    let used_pkce = pkce();
    let used_code = gw.code(&work_client, &used_pkce, None).await;
    let (s, _) = gw
        .redeem(&work_client, &used_code, &used_pkce.verifier)
        .await;
    assert_eq!(s, 200);
    // Codes spent by cases that pass the verifier check.
    let res_pkce = pkce();
    let res_code = gw.code(&work_client, &res_pkce, None).await;
    let redir_pkce = pkce();
    let redir_code = gw.code(&work_client, &redir_pkce, None).await;
    // A refresh token rotated out and then left past the grace window.
    let (rr_client, rr) = gw.login(None).await;
    let (s, _) = gw.refresh(&rr_client, &rr.refresh).await;
    assert_eq!(s, 200);
    let grace = gw.state.settings.config.refresh_grace_seconds;
    gw.clock.advance(grace + 1);
    let now = gw.clock.now();
    // A confidential client for introspection, and an https one for port tricks. (An
    // anonymous registration cannot ask for client_credentials: issue 12.)
    let svc = register(
        &gw,
        json!({"client_name":"svc","token_endpoint_auth_method":"client_secret_basic",
               "redirect_uris":[REDIRECT]}),
    )
    .await;
    let svc_id = svc["client_id"].as_str().unwrap().to_string();
    let svc_secret = svc["client_secret"].as_str().unwrap().to_string();
    let https_client = register(&gw, json!({"redirect_uris":["https://app.example.com/cb"]})).await;
    let https_id = https_client["client_id"].as_str().unwrap().to_string();
    let xss = register(
        &gw,
        json!({"redirect_uris":[REDIRECT],"client_name":"<script>alert(1)</script>\"><img src=x onerror=alert(2)>"}),
    )
    .await;
    let xss_id = xss["client_id"].as_str().unwrap().to_string();
    // An MCP session of the read-only token, for policy-bypass attempts.
    let keep_sid = gw.mcp_session(&keep.access).await;

    // ---- Tokens for the resource server. ----
    let key = gw.state.keys.current();
    let kid = key.kid.clone();
    let claims = |change: &[(&str, Value)]| {
        let mut c = gw.claims();
        c["exp"] = json!(now + 600);
        c["iat"] = json!(now);
        c["nbf"] = json!(now);
        for (k, v) in change {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(*k);
            } else {
                c[*k] = v.clone();
            }
        }
        c
    };
    let good = gw.mint(claims(&[]));
    let mint_with =
        |header: jsonwebtoken::Header, payload: &Value, k: &jsonwebtoken::EncodingKey| {
            jsonwebtoken::encode(&header, payload, k).unwrap()
        };
    let mut good_parts = good.split('.');
    let (good_h, good_p) = (
        good_parts.next().unwrap().to_string(),
        good_parts.next().unwrap().to_string(),
    );
    let alg_none = |alg: &str| {
        format!(
            "{}.{}.",
            b64json(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
            b64json(&claims(&[]))
        )
    };
    let jwk_json = serde_json::to_string(&key.jwk).unwrap();
    let jwks_json = serde_json::to_string(&key.jwks()).unwrap();
    let hs256 = |secret: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        mint_with(
            h,
            &claims(&[]),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
    };
    let es256_kid = |kid: Option<&str>| {
        let mut h = jsonwebtoken::Header::new(key.alg);
        h.kid = kid.map(str::to_string);
        mint_with(h, &claims(&[]), &key.encoding)
    };
    let foreign = SigningKey::generate(SigningAlg::ES256).unwrap();
    let foreign_rsa = SigningKey::generate(SigningAlg::RS256).unwrap();
    let foreign_with_our_kid = {
        let mut h = jsonwebtoken::Header::new(foreign.alg);
        h.kid = Some(kid.clone());
        mint_with(h, &claims(&[]), &foreign.encoding)
    };
    let rs256_our_kid = {
        let mut h = jsonwebtoken::Header::new(foreign_rsa.alg);
        h.kid = Some(kid.clone());
        mint_with(h, &claims(&[]), &foreign_rsa.encoding)
    };
    let embedded_jwk = {
        let mut h = jsonwebtoken::Header::new(foreign.alg);
        h.kid = Some(foreign.kid.clone());
        h.jwk = Some(foreign.jwk.clone());
        mint_with(h, &claims(&[]), &foreign.encoding)
    };
    let signed_payload = |payload: Value| {
        let mut h = jsonwebtoken::Header::new(key.alg);
        h.kid = Some(kid.clone());
        mint_with(h, &payload, &key.encoding)
    };

    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"corpus","version":"1"}}}"#;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let crlf_state = "st\r\nX-Injected: yes\r\nSet-Cookie: injected=1";
    let challenge = pending_pkce.challenge.clone();

    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str, req: Req, expect: Expect| {
        cases.push(Case {
            name: name.to_string(),
            req,
            expect,
        });
    };

    // ================= /authorize =================
    let base: Vec<(&'static str, String)> = vec![
        ("response_type", "code".into()),
        ("client_id", work_client.clone()),
        ("redirect_uri", REDIRECT.into()),
        ("code_challenge", challenge.clone()),
        ("code_challenge_method", "S256".into()),
        ("state", "st-corpus".into()),
        ("resource", resource.clone()),
    ];
    let authz =
        |changes: &[(&'static str, Option<&str>)]| format!("/authorize?{}", with(&base, changes));
    let st = Some("st-corpus".to_string());
    add(
        "authorize/no-parameters",
        Req::get("/authorize"),
        Expect::Page(400),
    );
    add(
        "authorize/unknown-client",
        Req::get(authz(&[("client_id", Some("nobody"))])),
        Expect::Page(400),
    );
    add(
        "authorize/missing-client-id",
        Req::get(authz(&[("client_id", None)])),
        Expect::Page(400),
    );
    add(
        "authorize/duplicate-client-id",
        Req::get(format!("{}&client_id={}", authz(&[]), enc(&work_client))),
        Expect::Page(400),
    );
    add(
        "authorize/duplicate-redirect-uri",
        Req::get(format!("{}&redirect_uri={}", authz(&[]), enc(REDIRECT))),
        Expect::Page(400),
    );
    add(
        "authorize/duplicate-state",
        Req::get(format!("{}&state=other", authz(&[]))),
        Expect::PageOrRedirect("invalid_request"),
    );
    add(
        "authorize/duplicate-code-challenge",
        Req::get(format!(
            "{}&code_challenge={}",
            authz(&[]),
            pkce().challenge
        )),
        Expect::PageOrRedirect("invalid_request"),
    );
    for (name, uri) in [
        ("suffix-host", "http://127.0.0.1.evil.com/callback"),
        (
            "suffix-host-with-port",
            "http://127.0.0.1.evil.com:7777/callback",
        ),
        (
            "userinfo-evil-at-loopback",
            "https://evil.com@127.0.0.1/callback",
        ),
        (
            "userinfo-on-registered",
            "http://evil.com@127.0.0.1:7777/callback",
        ),
        ("fragment", "http://127.0.0.1:7777/callback#frag"),
        ("encoded-fragment", "http://127.0.0.1:7777/callback%23frag"),
        ("upper-case-scheme", "HTTP://127.0.0.1:7777/callback"),
        ("upper-case-path", "http://127.0.0.1:7777/CALLBACK"),
        ("path-traversal-out", "http://127.0.0.1:7777/callback/../x"),
        (
            "path-traversal-back-in",
            "http://127.0.0.1:7777/x/../callback",
        ),
        (
            "encoded-path-traversal",
            "http://127.0.0.1:7777/callback/%2e%2e/x",
        ),
        ("trailing-slash", "http://127.0.0.1:7777/callback/"),
        (
            "extra-query",
            "http://127.0.0.1:7777/callback?next=https://evil.com",
        ),
        ("backslash", "http://127.0.0.1:7777\\@evil.com/callback"),
        ("other-loopback-host", "http://localhost:7777/callback"),
        ("https-upgrade-of-http", "https://127.0.0.1:7777/callback"),
        ("crlf", "http://127.0.0.1:7777/callback\r\nX-Injected: yes"),
        ("tab-in-path", "http://127.0.0.1:7777/call\tback"),
        ("newline-in-path", "http://127.0.0.1:7777/callback\n"),
        ("javascript", "javascript:alert(1)"),
        ("relative", "/callback"),
    ] {
        add(
            &format!("authorize/redirect-{name}"),
            Req::get(authz(&[("redirect_uri", Some(uri))])),
            Expect::Page(400),
        );
    }
    let https_base: Vec<(&'static str, String)> = base
        .iter()
        .map(|(k, v)| match *k {
            "client_id" => (*k, https_id.clone()),
            "redirect_uri" => (*k, "https://app.example.com/cb".to_string()),
            _ => (*k, v.clone()),
        })
        .collect();
    for (name, uri) in [
        ("https-other-port", "https://app.example.com:8443/cb"),
        (
            "https-default-port-spelled",
            "https://app.example.com:443/cb",
        ),
        ("https-suffix-host", "https://app.example.com.evil.com/cb"),
        ("https-upper-case-host", "https://APP.example.com/cb"),
        ("https-downgrade-to-http", "http://app.example.com/cb"),
        ("https-userinfo", "https://evil.com@app.example.com/cb"),
    ] {
        add(
            &format!("authorize/redirect-{name}"),
            Req::get(format!(
                "/authorize?{}",
                with(&https_base, &[("redirect_uri", Some(uri))])
            )),
            Expect::Page(400),
        );
    }
    add(
        "authorize/response-type-token",
        Req::get(authz(&[("response_type", Some("token"))])),
        Expect::Redirect("unsupported_response_type", st.clone()),
    );
    add(
        "authorize/pkce-plain",
        Req::get(authz(&[("code_challenge_method", Some("plain"))])),
        Expect::Redirect("invalid_request", st.clone()),
    );
    add(
        "authorize/pkce-missing",
        Req::get(authz(&[
            ("code_challenge", None),
            ("code_challenge_method", None),
        ])),
        Expect::Redirect("invalid_request", st.clone()),
    );
    add(
        "authorize/pkce-challenge-short",
        Req::get(authz(&[("code_challenge", Some(&challenge[..42]))])),
        Expect::Redirect("invalid_request", st.clone()),
    );
    let plus_challenge = format!("{}+", &challenge[..42]);
    add(
        "authorize/pkce-challenge-bad-characters",
        Req::get(authz(&[("code_challenge", Some(&plus_challenge))])),
        Expect::Redirect("invalid_request", st.clone()),
    );
    add(
        "authorize/scope-unknown",
        Req::get(authz(&[("scope", Some("mcp:read mcp:root"))])),
        Expect::Redirect("invalid_scope", st.clone()),
    );
    add(
        "authorize/resource-other-server",
        Req::get(authz(&[("resource", Some("https://other.example/mcp"))])),
        Expect::Redirect("invalid_target", st.clone()),
    );
    let crlf_resource = format!("{resource}\r\nX-Injected: yes");
    add(
        "authorize/resource-crlf",
        Req::get(authz(&[("resource", Some(&crlf_resource))])),
        Expect::Redirect("invalid_target", st.clone()),
    );
    add(
        "authorize/state-crlf-on-error",
        Req::get(authz(&[
            ("response_type", Some("token")),
            ("state", Some(crlf_state)),
        ])),
        Expect::Redirect("unsupported_response_type", Some(crlf_state.to_string())),
    );
    add(
        "authorize/state-crlf-on-success",
        Req::get(authz(&[("state", Some(crlf_state))])),
        Expect::Check(Box::new(move |r| {
            let loc = r
                .header("location")
                .ok_or(format!("status {}, no Location", r.status))?;
            if r.status != 302 || !loc.starts_with(REDIRECT) {
                return Err(format!("{} to `{loc}`", r.status));
            }
            if loc.contains(['\r', '\n']) {
                return Err("raw CR/LF in Location".into());
            }
            match (query_param(&loc, "code"), query_param(&loc, "state")) {
                (Some(_), Some(s)) if s == crlf_state => Ok(()),
                _ => Err(format!("state not returned exactly in `{loc}`")),
            }
        })),
    );
    add(
        "authorize/non-utf8-client-id",
        Req::get(format!(
            "{}&client_id=%ff%fe",
            authz(&[("client_id", None)])
        )),
        Expect::Page(400),
    );
    add(
        "authorize/non-utf8-state",
        Req::get(format!("{}&state=%ff%fe", authz(&[("state", None)]))),
        Expect::PageOrRedirect("invalid_request"),
    );
    add(
        "authorize/non-utf8-redirect-uri",
        Req::get(format!(
            "{}&redirect_uri=http%3A%2F%2F127.0.0.1%3A7777%2Fcallback%ff",
            authz(&[("redirect_uri", None)])
        )),
        Expect::Page(400),
    );
    add(
        "authorize/post",
        Req::post(authz(&[])).form(""),
        Expect::MethodNotAllowed,
    );
    let xss_url = format!(
        "/authorize?{}",
        with(&base, &[("client_id", Some(&xss_id))])
    );
    add(
        "authorize/client-name-html-is-escaped",
        Req::get(xss_url),
        Expect::Check(Box::new(|r| {
            if r.status != 200 {
                return Err(format!("status {} (want the consent page)", r.status));
            }
            if r.text.contains("<script>alert") || r.text.contains("<img src=x") {
                return Err("client_name rendered unescaped".into());
            }
            Ok(())
        })),
    );

    // ================= /consent =================
    add(
        "consent/empty",
        Req::post("/consent").form(""),
        Expect::Page(400),
    );
    add(
        "consent/unknown-request",
        Req::post("/consent").form("request_id=nope&csrf_token=nope&decision=approve"),
        Expect::Page(400),
    );
    add(
        "consent/cross-site",
        Req::post("/consent")
            .header("origin", "http://evil.example")
            .header("sec-fetch-site", "cross-site")
            .form("request_id=nope&csrf_token=nope&decision=approve"),
        Expect::Page(403),
    );
    add(
        "consent/duplicate-parameters",
        Req::post("/consent").form("request_id=a&request_id=b&csrf_token=x&decision=approve"),
        Expect::Page(400),
    );
    add(
        "consent/non-utf8",
        Req::post("/consent").form(&b"request_id=%ff%fe&csrf_token=\xff&decision=approve"[..]),
        Expect::Page(400),
    );
    add(
        "consent/get",
        Req::get("/consent"),
        Expect::MethodNotAllowed,
    );

    // ================= /token =================
    let bad_req: &[&str] = &["invalid_request"];
    let code_form = |code: &str, verifier: &str, extra: &[(&str, &str)]| {
        let mut p = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", work_client.as_str()),
            ("code_verifier", verifier),
        ];
        p.extend_from_slice(extra);
        pairs(&p)
    };
    let refresh_form = |token: &str, client: &str, extra: &[(&str, &str)]| {
        let mut p = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client),
        ];
        p.extend_from_slice(extra);
        pairs(&p)
    };
    add("token/get", Req::get("/token"), Expect::MethodNotAllowed);
    add(
        "token/unknown-grant-type",
        Req::post("/token").form(format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=x&client_id={work_client}"
        )),
        Expect::OAuth(&[400], &["unsupported_grant_type"]),
    );
    add(
        "token/password-grant",
        Req::post("/token").form(format!(
            "grant_type=password&username=a&password=b&client_id={work_client}"
        )),
        Expect::OAuth(&[400], &["unsupported_grant_type"]),
    );
    add(
        "token/missing-grant-type",
        Req::post("/token").form(format!("code=x&client_id={work_client}")),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/no-content-type",
        Req::post("/token").body(refresh_form(&keep.refresh, &keep_client, &[])),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/json-body",
        Req::post("/token").json(
            json!({"grant_type":"refresh_token","refresh_token":keep.refresh,"client_id":keep_client})
                .to_string(),
        ),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/duplicate-code",
        Req::post("/token").form(format!(
            "{}&code=other",
            code_form(&pending_code, &pending_pkce.verifier, &[])
        )),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/duplicate-grant-type-differing",
        Req::post("/token").form(format!(
            "grant_type=client_credentials&{}",
            refresh_form(&keep.refresh, &keep_client, &[])
        )),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/duplicate-refresh-token",
        Req::post("/token").form(format!(
            "{}&refresh_token={}",
            refresh_form(&keep.refresh, &keep_client, &[]),
            enc(&keep.refresh)
        )),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/code-replay",
        Req::post("/token").form(code_form(&used_code, &used_pkce.verifier, &[])),
        Expect::OAuth(&[400], &["invalid_grant"]),
    );
    let v = &pending_pkce.verifier;
    let long = format!("{v}{}", "a".repeat(129 - v.len()));
    let plus = format!("{}+", &v[..v.len() - 1]);
    let space = format!("{} ", &v[..v.len() - 1]);
    let accent = format!("{}é", &v[..v.len() - 1]);
    for (name, verifier) in [
        ("verifier-42-chars", &v[..42]),
        ("verifier-129-chars", long.as_str()),
        ("verifier-plus", plus.as_str()),
        ("verifier-space", space.as_str()),
        ("verifier-non-ascii", accent.as_str()),
    ] {
        add(
            &format!("token/pkce-{name}"),
            Req::post("/token").form(code_form(&pending_code, verifier, &[])),
            Expect::OAuth(&[400], bad_req),
        );
    }
    add(
        "token/pkce-verifier-non-utf8",
        Req::post("/token").form(format!(
            "{}&code_verifier={}%ff%fe",
            code_form(&pending_code, v, &[]).replace(&format!("&code_verifier={v}"), ""),
            &v[..41]
        )),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "token/code-resource-other-server",
        Req::post("/token").form(code_form(
            &res_code,
            &res_pkce.verifier,
            &[("resource", "https://other.example/mcp")],
        )),
        Expect::OAuth(&[400], &["invalid_target"]),
    );
    add(
        "token/code-redirect-uri-trailing-slash",
        Req::post("/token").form(
            code_form(&redir_code, &redir_pkce.verifier, &[])
                .replace(&enc(REDIRECT), &enc(&format!("{REDIRECT}/"))),
        ),
        Expect::OAuth(&[400], &["invalid_grant"]),
    );
    add(
        "token/refresh-replay-after-grace",
        Req::post("/token").form(refresh_form(&rr.refresh, &rr_client, &[])),
        Expect::OAuth(&[400], &["invalid_grant"]),
    );
    add(
        "token/refresh-scope-escalation",
        Req::post("/token").form(refresh_form(
            &keep.refresh,
            &keep_client,
            &[("scope", "mcp:write")],
        )),
        Expect::OAuth(&[400], &["invalid_scope"]),
    );
    add(
        "token/refresh-scope-escalation-admin",
        Req::post("/token").form(refresh_form(
            &keep.refresh,
            &keep_client,
            &[("scope", "mcp:read mcp:admin")],
        )),
        Expect::OAuth(&[400], &["invalid_scope"]),
    );
    add(
        "token/refresh-resource-other-server",
        Req::post("/token").form(refresh_form(
            &keep.refresh,
            &keep_client,
            &[("resource", "https://other.example/mcp")],
        )),
        Expect::OAuth(&[400], &["invalid_target"]),
    );
    add(
        "token/refresh-of-another-client",
        Req::post("/token").form(refresh_form(&keep.refresh, &work_client, &[])),
        Expect::OAuth(&[400], &["invalid_grant"]),
    );
    add(
        "token/refresh-token-crlf",
        Req::post("/token").form(refresh_form(
            &format!("{}\r\nX-Injected: yes", keep.refresh),
            &keep_client,
            &[],
        )),
        Expect::OAuth(&[400], &["invalid_grant"]),
    );
    add(
        "token/client-id-crlf",
        Req::post("/token").form(refresh_form(
            &keep.refresh,
            &format!("{keep_client}\r\nX-Injected: yes"),
            &[],
        )),
        Expect::OAuth(&[400, 401], &["invalid_client"]),
    );
    add(
        "token/non-utf8-grant-type",
        Req::post("/token").form(format!("grant_type=%ff%fe&client_id={keep_client}")),
        Expect::OAuth(&[400], &["invalid_request", "unsupported_grant_type"]),
    );
    let mut raw =
        format!("grant_type=refresh_token&client_id={keep_client}&refresh_token=").into_bytes();
    raw.extend_from_slice(b"\xff\xfe\xfd");
    add(
        "token/non-utf8-raw-bytes",
        Req::post("/token").form(raw),
        Expect::OAuth(&[400], &["invalid_request", "invalid_grant"]),
    );
    add(
        "token/basic-not-base64",
        Req::post("/token")
            .header("authorization", "Basic !!!not-base64!!!")
            .form("grant_type=client_credentials"),
        Expect::OAuth(&[401], &["invalid_client"]),
    );
    add(
        "token/basic-wrong-secret",
        Req::post("/token")
            .basic(&svc_id, "wrong")
            .form("grant_type=client_credentials"),
        Expect::OAuth(&[401], &["invalid_client"]),
    );
    add(
        "token/unknown-client",
        Req::post("/token").form(refresh_form(&keep.refresh, "nobody", &[])),
        Expect::OAuth(&[400, 401], &["invalid_client"]),
    );
    add(
        "token/client-credentials-for-public-client",
        Req::post("/token").form(format!(
            "grant_type=client_credentials&client_id={work_client}"
        )),
        Expect::OAuth(&[400], &["unauthorized_client"]),
    );
    add(
        "token/oversized-body",
        Req::post("/token").form(format!(
            "grant_type=refresh_token&client_id={keep_client}&refresh_token={}&pad={}",
            keep.refresh,
            "a".repeat(65 * 1024)
        )),
        Expect::TooLarge,
    );

    // ================= /revoke =================
    add("revoke/get", Req::get("/revoke"), Expect::MethodNotAllowed);
    add(
        "revoke/missing-token",
        Req::post("/revoke").form(format!("client_id={work_client}")),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "revoke/no-client",
        Req::post("/revoke").form(pairs(&[("token", &keep.refresh)])),
        Expect::OAuth(&[400, 401], &["invalid_client"]),
    );
    add(
        "revoke/refresh-token-of-another-client",
        Req::post("/revoke").form(pairs(&[
            ("token", &keep.refresh),
            ("client_id", &work_client),
        ])),
        Expect::OAuth(&[400], &["unauthorized_client"]),
    );
    add(
        "revoke/access-token-of-another-client",
        Req::post("/revoke").form(pairs(&[
            ("token", &keep.access),
            ("client_id", &work_client),
        ])),
        Expect::OAuth(&[400], &["unauthorized_client"]),
    );
    add(
        "revoke/json-body",
        Req::post("/revoke")
            .json(json!({"token": keep.refresh, "client_id": keep_client}).to_string()),
        Expect::OAuth(&[400], bad_req),
    );
    add(
        "revoke/duplicate-token",
        Req::post("/revoke").form(format!(
            "{}&token=other",
            pairs(&[("token", &keep.refresh), ("client_id", &keep_client)])
        )),
        Expect::OAuth(&[400], bad_req),
    );

    // ================= /introspect =================
    add(
        "introspect/get",
        Req::get("/introspect"),
        Expect::MethodNotAllowed,
    );
    add(
        "introspect/public-client",
        Req::post("/introspect").form(pairs(&[
            ("token", &keep.access),
            ("client_id", &keep_client),
        ])),
        Expect::OAuth(&[400, 401], &["invalid_client"]),
    );
    add(
        "introspect/no-client",
        Req::post("/introspect").form(pairs(&[("token", &keep.access)])),
        Expect::OAuth(&[400, 401], &["invalid_client"]),
    );
    add(
        "introspect/wrong-secret",
        Req::post("/introspect")
            .basic(&svc_id, "wrong")
            .form(pairs(&[("token", &keep.access)])),
        Expect::OAuth(&[401], &["invalid_client"]),
    );
    add(
        "introspect/missing-token",
        Req::post("/introspect")
            .basic(&svc_id, &svc_secret)
            .form(""),
        Expect::OAuth(&[400], bad_req),
    );

    // ================= /register =================
    let meta: &[&str] = &["invalid_client_metadata"];
    let reg = |v: Value| Req::post("/register").json(v.to_string());
    add(
        "register/get",
        Req::get("/register"),
        Expect::MethodNotAllowed,
    );
    add(
        "register/no-content-type",
        Req::post("/register").body(json!({"redirect_uris":[REDIRECT]}).to_string()),
        Expect::OAuth(&[400, 415], &["invalid_client_metadata", "invalid_request"]),
    );
    add(
        "register/invalid-json",
        Req::post("/register").json("{\"redirect_uris\": [\"http://127.0.0.1/cb\""),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/json-array",
        Req::post("/register").json("[]"),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/non-utf8-json",
        Req::post("/register").json(
            &b"{\"redirect_uris\":[\"http://127.0.0.1/cb\"],\"client_name\":\"\xff\xfe\"}"[..],
        ),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/redirect-uris-not-an-array",
        reg(json!({"redirect_uris": REDIRECT})),
        Expect::OAuth(&[400], &["invalid_client_metadata", "invalid_redirect_uri"]),
    );
    add(
        "register/redirect-uris-empty",
        reg(json!({"redirect_uris": []})),
        Expect::OAuth(&[400], &["invalid_client_metadata", "invalid_redirect_uri"]),
    );
    for (name, uri) in [
        ("suffix-host", "http://127.0.0.1.evil.com/callback"),
        (
            "localhost-suffix-host",
            "http://localhost.evil.com/callback",
        ),
        (
            "userinfo-evil-at-loopback",
            "https://evil.com@127.0.0.1/callback",
        ),
        ("userinfo-password", "https://user:pw@app.example.com/cb"),
        ("fragment", "https://app.example.com/cb#frag"),
        ("empty-fragment", "https://app.example.com/cb#"),
        ("http-non-loopback", "http://app.example.com/cb"),
        ("javascript", "javascript:alert(1)"),
        ("data", "data:text/html,<script>alert(1)</script>"),
        ("relative", "/callback"),
        ("crlf", "https://app.example.com/cb\r\nX-Injected: yes"),
        ("tab", "https://app.example.com/c\tb"),
        ("view-source", "view-source:https://app.example.com/cb"),
        ("chrome", "chrome://settings"),
        ("jar", "jar:https://app.example.com/a.jar!/cb"),
        (
            "filesystem",
            "filesystem:https://app.example.com/temporary/cb",
        ),
        ("mailto", "mailto:a@app.example.com"),
        ("file", "file:///etc/passwd"),
        ("oob", "urn:ietf:wg:oauth:2.0:oob"),
        ("dotless-private-scheme", "myapp:/callback"),
    ] {
        add(
            &format!("register/redirect-{name}"),
            reg(json!({"redirect_uris": [uri]})),
            Expect::OAuth(&[400], &["invalid_redirect_uri"]),
        );
    }
    add(
        "register/auth-method-unsupported",
        reg(json!({"redirect_uris":[REDIRECT],"token_endpoint_auth_method":"private_key_jwt"})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/grant-type-implicit",
        reg(json!({"redirect_uris":[REDIRECT],"grant_types":["implicit"]})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/client-credentials-for-public-client",
        reg(json!({"redirect_uris":[REDIRECT],"grant_types":["client_credentials"]})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/client-credentials-anonymous",
        reg(json!({"token_endpoint_auth_method":"client_secret_basic",
                   "grant_types":["client_credentials"]})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/unknown-initial-access-token",
        reg(json!({"redirect_uris":[REDIRECT]})).header("authorization", "Bearer not-a-token"),
        Expect::OAuth(&[401], &["invalid_token"]),
    );
    add(
        "register/response-type-token",
        reg(json!({"redirect_uris":[REDIRECT],"response_types":["token"]})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/scope-unknown",
        reg(json!({"redirect_uris":[REDIRECT],"scope":"mcp:read mcp:root"})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/client-name-not-a-string",
        reg(json!({"redirect_uris":[REDIRECT],"client_name":{"x":1}})),
        Expect::OAuth(&[400], meta),
    );
    add(
        "register/oversized-body",
        reg(json!({"redirect_uris":[REDIRECT],"client_name":"a".repeat(65 * 1024)})),
        Expect::TooLarge,
    );
    add(
        "register/client-name-crlf",
        reg(json!({"redirect_uris":[REDIRECT],"client_name":"ok\r\nX-Injected: yes"})),
        Expect::Check(Box::new(|r| match r.status {
            201 => {
                let v = r.json();
                match v["client_name"].as_str() {
                    Some(n) if n.contains(['\r', '\n']) => {
                        Err(format!("client_name kept CR/LF: {n:?}"))
                    }
                    _ => Ok(()),
                }
            }
            _ => check_oauth(r, &[400], &["invalid_client_metadata"]),
        })),
    );

    // ================= /mcp: the bearer token =================
    let with_token = |t: &str| Req::mcp(Some(t), init);
    add(
        "mcp/no-token",
        Req::mcp(None, init),
        Expect::Bearer(401, None),
    );
    add(
        "mcp/alg-none",
        with_token(&alg_none("none")),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/alg-none-upper-case",
        with_token(&alg_none("NONE")),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/alg-none-with-real-signature",
        with_token(&format!(
            "{}.{}.{}",
            b64json(&json!({"alg":"none","kid":kid})),
            good_p,
            good.rsplit('.').next().unwrap()
        )),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/hs256-keyed-with-public-jwk",
        with_token(&hs256(&jwk_json)),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/hs256-keyed-with-jwks-document",
        with_token(&hs256(&jwks_json)),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/unknown-kid",
        with_token(&es256_kid(Some("no-such-key"))),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/kid-path-traversal",
        with_token(&es256_kid(Some("../../../../etc/passwd"))),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/no-kid",
        with_token(&es256_kid(None)),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/foreign-key-with-our-kid",
        with_token(&foreign_with_our_kid),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/rs256-with-our-kid",
        with_token(&rs256_our_kid),
        Expect::Bearer(401, Some("invalid_token")),
    );
    add(
        "mcp/embedded-jwk-header",
        with_token(&embedded_jwk),
        Expect::Bearer(401, Some("invalid_token")),
    );
    for (name, change) in [
        ("wrong-iss", vec![("iss", json!("http://evil.example"))]),
        ("iss-missing", vec![("iss", Value::Null)]),
        (
            "wrong-aud",
            vec![("aud", json!("https://other.example/mcp"))],
        ),
        (
            "aud-array-without-us",
            vec![("aud", json!(["https://other.example/mcp"]))],
        ),
        ("aud-missing", vec![("aud", Value::Null)]),
        ("expired", vec![("exp", json!(now - 100))]),
        ("not-yet-valid", vec![("nbf", json!(now + 100))]),
        ("exp-missing", vec![("exp", Value::Null)]),
        ("exp-a-string", vec![("exp", json!("never"))]),
        ("sub-missing", vec![("sub", Value::Null)]),
    ] {
        add(
            &format!("mcp/{name}"),
            with_token(&gw.mint(claims(&change))),
            Expect::Bearer(401, Some("invalid_token")),
        );
    }
    for (name, token) in [
        ("two-segments", format!("{good_h}.{good_p}")),
        ("four-segments", format!("{good}.{good_p}")),
        ("signature-stripped", format!("{good_h}.{good_p}.")),
        ("bad-base64", "e$$.e%%.e^^".to_string()),
        ("empty-segments", "..".to_string()),
        (
            "header-not-an-object",
            format!(
                "{}.{good_p}.{}",
                b64json(&json!("ES256")),
                good.rsplit('.').next().unwrap()
            ),
        ),
        (
            "header-not-json",
            format!("{}.{good_p}.AAAA", B64.encode("{not json")),
        ),
        ("payload-an-array", signed_payload(json!([1, 2, 3]))),
        ("payload-a-string", signed_payload(json!("claims"))),
        (
            "payload-not-json",
            format!("{good_h}.{}.AAAA", B64.encode("not json")),
        ),
    ] {
        add(
            &format!("mcp/malformed-{name}"),
            with_token(&token),
            Expect::Bearer(401, Some("invalid_token")),
        );
    }
    add(
        "mcp/token-in-query",
        Req::mcp(None, init).path_with_query(&format!("access_token={}", work.access)),
        Expect::Bearer(400, Some("invalid_request")),
    );
    add(
        "mcp/token-in-query-and-header",
        Req::mcp(Some(&work.access), init)
            .path_with_query(&format!("access_token={}", work.access)),
        Expect::Bearer(400, Some("invalid_request")),
    );
    add(
        "mcp/token-in-form-body",
        Req::post("/mcp")
            .header("accept", "application/json, text/event-stream")
            .form(format!("access_token={}", work.access)),
        Expect::Bearer(401, None),
    );
    add(
        "mcp/two-authorization-headers",
        Req::mcp(Some(&work.access), init).bearer(&work.access),
        Expect::Bearer(400, Some("invalid_request")),
    );
    add(
        "mcp/bearer-with-two-tokens",
        Req::mcp(None, init).header(
            "authorization",
            format!("Bearer {} {}", work.access, work.access),
        ),
        Expect::Bearer(400, Some("invalid_request")),
    );
    add(
        "mcp/non-utf8-authorization",
        Req::mcp(None, init).header("authorization", &b"Bearer \xff\xfe"[..]),
        Expect::Bearer(400, Some("invalid_request")),
    );
    add(
        "mcp/insufficient-scope",
        Req::mcp(
            Some(&keep.access),
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"corpus-pwn"}}}"#,
        )
        .header("mcp-session-id", keep_sid.clone()),
        Expect::Bearer(403, Some("insufficient_scope")),
    );
    add(
        "mcp/insufficient-scope-in-batch",
        Req::mcp(
            Some(&keep.access),
            r#"[{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"corpus-pwn"}}}]"#,
        )
        .header("mcp-session-id", keep_sid.clone()),
        Expect::Bearer(403, Some("insufficient_scope")),
    );
    // Duplicate keys: the policy and the MCP server must not read different values.
    let not_executed = || -> Expect {
        Expect::Check(Box::new(|r| {
            if r.status == 403 {
                return check_bearer(r, 403, Some("insufficient_scope"));
            }
            let v = jsonrpc_body(&r.text);
            if (400..500).contains(&r.status) || v.get("error").is_some() {
                return Ok(());
            }
            Err(format!(
                "a read-only token's duplicate-key request was executed: {} {v}",
                r.status
            ))
        }))
    };
    add(
        "mcp/duplicate-method-key",
        Req::mcp(
            Some(&keep.access),
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"corpus-pwn"}},"method":"ping"}"#,
        )
        .header("mcp-session-id", keep_sid.clone()),
        not_executed(),
    );
    add(
        "mcp/duplicate-tool-name-key",
        Req::mcp(
            Some(&keep.access),
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"corpus-pwn"},"name":"echo"}}"#,
        )
        .header("mcp-session-id", keep_sid.clone()),
        not_executed(),
    );

    // ================= /mcp: the JSON-RPC body =================
    let body = |b: &[u8]| Req::mcp(Some(&work.access), b.to_vec());
    let bad_request: &[u16] = &[400];
    add(
        "mcp/invalid-json",
        body(b"{not json"),
        Expect::JsonRpc(bad_request, &[-32700]),
    );
    add(
        "mcp/empty-body",
        body(b""),
        Expect::JsonRpc(bad_request, &[-32700]),
    );
    add(
        "mcp/non-utf8-json",
        body(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}"),
        Expect::JsonRpc(bad_request, &[-32700]),
    );
    add(
        "mcp/json-number",
        body(b"42"),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/json-string",
        body(b"\"ping\""),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/json-null",
        body(b"null"),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/method-a-number",
        body(br#"{"jsonrpc":"2.0","id":1,"method":42}"#),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/method-missing",
        body(br#"{"jsonrpc":"2.0","id":1,"params":{}}"#),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/params-a-string",
        body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":"all"}"#),
        Expect::JsonRpc(bad_request, &[-32600, -32602]),
    );
    add(
        "mcp/id-an-object",
        body(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/jsonrpc-1.0",
        body(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/empty-batch",
        body(b"[]"),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/batch-of-a-number",
        body(b"[1]"),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    let mut huge = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024 + 1));
    huge.extend_from_slice(br#""}}}"#);
    add(
        "mcp/oversized-body",
        body(&huge),
        Expect::JsonRpc(&[413], &[-32600]),
    );
    add(
        "mcp/mcp-method-header-mismatch",
        body(ping.as_bytes()).header("mcp-method", "tools/call"),
        Expect::JsonRpc(bad_request, &[-32600]),
    );
    add(
        "mcp/no-content-type",
        Req::post("/mcp")
            .bearer(&work.access)
            .header("accept", "application/json, text/event-stream")
            .body(init),
        Expect::Status(&[400, 415]),
    );
    add(
        "mcp/put",
        Req::new(Method::PUT, "/mcp")
            .bearer(&work.access)
            .json(ping),
        Expect::MethodNotAllowed,
    );

    // ================= discovery =================
    add(
        "well-known/post-authorization-server-metadata",
        Req::post("/.well-known/oauth-authorization-server").json("{}"),
        Expect::MethodNotAllowed,
    );
    add(
        "well-known/post-protected-resource-metadata",
        Req::post("/.well-known/oauth-protected-resource/mcp").json("{}"),
        Expect::MethodNotAllowed,
    );
    add(
        "well-known/delete-jwks",
        Req::new(Method::DELETE, "/.well-known/jwks.json"),
        Expect::MethodNotAllowed,
    );
    add(
        "well-known/unknown-document",
        Req::get("/.well-known/nothing-here"),
        Expect::Status(&[404]),
    );
    add(
        "well-known/protected-resource-of-another-path",
        Req::get("/.well-known/oauth-protected-resource/other"),
        Expect::Status(&[404]),
    );

    // ---- Run the table. ----
    let total = cases.len();
    // CORPUS_VERBOSE=1 prints every answer, not only the wrong ones.
    let verbose = std::env::var_os("CORPUS_VERBOSE").is_some();
    let mut failures: Vec<String> = Vec::new();
    for case in &cases {
        let outcome = match send(&gw, &case.req).await {
            Ok(r) => {
                if verbose {
                    eprintln!("[{}] {}", case.name, r.summary());
                }
                check(&ctx, &case.expect, &r).map_err(|why| (why, r.summary()))
            }
            Err(e) => Err((e, "no response".into())),
        };
        if let Err((why, got)) = outcome {
            failures.push(format!(
                "[{}] {why}\n    request: {}\n    got: {got}",
                case.name,
                case.req.summary()
            ));
        }
    }

    // ---- Requests no HTTP client library would send: raw bytes on the wire. ----
    let addr = gw.base.trim_start_matches("http://").to_string();
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "raw/non-utf8-bytes-in-authorize-target",
            b"GET /authorize?client_id=\xff\xfe&state=\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "raw/content-length-and-chunked-on-token",
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "raw/two-content-lengths-on-register",
            b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}}".to_vec(),
        ),
        (
            "raw/nul-in-authorization-on-mcp",
            b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\x00b\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
        ),
    ];
    let raw_total = raw_cases.len();
    for (name, bytes) in raw_cases {
        let outcome = match raw_send(&addr, &bytes).await {
            Ok(r) => check(&ctx, &Expect::Status(&[400]), &r).map_err(|why| (why, r.summary())),
            Err(e) => Err((e, "no response".into())),
        };
        if let Err((why, got)) = outcome {
            failures.push(format!(
                "[{name}] {why}\n    request: {}\n    got: {got}",
                cut(&String::from_utf8_lossy(&bytes), 300)
            ));
        }
    }
    let total = total + raw_total;

    // ---- Nothing stored was lost or changed. ----
    let mut after = |what: &str, ok: Result<(), String>| {
        if let Err(e) = ok {
            failures.push(format!("[after the corpus] {what}: {e}"));
        }
    };
    after(
        "the earlier access token still calls a tool",
        tool_text(&gw, &keep.access, "echo", json!({"message": "still here"}))
            .await
            .and_then(|t| match t.contains("still here") {
                true => Ok(()),
                false => Err(t),
            }),
    );
    after(
        "no note was stored by a read-only token",
        tool_text(&gw, &keep.access, "list_notes", json!({}))
            .await
            .and_then(|t| match t.contains("corpus-pwn") {
                true => Err(format!("notes: {t}")),
                false => Ok(()),
            }),
    );
    let (s, refreshed) = gw.refresh(&keep_client, &keep.refresh).await;
    after(
        "the earlier refresh token still refreshes, with its scope",
        match (s, refreshed["scope"].as_str()) {
            (200, Some("mcp:read")) => Ok(()),
            _ => Err(format!("{s} {refreshed}")),
        },
    );
    if let Some(access) = refreshed["access_token"].as_str() {
        after(
            "the refreshed access token calls a tool",
            tool_text(&gw, access, "echo", json!({"message": "refreshed"}))
                .await
                .map(|_| ()),
        );
    }
    let (s, v) = gw
        .redeem(&work_client, &pending_code, &pending_pkce.verifier)
        .await;
    after(
        "the pending code survived the malformed verifiers",
        match s {
            200 => Ok(()),
            _ => Err(format!("{s} {v}")),
        },
    );
    let (s, v) = gw.refresh(&work_client, &work.refresh).await;
    after(
        "the worker's refresh token still refreshes",
        match s {
            200 => Ok(()),
            _ => Err(format!("{s} {v}")),
        },
    );
    gw.stop().await;

    assert!(total >= 60, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} corpus cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
