//! RFC 7591 dynamic client registration. Cheap and rate-limited per source address:
//! some clients register on every connect.
//!
//! Closed by default: an anonymous registration creates only clients that obtain tokens
//! through a person's consent (the code flow). A client that gets tokens without a person
//! (`client_credentials`) is configured by the operator (`[[clients]]`) or registered with
//! an initial access token (RFC 7591 §3) the operator handed out, presented as
//! `Authorization: Bearer`; its scope is bounded by that token's.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::cimd::display_name;
use super::error::{ErrorBody, OAuthError};
use super::params::split_scopes;
use super::state::AuthzState;
use crate::audit::{RequestMeta, audit};
use crate::config::InitialAccessToken;
use crate::secret::{ct_eq, random_token, sha256_b64};
use crate::store::Client;
use crate::web::client_ip::ClientIp;
use crate::web::uris::validate_redirect_uri;

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

/// Check a registration and turn it into a client record. `iat` is the initial access
/// token the registration presented, if any (already checked).
pub fn register_client(
    req: RegistrationRequest,
    supported_scopes: &[String],
    client_id: String,
    now: u64,
    iat: Option<&InitialAccessToken>,
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
    if iat.is_none() && grant_types.iter().any(|g| g == "client_credentials") {
        return Err(OAuthError::InvalidClientMetadata(
            "client_credentials needs an initial access token (RFC 7591 §3) sent as `Authorization: Bearer`: \
             without one, a registered client obtains tokens only through a person's consent"
                .into(),
        ));
    }
    if grant_types.iter().any(|g| g == "authorization_code") && req.redirect_uris.is_empty() {
        return Err(OAuthError::InvalidRedirectUri(
            "at least one redirect URI is required".into(),
        ));
    }
    for uri in &req.redirect_uris {
        validate_redirect_uri(uri).map_err(|e| OAuthError::InvalidRedirectUri(e.to_string()))?;
    }
    if let Some(types) = &req.response_types
        && types.iter().any(|t| t != "code")
    {
        return Err(OAuthError::InvalidClientMetadata(
            "only the `code` response type is supported".into(),
        ));
    }
    let asked = req.scope.as_deref().map(split_scopes);
    if let Some(bad) = asked
        .iter()
        .flatten()
        .find(|s| !supported_scopes.contains(s))
    {
        return Err(OAuthError::InvalidClientMetadata(format!(
            "scope `{bad}` is not offered"
        )));
    }
    let scope = match (asked, iat.and_then(|t| t.scope.as_deref())) {
        (asked, None) => asked.filter(|a| !a.is_empty()).map(|a| a.join(" ")),
        // A client registered with an initial access token gets at most that token's scope.
        (asked, Some(bound)) => {
            let bound = split_scopes(bound);
            let kept: Vec<String> = match asked.filter(|a| !a.is_empty()) {
                Some(a) => a.into_iter().filter(|s| bound.contains(s)).collect(),
                None => bound,
            };
            if kept.is_empty() {
                return Err(OAuthError::InvalidClientMetadata(
                    "none of the scopes asked for is allowed by the initial access token".into(),
                ));
            }
            Some(kept.join(" "))
        }
    };
    Ok(Client {
        client_id,
        client_name: req.client_name.as_deref().and_then(display_name),
        redirect_uris: req.redirect_uris,
        grant_types,
        token_endpoint_auth_method: method.to_string(),
        scope,
        created_at: now,
        last_used_at: now,
        ..Client::default()
    })
}

/// A refusal of the registration's bearer credential (RFC 6750 §3): the JSON body of the
/// other errors, with a `WWW-Authenticate: Bearer` challenge. The token is never echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerRefusal {
    /// 400 for a malformed header, 401 for an unknown token.
    pub status: StatusCode,
    /// `invalid_request` or `invalid_token`.
    pub error: &'static str,
    /// Why.
    pub description: &'static str,
}

impl IntoResponse for BearerRefusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            error_description: Some(self.description.to_string()),
            request_id: crate::web::request_id::current_request_id(),
        };
        let challenge = format!(
            "Bearer error=\"{}\", error_description=\"{}\"",
            self.error, self.description
        );
        let mut res = (self.status, axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

/// The initial access token a registration presents, if any: `Ok(None)` without an
/// `Authorization` header; a malformed header is 400 `invalid_request`, a token that is not
/// one of `configured` 401 `invalid_token` (RFC 6750 §3.1). Compared by hash in constant
/// time, against every configured token.
pub fn initial_access_token<'a>(
    headers: &HeaderMap,
    configured: &'a [InitialAccessToken],
) -> Result<Option<&'a InitialAccessToken>, BearerRefusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(BearerRefusal {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "registration takes an initial access token as `Authorization: Bearer <token>`",
        });
    };
    let hash = sha256_b64(token);
    let mut found = None;
    for t in configured {
        if ct_eq(&hash, &t.sha256) && found.is_none() {
            found = Some(t);
        }
    }
    found.map(Some).ok_or(BearerRefusal {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_token",
        description: "the initial access token is not valid",
    })
}

/// `POST /register`.
pub async fn register_post(
    State(state): State<AuthzState>,
    ClientIp(source): ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let now = state.clock.now();
    state
        .register_limiter
        .check(source, now)
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
    let iat = match initial_access_token(&headers, &state.settings.config.initial_access_tokens) {
        Ok(iat) => iat,
        Err(refusal) => {
            audit!(state, &meta, warn, "registration_refused", client: None, sub: None;
                "registration presented an unknown or malformed initial access token");
            return Ok(refusal.into_response());
        }
    };
    let req: RegistrationRequest = serde_json::from_slice(&body)
        .map_err(|e| OAuthError::InvalidClientMetadata(format!("invalid JSON: {e}")))?;
    let application_type = req.application_type.clone();
    let client_id =
        random_token(16).ok_or_else(|| OAuthError::server(std::io::Error::other("rng")))?;
    let mut client = register_client(
        req,
        &state.settings.config.scopes.supported,
        client_id,
        now,
        iat,
    )?;
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
    // The initial access token is named (by its name, never its value), so an operator sees
    // who created each client that can get tokens without a person.
    audit!(state, &meta, info, "client_registered", client: Some(&client.client_id), sub: None;
        client_id = %client.client_id, name = client.client_name.as_deref().unwrap_or(""),
        initial_access_token = iat.map(|t| t.name.as_str()),
        grant_types = %client.grant_types.join(" "), "client registered");
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
    fn public_client_defaults() {
        let c = register_client(
            req(r#"{"redirect_uris":["http://127.0.0.1/cb"],"client_name":"x"}"#),
            &scopes(),
            "id".into(),
            5,
            None,
        )
        .unwrap();
        assert_eq!(c.token_endpoint_auth_method, "none");
        assert_eq!(c.grant_types, ["authorization_code", "refresh_token"]);
        assert_eq!(c.created_at, 5);
    }

    #[test]
    fn refusals_use_rfc7591_codes() {
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
            let err = register_client(req(json), &scopes(), "id".into(), 0, None).unwrap_err();
            assert_eq!(err.error_code(), code, "{json}");
        }
    }

    fn iat(scope: Option<&str>) -> InitialAccessToken {
        InitialAccessToken {
            name: "ci".into(),
            sha256: sha256_b64("the-iat"),
            scope: scope.map(str::to_string),
        }
    }

    const CC: &str = r#"{"grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic"}"#;

    #[test]
    fn client_credentials_needs_an_initial_access_token() {
        let err = register_client(req(CC), &scopes(), "id".into(), 0, None).unwrap_err();
        assert_eq!(err.error_code(), "invalid_client_metadata");
        assert!(err.to_string().contains("initial access token"), "{err}");
        let t = iat(None);
        let c = register_client(req(CC), &scopes(), "id".into(), 0, Some(&t)).unwrap();
        assert!(c.is_confidential());
        assert!(c.redirect_uris.is_empty());
        assert_eq!(c.scope, None, "no scope asked, none registered");
    }

    #[test]
    fn an_initial_access_token_bounds_the_scope() {
        let t = iat(Some("mcp:read"));
        let with = |json: &str| register_client(req(json), &scopes(), "id".into(), 0, Some(&t));
        let c = with(CC).unwrap();
        assert_eq!(c.scope.as_deref(), Some("mcp:read"), "the token's scope");
        let c = with(r#"{"grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic","scope":"mcp:read mcp:write"}"#).unwrap();
        assert_eq!(c.scope.as_deref(), Some("mcp:read"), "the intersection");
        let err = with(r#"{"grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic","scope":"mcp:write"}"#).unwrap_err();
        assert_eq!(err.error_code(), "invalid_client_metadata");
    }

    #[test]
    fn initial_access_tokens_are_read_from_the_bearer_header() {
        let configured = [iat(None)];
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            initial_access_token(&h, &configured)
        };
        assert!(matches!(
            initial_access_token(&HeaderMap::new(), &configured),
            Ok(None)
        ));
        assert_eq!(with("Bearer the-iat").unwrap().unwrap().name, "ci");
        let res = with("Bearer wrong").unwrap_err().into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let challenge = res.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{challenge}"
        );
        assert_eq!(
            with("Basic abc").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(with("Bearer ").unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn displayed_names_lose_bidi_and_control_characters() {
        let c = register_client(
            req("{\"redirect_uris\":[\"http://127.0.0.1/cb\"],\"client_name\":\"Good\\u202e\\u2066App\\u200f\\u061c\\r\\n \"}"),
            &scopes(),
            "id".into(),
            0,
            None,
        )
        .unwrap();
        assert_eq!(c.client_name.as_deref(), Some("GoodApp"));
        let c = register_client(
            req("{\"redirect_uris\":[\"http://127.0.0.1/cb\"],\"client_name\":\"\\u202a\\u0007\"}"),
            &scopes(),
            "id".into(),
            0,
            None,
        )
        .unwrap();
        assert_eq!(c.client_name, None, "nothing left to show");
    }
}
