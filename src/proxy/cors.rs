//! CORS for browser-based MCP clients (MCP Inspector), only where they need it: discovery,
//! registration, token, revocation and the JWKS answer any origin (they carry no ambient
//! credentials); the MCP endpoint only origins the resource server would accept. Everything
//! else (the operator's pages, sign-in, authorization and consent, introspection, health)
//! gets no CORS at all: no `Access-Control-Allow-Origin`, and a preflight is not answered
//! here but forwarded like any request (the backend refuses it). Exposes the headers
//! clients must read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header, request::Parts};
use axum::response::Response;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{Backend, backend_for};
use crate::settings::Settings;
use crate::web::routes::route_name;

/// How a route answers browsers from other origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any origin: public endpoints a browser-based client calls without cookies.
    Any,
    /// The resource server's Origin allow-list (the MCP endpoint).
    McpOrigins,
    /// No CORS: same-origin pages and server-to-server endpoints.
    None,
}

/// The CORS policy of the route named `name` ([`route_name`]).
pub fn policy(name: &str, metrics_public: bool) -> Policy {
    match name {
        "authorization_server_metadata"
        | "resource_metadata"
        | "register"
        | "token"
        | "revoke"
        | "jwks" => Policy::Any,
        _ if backend_for(name, metrics_public) == Backend::Mcp => Policy::McpOrigins,
        _ => Policy::None,
    }
}

/// The CORS layer for the routes that have one.
fn cors_layer(settings: Arc<Settings>) -> CorsLayer {
    let metrics_public = settings.config.metrics_public;
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
            move |origin: &HeaderValue, parts: &Parts| match policy(
                route_name(parts.uri.path()),
                metrics_public,
            ) {
                Policy::Any => true,
                Policy::McpOrigins => origin.to_str().is_ok_and(|o| {
                    crate::web::origin::origin_allowed(
                        o,
                        &settings.public_origin,
                        &settings.config.allowed_origins,
                    )
                }),
                Policy::None => false,
            },
        ))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(allow)
        .expose_headers(expose)
        .max_age(Duration::from_secs(600))
}

/// The proxy's CORS: which requests it applies to, and the layer that answers them.
#[derive(Clone)]
pub struct Cors {
    layer: Arc<CorsLayer>,
    metrics_public: bool,
}

/// The proxy's CORS state.
pub fn layer(settings: Arc<Settings>) -> Cors {
    Cors {
        metrics_public: settings.config.metrics_public,
        layer: Arc::new(cors_layer(settings)),
    }
}

impl Cors {
    /// Whether a request to the route named `route` goes through [`Cors::wrap`]. An MCP
    /// request without `Origin` is not a browser's cross-origin one: nothing to add (its
    /// answers are never cached, so there is no `Vary` to keep either). Public metadata
    /// keeps `Vary: Origin` for caches.
    pub fn applies(&self, route: &str, headers: &HeaderMap) -> bool {
        match policy(route, self.metrics_public) {
            Policy::None => false,
            Policy::McpOrigins => headers.contains_key(header::ORIGIN),
            Policy::Any => true,
        }
    }

    /// `req` answered by `inner` behind the CORS layer (a preflight by the layer alone).
    pub async fn wrap<S>(&self, inner: S, req: Request) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send,
        S::Future: Send,
    {
        match self.layer.layer(inner).oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_endpoints_answer_any_origin() {
        for p in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
            "/.well-known/oauth-protected-resource/mcp",
            "/register",
            "/token",
            "/revoke",
            "/jwks.json",
            "/.well-known/jwks.json",
        ] {
            assert_eq!(policy(route_name(p), false), Policy::Any, "{p}");
        }
        assert_eq!(policy(route_name("/mcp"), false), Policy::McpOrigins);
        for p in [
            "/admin",
            "/admin/login",
            "/consents",
            "/consents/revoke",
            "/debug/requests",
            "/login",
            "/authorize",
            "/consent",
            "/introspect",
            "/healthz",
        ] {
            assert_eq!(policy(route_name(p), false), Policy::None, "{p}");
        }
        assert_eq!(policy(route_name("/metrics"), true), Policy::None);
    }
}
