//! MCP: the built-in demo server ([`builtin`]), served over streamable HTTP with rmcp, or
//! the connector to an existing MCP server ([`upstream`]).

pub mod builtin;
pub mod upstream;

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// The built-in server as a tower service, sessionful for 2025-era clients and stateless for
/// 2026-07-28 ones. Sessions end when `shutdown` is cancelled, so graceful shutdown is not
/// held up by open SSE streams.
pub fn builtin_service(
    state: &AppState,
    shutdown: CancellationToken,
) -> StreamableHttpService<builtin::BuiltinServer, LocalSessionManager> {
    let notes = builtin::Notes::default();
    let policy = state.policy.clone();
    let clock = state.clock.clone();
    let mcp_ip = state.settings.config.mcp_addr.ip().to_string();
    // The proxy rewrites Host to our listener's address; the bearer layer checks Origin.
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts([
            "localhost".to_string(),
            "127.0.0.1".into(),
            "::1".into(),
            mcp_ip,
        ])
        .disable_allowed_origins()
        .with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || {
            Ok(builtin::BuiltinServer::new(
                notes.clone(),
                policy.clone(),
                clock.clone(),
            ))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
