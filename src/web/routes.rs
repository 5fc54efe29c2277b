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
/// Where the sign-in page's provider buttons post: on to the identity provider.
pub const LOGIN_PROVIDER: &str = "/login/provider";
/// Where an identity provider sends the browser back (the redirect URI registered there).
pub const LOGIN_CALLBACK: &str = "/login/callback";
/// Signing out of the gateway's browser session.
pub const LOGOUT: &str = "/logout";
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

/// The route a path takes, by name: the one table the proxy routes by, and a metrics label
/// from a fixed vocabulary, so no label carries what a client put in its URL. What has no
/// name of its own is `other` (the MCP server's).
pub fn route_name(path: &str) -> &'static str {
    match path {
        MCP | "/mcp/" => "mcp",
        REGISTER => "register",
        AUTHORIZE => "authorize",
        CONSENT => "consent",
        LOGIN | LOGIN_PROVIDER | LOGIN_CALLBACK | LOGOUT => "login",
        TOKEN => "token",
        REVOKE => "revoke",
        INTROSPECT => "introspect",
        CONSENTS | CONSENTS_REVOKE => "consents",
        JWKS | JWKS_WELL_KNOWN => "jwks",
        HEALTHZ => "healthz",
        READYZ => "readyz",
        METRICS => "metrics",
        DEBUG_REQUESTS => "debug",
        p if p == ADMIN
            || p.strip_prefix(ADMIN)
                .is_some_and(|rest| rest.starts_with('/')) =>
        {
            "admin"
        }
        p if p.contains(RESOURCE_METADATA) => "resource_metadata",
        p if p.contains("/.well-known/") => "authorization_server_metadata",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_a_fixed_vocabulary() {
        assert_eq!(route_name("/mcp"), "mcp");
        assert_eq!(route_name("/token"), "token");
        assert_eq!(route_name("/login/callback"), "login");
        assert_eq!(route_name("/admin/grants/revoke"), "admin");
        assert_eq!(
            route_name("/.well-known/oauth-protected-resource/mcp"),
            "resource_metadata"
        );
        assert_eq!(
            route_name("/.well-known/openid-configuration"),
            "authorization_server_metadata"
        );
        assert_eq!(route_name("/eyJhbGciOi.secret"), "other");
    }
}
