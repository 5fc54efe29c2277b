//! mcp-oauth-gateway: OAuth 2.1 in front of MCP servers, the way the MCP authorization
//! specification asks for it, in one process.
//!
//! # Layout
//!
//! One role per module; each role that serves HTTP exports `router(state) -> Router` so a
//! test can drive it alone with `oneshot`, and [`gateway`] serves each router on its own
//! listener.
//!
//! - [`config`]: the one `Config` (TOML file, env, CLI flags), validated at start.
//! - [`clock`]: time, read once at the edge and passed down.
//! - [`proxy`]: the public smart proxy (:3002): route table, streaming forwarder, CORS.
//! - [`authz`]: the authorization server (:3003): metadata, registration, authorize and
//!   consent, token grants, revocation.
//! - [`tokens`]: signing keys, JWT access tokens, the JWKS document (:3004), verification.
//! - [`resource`]: the resource server layer (:3001): bearer validation, scope policy,
//!   RFC 6750 challenges, RFC 9728 metadata.
//! - [`mcp`]: the built-in MCP server (rmcp, streamable HTTP).
//! - [`store`]: storage traits and their in-memory implementation.
//! - [`wellknown`]: the well-known URLs of an issuer's metadata, for whoever discovers it.
//! - [`gateway`]: takes four bound listeners and a shutdown future, runs everything.

pub mod admin;
pub mod authz;
pub mod client;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod mcp;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod resource;
pub mod secret;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod wellknown;

pub use config::Config;
pub use gateway::{Gateway, Listeners};
