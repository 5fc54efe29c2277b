//! The gateway's own paths, named once: the routers that serve them and the proxy's route
//! table ([`route_name`], which also labels metrics) read these constants, so a path cannot
//! be served under one spelling and routed under another.

/// The MCP endpoint (the protected resource).
pub const MCP: &str = "/mcp";
/// Dynamic client registration (RFC 7591).
pub const REGISTER: &str = "/register";
/// The authorization endpoint.
pub const AUTHORIZE: &str = "/authorize";
/// Where the consent form posts.
pub const CONSENT: &str = "/consent";
/// Where the sign-in form before consent posts.
pub const LOGIN: &str = "/login";
/// The token endpoint.
pub const TOKEN: &str = "/token";
/// Token revocation (RFC 7009).
pub const REVOKE: &str = "/revoke";
/// Token introspection (RFC 7662).
pub const INTROSPECT: &str = "/introspect";
/// A user's remembered consents.
pub const CONSENTS: &str = "/consents";
/// Where the consents page's revoke form posts.
pub const CONSENTS_REVOKE: &str = "/consents/revoke";
/// The signing keys (RFC 7517).
pub const JWKS: &str = "/jwks.json";
/// The signing keys, under `/.well-known`.
pub const JWKS_WELL_KNOWN: &str = "/.well-known/jwks.json";
/// Liveness.
pub const HEALTHZ: &str = "/healthz";
/// Readiness.
pub const READYZ: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// Recent proxied requests, with `debug_trace`.
pub const DEBUG_REQUESTS: &str = "/debug/requests";
/// The operator's page; its forms are below it.
pub const ADMIN: &str = "/admin";
/// Authorization server metadata (RFC 8414 §3).
pub const AS_METADATA: &str = "/.well-known/oauth-authorization-server";
/// OpenID Connect discovery.
pub const OIDC_METADATA: &str = "/.well-known/openid-configuration";
/// Protected resource metadata (RFC 9728 §3).
pub const RESOURCE_METADATA: &str = "/.well-known/oauth-protected-resource";
