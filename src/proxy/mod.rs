//! The public smart proxy (:3002): one route table sends OAuth and discovery paths to the
//! custom-routes server, `/jwks.json` to the JWKS server and everything else to the
//! protected MCP server. Bodies stream both ways (SSE events pass as the backend writes
//! them); hop-by-hop headers are stripped and `X-Forwarded-*` set (RFC 9110 §7.6.1);
//! a dead backend is a 502, a slow one a 504. CORS for browser clients is answered here.

pub mod cors;
pub mod forward;
pub mod hop;
pub mod listen;
pub mod pool;
pub mod trace;

use std::net::SocketAddr;

use crate::web::routes::route_name;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The authorization server and discovery documents (:3003).
    Routes,
    /// The JWKS server (:3004).
    Jwks,
    /// The protected MCP server (:3001).
    Mcp,
}

impl Backend {
    /// A name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Routes => "routes",
            Self::Jwks => "jwks",
            Self::Mcp => "mcp",
        }
    }
}

/// The route table: where a path goes. `/metrics` reaches the routes server only when
/// `metrics_public`; what has no name of its own is the MCP server's.
pub fn route(path: &str, metrics_public: bool) -> Backend {
    backend_for(route_name(path), metrics_public)
}

/// Where the route named `name` ([`route_name`]) goes: the JWKS server, the MCP server
/// (the MCP endpoint and anything without a name of its own), or the routes server.
pub fn backend_for(name: &str, metrics_public: bool) -> Backend {
    match name {
        "jwks" => Backend::Jwks,
        "mcp" | "other" => Backend::Mcp,
        "metrics" if !metrics_public => Backend::Mcp,
        _ => Backend::Routes,
    }
}

/// The backends' addresses.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// :3001.
    pub mcp: SocketAddr,
    /// :3003.
    pub routes: SocketAddr,
    /// :3004.
    pub jwks: SocketAddr,
}

impl Backends {
    /// The address of `backend`.
    pub fn addr(&self, backend: Backend) -> SocketAddr {
        match backend {
            Backend::Routes => self.routes,
            Backend::Jwks => self.jwks,
            Backend::Mcp => self.mcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        for p in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
            "/.well-known/oauth-protected-resource/mcp",
            "/mcp/.well-known/openid-configuration",
            "/register",
            "/authorize",
            "/token",
            "/revoke",
            "/consent",
            "/admin",
            "/admin/grants/revoke",
        ] {
            assert_eq!(route(p, false), Backend::Routes, "{p}");
        }
        assert_eq!(route("/.well-known/jwks.json", false), Backend::Jwks);
        assert_eq!(route("/jwks.json", false), Backend::Jwks);
        for p in [
            "/mcp",
            "/mcp/",
            "/",
            "/tokens",
            "/register/x",
            "/administrator",
        ] {
            assert_eq!(route(p, false), Backend::Mcp, "{p}");
        }
        assert_eq!(route("/metrics", false), Backend::Mcp);
        assert_eq!(route("/metrics", true), Backend::Routes);
    }
}
