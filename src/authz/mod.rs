//! The authorization server (:3003, reached through the proxy): metadata (RFC 8414, OIDC
//! discovery), registration (RFC 7591), the authorization endpoint with sign-in and
//! consent, the token endpoint, revocation (RFC 7009) and introspection (RFC 7662). Its
//! state is [`AuthzState`]; the gateway serves [`router`] on the custom-routes listener
//! next to the resource's metadata, the operator's page and the operations endpoints.
//!
//! | flow step | handler |
//! |---|---|
//! | authorization server metadata | [`metadata::authorization_server_get`] |
//! | 4. registration | [`register::register_post`] |
//! | 5. authorize, consent | [`authorize::authorize_get`], [`authorize::consent_post`] |
//! | 6, 8. token, refresh | [`token::token_post`] |
//! | revocation | [`revoke::revoke_post`] |
//! | introspection | [`introspect::introspect_post`] |
//!
//! Every answer is given with its request id in scope ([`crate::web::request_id::request_id_scope`]),
//! so error bodies can name it.

pub mod authorize;
pub mod cimd;
pub mod client_auth;
pub mod error;
pub mod introspect;
pub mod login;
pub mod metadata;
pub mod params;
pub mod pkce;
pub mod ratelimit;
pub mod register;
pub mod revoke;
pub mod sso;
pub mod state;
pub mod token;
pub mod users;

pub use state::AuthzState;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

use crate::web::MAX_FORM_BODY as MAX_BODY;
use crate::web::routes;

/// The custom-routes router.
pub fn router(state: AuthzState) -> Router {
    let as_meta = get(metadata::authorization_server_get);
    // RFC 8414 §3.1 and OIDC discovery, with the insertion and append forms some clients
    // build from the MCP URL.
    let metadata_paths = [routes::AS_METADATA, routes::OIDC_METADATA]
        .into_iter()
        .flat_map(|p| {
            [
                p.to_string(),
                format!("{p}/{{*path}}"),
                format!("{}{p}", routes::MCP),
            ]
        });
    metadata_paths
        .fold(Router::new(), |r, path| r.route(&path, as_meta.clone()))
        .route(routes::REGISTER, post(register::register_post))
        .route(routes::AUTHORIZE, get(authorize::authorize_get))
        .route(routes::CONSENT, post(authorize::consent_post))
        .route(routes::LOGIN, post(login::login_post))
        .route(routes::LOGIN_PROVIDER, post(sso::provider_post))
        .route(routes::LOGIN_CALLBACK, get(sso::callback_get))
        .route(routes::LOGOUT, post(sso::logout_post))
        .route(routes::CONSENTS, get(login::consents_get))
        .route(routes::CONSENTS_REVOKE, post(login::consents_revoke_post))
        .route(routes::TOKEN, post(token::token_post))
        .route(routes::REVOKE, post(revoke::revoke_post))
        .route(routes::INTROSPECT, post(introspect::introspect_post))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(oversized_body_json))
        .layer(middleware::from_fn_with_state(
            state.settings.trusted_proxies.clone(),
            crate::web::client_ip::resolve,
        ))
        .layer(middleware::from_fn(
            crate::web::request_id::request_id_scope,
        ))
        .with_state(state)
}

/// A body over [`MAX_BODY`] is refused by the extractor with a plain-text 413; clients of an
/// OAuth endpoint read errors as RFC 6749 §5.2 JSON, so it is answered as one
/// (`invalid_request`, still 413).
async fn oversized_body_json(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse as _;
    let res = next.run(req).await;
    if res.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return res;
    }
    let body = error::ErrorBody {
        error: "invalid_request",
        error_description: Some(format!(
            "the request body is larger than {} KiB",
            MAX_BODY / 1024
        )),
        request_id: crate::web::request_id::current_request_id(),
    };
    let mut res = (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}
