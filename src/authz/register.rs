//! RFC 7591 dynamic client registration for public clients (b6). Cheap and rate-limited
//! per source address: some clients register on every connect.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::OAuthError;
use super::params::split_scopes;
use super::uris::validate_redirect_uri;
use crate::admin::events::{RequestMeta, audit};
use crate::secret::{random_token, sha256_b64};
use crate::state::AppState;
use crate::store::Client;

/// The registration request: the metadata we act on. Other fields are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct RegistrationRequest {
    /// Required, at least one.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Shown on the consent page.
    pub client_name: Option<String>,
    /// Only `none` (public clients) for now.
    pub token_endpoint_auth_method: Option<String>,
    /// Subset of authorization_code and refresh_token.
    pub grant_types: Option<Vec<String>>,
    /// Only `code`.
    pub response_types: Option<Vec<String>>,
    /// Space-separated scopes the client will ask for.
    pub scope: Option<String>,
    /// `native` or `web`; required of 2026-07-28 clients, informative here.
    pub application_type: Option<String>,
}

/// The registration response (RFC 7591 §3.2.1).
#[derive(Debug, Serialize)]
pub struct RegistrationResponse {
    client_id: String,
    client_id_issued_at: u64,
    /// Shown once; only its hash is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    response_types: Vec<&'static str>,
    token_endpoint_auth_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_type: Option<String>,
}

/// The address a request came from: our own proxy on loopback appends the client's address
/// to `X-Forwarded-For`, so trust its last entry only from a loopback peer.
pub fn source_ip(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if peer.ip().is_loopback()
        && let Some(last) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return last;
    }
    peer.ip()
}

/// Check a registration and turn it into a client record.
pub fn register_client(
    req: RegistrationRequest,
    supported_scopes: &[String],
    client_id: String,
    now: u64,
) -> Result<Client, OAuthError> {
    let method = req.token_endpoint_auth_method.as_deref().unwrap_or("none");
    if !matches!(
        method,
        "none" | "client_secret_basic" | "client_secret_post"
    ) {
        return Err(OAuthError::InvalidClientMetadata(format!(
            "token_endpoint_auth_method `{method}` is not supported"
        )));
    }
    let confidential = method != "none";
    let grant_types = req
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if let Some(g) = grant_types.iter().find(|g| match g.as_str() {
        "authorization_code" | "refresh_token" => false,
        "client_credentials" => !confidential,
        _ => true,
    }) {
        return Err(OAuthError::InvalidClientMetadata(format!(
            "grant type `{g}` is not supported for this client (client_credentials needs a confidential client)"
        )));
    }
    if grant_types.iter().any(|g| g == "authorization_code") && req.redirect_uris.is_empty() {
        return Err(OAuthError::InvalidRedirectUri(
            "at least one redirect URI is required".into(),
        ));
    }
    for uri in &req.redirect_uris {
        validate_redirect_uri(uri).map_err(OAuthError::InvalidRedirectUri)?;
    }
    if let Some(types) = &req.response_types
        && types.iter().any(|t| t != "code")
    {
        return Err(OAuthError::InvalidClientMetadata(
            "only the `code` response type is supported".into(),
        ));
    }
    if let Some(scope) = &req.scope
        && let Some(bad) = split_scopes(scope)
            .into_iter()
            .find(|s| !supported_scopes.contains(s))
    {
        return Err(OAuthError::InvalidClientMetadata(format!(
            "scope `{bad}` is not offered"
        )));
    }
    let client_name = req
        .client_name
        .map(|n| n.chars().filter(|c| !c.is_control()).take(200).collect());
    Ok(Client {
        client_id,
        client_name,
        redirect_uris: req.redirect_uris,
        grant_types,
        token_endpoint_auth_method: method.to_string(),
        scope: req.scope,
        created_at: now,
        last_used_at: now,
        ..Client::default()
    })
}

/// `POST /register`.
pub async fn register_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let now = state.clock.now();
    state
        .register_limiter
        .check(source_ip(peer, &headers), now)
        .map_err(OAuthError::TooManyRequests)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(OAuthError::InvalidClientMetadata(
            "the body must be application/json".into(),
        ));
    }
    let req: RegistrationRequest = serde_json::from_slice(&body)
        .map_err(|e| OAuthError::InvalidClientMetadata(format!("invalid JSON: {e}")))?;
    let application_type = req.application_type.clone();
    let client_id =
        random_token(16).ok_or_else(|| OAuthError::server(std::io::Error::other("rng")))?;
    let mut client = register_client(req, &state.settings.config.scopes.supported, client_id, now)?;
    let secret = if client.is_confidential() {
        let secret =
            random_token(32).ok_or_else(|| OAuthError::server(std::io::Error::other("rng")))?;
        client.secret_hash = Some(sha256_b64(&secret));
        Some(secret)
    } else {
        None
    };
    // Clients that register on every connect must not grow state forever.
    let ttl = state.settings.config.client_ttl_seconds;
    if ttl > 0 {
        let purged = state
            .store
            .purge_unused_clients(now.saturating_sub(ttl))
            .map_err(OAuthError::server)?;
        if purged > 0 {
            tracing::info!(purged, "unused clients expired");
        }
    }
    state
        .store
        .insert_client(client.clone())
        .map_err(OAuthError::server)?;
    state.metrics.registered();
    audit!(state, &meta, info, "client_registered", client: Some(&client.client_id), sub: None;
        client_id = %client.client_id, name = ?client.client_name, "client registered");
    let body = RegistrationResponse {
        client_id: client.client_id,
        client_id_issued_at: now,
        client_secret_expires_at: secret.as_ref().map(|_| 0),
        client_secret: secret,
        client_name: client.client_name,
        redirect_uris: client.redirect_uris,
        grant_types: client.grant_types,
        response_types: vec!["code"],
        token_endpoint_auth_method: client.token_endpoint_auth_method,
        scope: client.scope,
        application_type,
    };
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> RegistrationRequest {
        serde_json::from_str(json).unwrap()
    }

    fn scopes() -> Vec<String> {
        vec!["mcp:read".into(), "mcp:write".into()]
    }

    #[test]
    fn b6_public_client_defaults() {
        let c = register_client(
            req(r#"{"redirect_uris":["http://127.0.0.1/cb"],"client_name":"x"}"#),
            &scopes(),
            "id".into(),
            5,
        )
        .unwrap();
        assert_eq!(c.token_endpoint_auth_method, "none");
        assert_eq!(c.grant_types, ["authorization_code", "refresh_token"]);
        assert_eq!(c.created_at, 5);
    }

    #[test]
    fn b6_refusals_use_rfc7591_codes() {
        let cases = [
            (r#"{"redirect_uris":[]}"#, "invalid_redirect_uri"),
            (
                r#"{"redirect_uris":["http://evil.example/cb"]}"#,
                "invalid_redirect_uri",
            ),
            (
                r#"{"redirect_uris":["https://a.example/cb#f"]}"#,
                "invalid_redirect_uri",
            ),
            (
                r#"{"redirect_uris":["https://a.example/cb"],"token_endpoint_auth_method":"private_key_jwt"}"#,
                "invalid_client_metadata",
            ),
            (
                r#"{"grant_types":["client_credentials"]}"#,
                "invalid_client_metadata",
            ),
            (
                r#"{"grant_types":["authorization_code"],"token_endpoint_auth_method":"client_secret_post"}"#,
                "invalid_redirect_uri",
            ),
            (
                r#"{"redirect_uris":["https://a.example/cb"],"grant_types":["password"]}"#,
                "invalid_client_metadata",
            ),
            (
                r#"{"redirect_uris":["https://a.example/cb"],"response_types":["token"]}"#,
                "invalid_client_metadata",
            ),
            (
                r#"{"redirect_uris":["https://a.example/cb"],"scope":"root"}"#,
                "invalid_client_metadata",
            ),
        ];
        for (json, code) in cases {
            let err = register_client(req(json), &scopes(), "id".into(), 0).unwrap_err();
            assert_eq!(err.error_code(), code, "{json}");
        }
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_loopback() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1, 192.0.2.7".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let remote: SocketAddr = "198.51.100.1:5".parse().unwrap();
        assert_eq!(source_ip(local, &h).to_string(), "192.0.2.7");
        assert_eq!(source_ip(remote, &h).to_string(), "198.51.100.1");
    }

    #[test]
    fn confidential_clients_may_use_client_credentials_without_redirects() {
        let c = register_client(
            req(r#"{"grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic"}"#),
            &scopes(),
            "id".into(),
            0,
        )
        .unwrap();
        assert!(c.is_confidential());
        assert!(c.redirect_uris.is_empty());
    }
}
