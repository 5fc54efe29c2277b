//! mcp-oauth-gateway: OAuth 2.1 in front of MCP servers, the way the MCP authorization
//! specification asks for it, in one process.
//!
//! # Layout
//!
//! Layers, bottom to top; a module imports only from layers below it (files of its own
//! module excepted), which `tests/integration/layers.rs` checks on every run.
//!
//! 0. [`roots`]: whom TLS connections out (the database, upstreams) trust.
//! 1. [`clock`], [`secret`] (random values, hashing, constant-time comparison, password
//!    hashes), [`metrics`], [`store`] (the storage trait; SQLite, in-memory and
//!    PostgreSQL stores).
//! 2. [`web`]: what every HTTP role uses: client address, request id, origin checks, the
//!    HTML kit, sessions and cookies, the path table, redirect URI rules, well-known URLs.
//! 3. [`config`]: the one `Config` (TOML file, env, CLI flags), validated at start.
//! 4. [`settings`]: what the config means once the public URL is known.
//! 5. [`tokens`]: signing keys, JWT access tokens, the JWKS router, verification, and the
//!    token sources of the external-issuer and shared-secret modes.
//! 6. [`audit`]: security events (log target and the ring the operator's page reads).
//! 7. [`shared`]: the parts of the state every role reads.
//! 8. The roles, which never import each other: [`authz`] (the authorization server),
//!    [`resource`] (bearer validation in front of the MCP server, RFC 9728 metadata),
//!    [`proxy`] (the public smart proxy), [`ops`] (health, readiness, metrics), [`client`]
//!    (the OAuth client of `mcp-oauth-gateway client`).
//! 9. Built on a role: [`admin`] (the operator's page, on the authorization server's
//!    state), [`mcp`] (the MCP server behind the resource layer: built-in, HTTP or stdio
//!    upstream), [`tls`] (the proxy's listener over TLS).
//! 10. [`gateway`]: builds each role's state and serves each router on its listener.
//!
//! Each role that serves HTTP exports `router(state) -> Router`, so a test can drive it
//! alone with `oneshot`.

pub mod admin;
pub mod audit;
pub mod authz;
pub mod client;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod idp;
pub mod mcp;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod resource;
pub mod roots;
pub mod secret;
pub mod settings;
pub mod shared;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod web;

pub use config::Config;
pub use gateway::{Gateway, Listeners};
