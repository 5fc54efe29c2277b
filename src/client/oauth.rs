//! OAuth 2.1 as a client: dynamic registration (RFC 7591), the authorization code grant with
//! PKCE S256 (RFC 7636) and `resource` (RFC 8707) through a loopback redirect (RFC 8252
//! §7.3), `state` and RFC 9207 `iss` checks, the refresh and client credentials grants, and
//! client authentication (`client_secret_basic`, `client_secret_post`, `private_key_jwt`
//! of RFC 7523 §2.2).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, LOCATION};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use url::Url;

use super::ClientError;
use super::cache::{AuthMethod, ClientSource, StoredClient, StoredTokens};
use super::discovery::AsMetadata;
use super::http::{Body, Http, strip_query};

const CALLBACK_PATH: &str = "/callback";

/// What a token endpoint answered (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

/// A token endpoint's error (RFC 6749 §5.2).
#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    error_description: Option<String>,
}

/// The loopback listener that receives the authorization response.
pub struct Loopback {
    pub redirect_uri: String,
    rx: oneshot::Receiver<HashMap<String, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Loopback {
    /// Listen on 127.0.0.1, on `preferred` when it is free, else on a random port.
    pub async fn bind(preferred: Option<u16>) -> Result<Self, ClientError> {
        let listener = match preferred {
            Some(p) => match tokio::net::TcpListener::bind(("127.0.0.1", p)).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
            },
            None => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
        };
        let port = listener.local_addr()?.port();
        let (tx, rx) = oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(tx)));
        let router = axum::Router::new().route(
            CALLBACK_PATH,
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
                    let slot = slot.clone();
                    async move {
                        let sender = slot.lock().ok().and_then(|mut s| s.take());
                        let msg = if q.contains_key("error") {
                            "Authorization was not granted. You can close this window."
                        } else {
                            "Authorization complete. You can close this window."
                        };
                        if let Some(tx) = sender {
                            let _ = tx.send(q);
                        }
                        axum::response::Html(format!(
                            "<!doctype html><title>mcp-oauth-gateway client</title><p>{msg}</p>"
                        ))
                    }
                },
            ),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
            rx,
            task,
        })
    }

    fn is_ours(&self, url: &Url) -> bool {
        Url::parse(&self.redirect_uri)
            .is_ok_and(|ours| ours.origin() == url.origin() && ours.path() == url.path())
    }
}

/// A PKCE pair (RFC 7636 §4.1-4.2): 64 base64url characters of verifier, S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Result<Self, ClientError> {
        let verifier = crate::secret::random_token(48).ok_or(ClientError::Random)?;
        let challenge = crate::secret::sha256_b64(&verifier);
        Ok(Self {
            verifier,
            challenge,
        })
    }
}

/// Register a public client for `redirect_uri` (RFC 7591 §3.1). The server may answer with a
/// secret and another authentication method; what it says is what the client then uses.
pub async fn register(
    http: &Http,
    endpoint: &str,
    redirect_uri: &str,
) -> Result<StoredClient, ClientError> {
    let url = parse_endpoint("registration", endpoint)?;
    let body = json!({
        "client_name": "mcp-oauth-gateway client",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    });
    let reply = http
        .fetch(Method::POST, &url, &[], Body::Json(body))
        .await?;
    if !reply.status.is_success() {
        return Err(oauth_error("registration", reply.status, &reply.body));
    }
    let v = reply.json().unwrap_or_default();
    let client_id = v["client_id"]
        .as_str()
        .ok_or_else(|| ClientError::Protocol("the registration response has no client_id".into()))?
        .to_string();
    let client_secret = v["client_secret"].as_str().map(str::to_string);
    let auth_method = match v["token_endpoint_auth_method"].as_str() {
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("none") => AuthMethod::None,
        // RFC 7591 §2: the default is client_secret_basic.
        _ if client_secret.is_some() => AuthMethod::ClientSecretBasic,
        _ => AuthMethod::None,
    };
    Ok(StoredClient {
        client_id,
        client_secret,
        auth_method,
        source: ClientSource::Registered,
        redirect_uri: Some(redirect_uri.to_string()),
    })
}

/// How the user's part of the authorization happens.
#[derive(Debug, Clone, Copy)]
pub struct Interaction {
    /// GET the authorization URL ourselves and follow its redirects (auto-approving servers).
    pub headless: bool,
    /// Launch `xdg-open` on the URL.
    pub open: bool,
    pub timeout: Duration,
}

/// Everything one authorization code request needs.
pub struct CodeRequest<'a> {
    pub metadata: &'a AsMetadata,
    pub client: &'a StoredClient,
    pub resource: &'a str,
    pub scope: Option<&'a str>,
    /// The issuer the metadata came from, for the RFC 9207 check.
    pub issuer: &'a str,
}

/// Run the authorization code grant with PKCE through `loopback`.
pub async fn authorization_code(
    http: &Http,
    req: CodeRequest<'_>,
    loopback: Loopback,
    how: Interaction,
    signing_key: Option<&ClientKey>,
    now: u64,
) -> Result<StoredTokens, ClientError> {
    let meta = req.metadata;
    // The MCP specification requires S256 to be advertised; refuse rather than downgrade.
    if !AsMetadata::supports(&meta.code_challenge_methods_supported, "S256") {
        return Err(ClientError::Protocol(
            "the authorization server does not advertise PKCE S256 (code_challenge_methods_supported); refusing to authorize".into(),
        ));
    }
    let endpoint = meta.authorization_endpoint.as_deref().ok_or_else(|| {
        ClientError::Protocol("the authorization server has no authorization_endpoint".into())
    })?;
    let mut url = parse_endpoint("authorization", endpoint)?;
    let pkce = Pkce::new()?;
    let state = crate::secret::random_token(24).ok_or(ClientError::Random)?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &req.client.client_id)
            .append_pair("redirect_uri", &loopback.redirect_uri)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &state)
            .append_pair("resource", req.resource);
        if let Some(scope) = req.scope.filter(|s| !s.is_empty()) {
            q.append_pair("scope", scope);
        }
    }
    let redirect_uri = loopback.redirect_uri.clone();
    let params = if how.headless {
        follow_headless(http, url, &loopback).await?;
        let mut rx = loopback;
        rx_now(&mut rx.rx)?
    } else {
        eprintln!("Open this URL in a browser to authorize:\n\n  {url}\n");
        if how.open
            && let Err(e) = std::process::Command::new("xdg-open")
                .arg(url.as_str())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        {
            eprintln!("(could not launch xdg-open: {e})");
        }
        let mut lb = loopback;
        match tokio::time::timeout(how.timeout, &mut lb.rx).await {
            Ok(Ok(params)) => params,
            _ => {
                return Err(ClientError::Protocol(format!(
                    "no authorization response arrived within {} s",
                    how.timeout.as_secs()
                )));
            }
        }
    };
    http.trace(&format!(
        "authorization response received on {redirect_uri} ({} parameters)",
        params.len()
    ));
    let code = check_callback(&params, &state, req.issuer, meta)?;
    let mut form = vec![
        ("grant_type".to_string(), "authorization_code".to_string()),
        ("code".to_string(), code),
        ("redirect_uri".to_string(), redirect_uri),
        ("code_verifier".to_string(), pkce.verifier),
        ("resource".to_string(), req.resource.to_string()),
    ];
    // The scope of the request, not of the response (which may say less).
    let requested = req.scope.map(str::to_string);
    let tokens = token_request(http, meta, req.client, signing_key, &mut form, now).await?;
    Ok(finish(tokens, requested, req.resource, now))
}

/// Check the authorization response (RFC 6749 §4.1.2, RFC 9207 §2.4); the code.
fn check_callback(
    params: &HashMap<String, String>,
    state: &str,
    issuer: &str,
    meta: &AsMetadata,
) -> Result<String, ClientError> {
    if !params
        .get("state")
        .is_some_and(|s| crate::secret::ct_eq(s, state))
    {
        return Err(ClientError::Protocol(
            "the authorization response's state does not match the request; ignoring it".into(),
        ));
    }
    match params.get("iss") {
        // RFC 9207 §2.4: simple string comparison, no normalization.
        Some(iss) if iss != issuer => {
            return Err(ClientError::Protocol(format!(
                "the authorization response came from issuer {iss}, expected {issuer} (RFC 9207); ignoring it"
            )));
        }
        None if meta.authorization_response_iss_parameter_supported => {
            return Err(ClientError::Protocol(
                "the authorization response has no iss although the server advertises it (RFC 9207)"
                    .into(),
            ));
        }
        _ => {}
    }
    if let Some(error) = params.get("error") {
        let desc = params
            .get("error_description")
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        return Err(ClientError::OAuth(format!(
            "authorization refused: {error}{desc}"
        )));
    }
    params
        .get("code")
        .filter(|c| !c.is_empty())
        .cloned()
        .ok_or_else(|| ClientError::Protocol("the authorization response has no code".into()))
}

fn rx_now(
    rx: &mut oneshot::Receiver<HashMap<String, String>>,
) -> Result<HashMap<String, String>, ClientError> {
    rx.try_recv().map_err(|_| {
        ClientError::Protocol("the authorization server never redirected back to the client".into())
    })
}

/// Headless: GET the authorization URL and follow redirects by hand until one lands on our
/// loopback listener (which is then requested, so it sees exactly what a browser would
/// deliver). A page instead of a redirect means a person must act: that needs a browser.
async fn follow_headless(http: &Http, start: Url, loopback: &Loopback) -> Result<(), ClientError> {
    let mut url = start;
    for _ in 0..10 {
        let reply = http.fetch(Method::GET, &url, &[], Body::Empty).await?;
        let is_ours = loopback.is_ours(&url);
        if is_ours {
            return Ok(());
        }
        if !reply.status.is_redirection() {
            return Err(ClientError::Protocol(format!(
                "{} answered HTTP {} instead of redirecting back: the authorization needs a person (run without --headless)",
                strip_query(&url),
                reply.status
            )));
        }
        let location = reply
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol("a redirect without a Location".into()))?;
        url = url
            .join(location)
            .map_err(|_| ClientError::Protocol("a redirect to an invalid URL".into()))?;
    }
    Err(ClientError::Protocol(
        "too many redirects during authorization".into(),
    ))
}

/// The client credentials grant (RFC 6749 §4.4).
pub async fn client_credentials(
    http: &Http,
    meta: &AsMetadata,
    client: &StoredClient,
    signing_key: Option<&ClientKey>,
    resource: &str,
    scope: Option<&str>,
    now: u64,
) -> Result<StoredTokens, ClientError> {
    let mut form = vec![
        ("grant_type".to_string(), "client_credentials".to_string()),
        ("resource".to_string(), resource.to_string()),
    ];
    if let Some(s) = scope.filter(|s| !s.is_empty()) {
        form.push(("scope".into(), s.into()));
    }
    let tokens = token_request(http, meta, client, signing_key, &mut form, now).await?;
    Ok(finish(tokens, scope.map(str::to_string), resource, now))
}

/// The refresh grant (RFC 6749 §6); a rotated refresh token replaces the old one, a missing
/// one keeps it.
pub async fn refresh(
    http: &Http,
    meta: &AsMetadata,
    client: &StoredClient,
    signing_key: Option<&ClientKey>,
    old: &StoredTokens,
    now: u64,
) -> Result<StoredTokens, ClientError> {
    let Some(refresh_token) = old.refresh_token.clone() else {
        return Err(ClientError::OAuth("no refresh token".into()));
    };
    let mut form = vec![
        ("grant_type".to_string(), "refresh_token".to_string()),
        ("refresh_token".to_string(), refresh_token.clone()),
        ("resource".to_string(), old.resource.clone()),
    ];
    let tokens = token_request(http, meta, client, signing_key, &mut form, now).await?;
    let mut new = finish(tokens, old.scope.clone(), &old.resource, now);
    if new.refresh_token.is_none() {
        new.refresh_token = Some(refresh_token);
    }
    Ok(new)
}

fn finish(t: TokenResponse, requested: Option<String>, resource: &str, now: u64) -> StoredTokens {
    StoredTokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        expires_at: t.expires_in.map(|s| now.saturating_add(s)),
        scope: t.scope.or(requested),
        resource: resource.to_string(),
        obtained_at: now,
    }
}

/// POST to the token endpoint with the client's authentication.
async fn token_request(
    http: &Http,
    meta: &AsMetadata,
    client: &StoredClient,
    signing_key: Option<&ClientKey>,
    form: &mut Vec<(String, String)>,
    now: u64,
) -> Result<TokenResponse, ClientError> {
    let url = parse_endpoint("token", &meta.token_endpoint)?;
    let mut headers: Vec<(&str, String)> = vec![("accept", "application/json".into())];
    authenticate(meta, client, signing_key, form, &mut headers, now)?;
    let reply = http
        .fetch(
            Method::POST,
            &url,
            &headers,
            Body::Form(std::mem::take(form)),
        )
        .await?;
    if !reply.status.is_success() {
        return Err(oauth_error("token", reply.status, &reply.body));
    }
    let tokens: TokenResponse = serde_json::from_slice(&reply.body).map_err(|_| {
        ClientError::Protocol("the token endpoint's answer has no access_token".into())
    })?;
    if let Some(tt) = &tokens.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(ClientError::Protocol(format!(
            "the token endpoint issued a {tt} token; only Bearer is supported"
        )));
    }
    Ok(tokens)
}

/// Add the client's authentication to a token or revocation request (RFC 6749 §2.3,
/// RFC 7523 §2.2).
fn authenticate(
    meta: &AsMetadata,
    client: &StoredClient,
    signing_key: Option<&ClientKey>,
    form: &mut Vec<(String, String)>,
    headers: &mut Vec<(&str, String)>,
    now: u64,
) -> Result<(), ClientError> {
    match client.auth_method {
        AuthMethod::None => form.push(("client_id".into(), client.client_id.clone())),
        AuthMethod::ClientSecretPost => {
            form.push(("client_id".into(), client.client_id.clone()));
            form.push((
                "client_secret".into(),
                client.client_secret.clone().unwrap_or_default(),
            ));
        }
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let secret = client.client_secret.as_deref().unwrap_or_default();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(&client.client_id),
                enc(secret)
            ));
            headers.push((AUTHORIZATION.as_str(), format!("Basic {basic}")));
        }
        AuthMethod::PrivateKeyJwt => {
            let key = signing_key.ok_or_else(|| {
                ClientError::Usage("private_key_jwt needs --client-assertion-key".into())
            })?;
            let assertion = key.assertion(&client.client_id, &meta.issuer, now)?;
            form.push(("client_id".into(), client.client_id.clone()));
            form.push((
                "client_assertion_type".into(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion".into(), assertion));
        }
    }
    Ok(())
}

/// Revoke a token at the revocation endpoint (RFC 7009 §2.1), authenticated as at the token
/// endpoint; `hint` is `refresh_token` or `access_token`.
pub async fn revoke(
    http: &Http,
    meta: &AsMetadata,
    client: &StoredClient,
    signing_key: Option<&ClientKey>,
    token: &str,
    hint: &str,
    now: u64,
) -> Result<(), ClientError> {
    let endpoint = meta
        .revocation_endpoint
        .as_deref()
        .ok_or_else(|| ClientError::Protocol("no revocation endpoint".into()))?;
    let url = parse_endpoint("revocation", endpoint)?;
    let mut form = vec![
        ("token".to_string(), token.to_string()),
        ("token_type_hint".to_string(), hint.to_string()),
    ];
    let mut headers: Vec<(&str, String)> = vec![("accept", "application/json".into())];
    authenticate(meta, client, signing_key, &mut form, &mut headers, now)?;
    let reply = http
        .fetch(Method::POST, &url, &headers, Body::Form(form))
        .await?;
    if !reply.status.is_success() {
        return Err(oauth_error("revocation", reply.status, &reply.body));
    }
    Ok(())
}

fn parse_endpoint(what: &str, endpoint: &str) -> Result<Url, ClientError> {
    Url::parse(endpoint).map_err(|_| {
        ClientError::Protocol(format!("the {what} endpoint {endpoint:?} is not a URL"))
    })
}

/// An OAuth error answer as one line (error code and description only: never the body of
/// an unknown answer, which could echo what was sent).
fn oauth_error(endpoint: &str, status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<OAuthErrorBody>(body) {
        Ok(e) => ClientError::Refused {
            endpoint: endpoint.to_string(),
            detail: format!(
                "{}{} (HTTP {status})",
                e.error,
                e.error_description
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            code: e.error,
        },
        Err(_) => ClientError::OAuth(format!("{endpoint} endpoint: HTTP {status}")),
    }
}

/// A private key for `private_key_jwt` (RFC 7523 §2.2), from a PEM file.
pub struct ClientKey {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
}

impl ClientKey {
    /// Read a PKCS#8 PEM: an EC P-256 key signs ES256, an RSA key RS256.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ClientError> {
        if let Ok(key) = jsonwebtoken::EncodingKey::from_ec_pem(pem) {
            return Ok(Self {
                key,
                alg: jsonwebtoken::Algorithm::ES256,
            });
        }
        jsonwebtoken::EncodingKey::from_rsa_pem(pem)
            .map(|key| Self {
                key,
                alg: jsonwebtoken::Algorithm::RS256,
            })
            .map_err(|_| {
                ClientError::Usage(
                    "the client assertion key is not an EC or RSA private key in PEM".into(),
                )
            })
    }

    /// A client assertion: `iss` = `sub` = the client, `aud` = the issuer, five minutes.
    fn assertion(&self, client_id: &str, issuer: &str, now: u64) -> Result<String, ClientError> {
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": issuer,
            "iat": now,
            "exp": now + 300,
            "jti": crate::secret::random_token(16).ok_or(ClientError::Random)?,
        });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.alg), &claims, &self.key)
            .map_err(|e| ClientError::Usage(format!("signing the client assertion: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn c5_state_must_match() {
        let meta = AsMetadata::default();
        let err = check_callback(
            &params(&[("code", "c"), ("state", "x")]),
            "y",
            "https://a",
            &meta,
        );
        assert!(err.is_err());
        let ok = check_callback(
            &params(&[("code", "c"), ("state", "y")]),
            "y",
            "https://a",
            &meta,
        );
        assert_eq!(ok.unwrap(), "c");
    }

    #[test]
    fn c6_iss_is_checked_and_required_when_advertised() {
        let mut meta = AsMetadata::default();
        let wrong = params(&[("code", "c"), ("state", "s"), ("iss", "https://evil")]);
        assert!(check_callback(&wrong, "s", "https://a", &meta).is_err());
        let slash = params(&[("code", "c"), ("state", "s"), ("iss", "https://a/")]);
        assert!(check_callback(&slash, "s", "https://a", &meta).is_err());
        let right = params(&[("code", "c"), ("state", "s"), ("iss", "https://a")]);
        assert!(check_callback(&right, "s", "https://a", &meta).is_ok());
        meta.authorization_response_iss_parameter_supported = true;
        let missing = params(&[("code", "c"), ("state", "s")]);
        assert!(check_callback(&missing, "s", "https://a", &meta).is_err());
    }

    #[test]
    fn errors_in_the_callback_are_reported() {
        let meta = AsMetadata::default();
        let p = params(&[("error", "access_denied"), ("state", "s")]);
        let e = check_callback(&p, "s", "https://a", &meta).unwrap_err();
        assert!(e.to_string().contains("access_denied"), "{e}");
    }

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        let p = Pkce::new().unwrap();
        assert_eq!(p.verifier.len(), 64);
        assert!(crate::authz::pkce::verify_s256(&p.verifier, &p.challenge));
    }
}
