//! CORS for browser-based MCP clients (MCP Inspector): discovery, registration, token and
//! revocation answer any origin (they carry no ambient credentials); the MCP endpoint only
//! origins the resource server would accept. Exposes the headers clients must read.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{Backend, route};
use crate::resource::origin_allowed;
use crate::state::AppState;

/// The proxy's CORS layer.
pub fn layer(state: AppState) -> CorsLayer {
    let metrics_public = state.settings.config.metrics_public;
    let mcp_headers = |names: &[&'static str]| -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    let mut allow = vec![header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT];
    allow.extend(mcp_headers(&[
        "mcp-protocol-version",
        "mcp-session-id",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    ]));
    let mut expose = vec![header::WWW_AUTHENTICATE];
    expose.extend(mcp_headers(&["mcp-session-id", "mcp-protocol-version"]));
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(
            move |origin: &HeaderValue, parts: &Parts| match route(parts.uri.path(), metrics_public)
            {
                Backend::Mcp => origin.to_str().is_ok_and(|o| origin_allowed(&state, o)),
                Backend::Routes | Backend::Jwks => true,
            },
        ))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(allow)
        .expose_headers(expose)
        .max_age(Duration::from_secs(600))
}
