//! MCP: the built-in demo server ([`builtin`]), served over streamable HTTP with rmcp, or
//! the connector to an existing MCP server ([`upstream`]).

pub mod builtin;
pub mod passthrough;
pub mod sessions;
pub mod stdio;
pub mod upstream;

use std::collections::BTreeSet;
use std::sync::Arc;

use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer};
use tokio_util::sync::CancellationToken;

use crate::resource::policy::ScopePolicy;
use crate::resource::{Identity, ResourceState};
use sessions::Sessions;

/// The scopes an MCP request served over HTTP may use: those of the verified identity the
/// bearer layer put in it; none without one.
fn effective_scopes(ctx: &RequestContext<RoleServer>) -> BTreeSet<String> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Identity>())
        .map(|i| i.effective.clone())
        .unwrap_or_default()
}

/// The answer to a `tools/call` the token may not make.
fn tool_refused() -> ErrorData {
    ErrorData::invalid_request("the token may not call this tool", None)
}

/// A `tools/call` of `tool` on a bridge to another server: allowed by the token's scopes
/// under `policy`, or refused.
fn check_tool_call(
    policy: &ScopePolicy,
    ctx: &RequestContext<RoleServer>,
    tool: &str,
) -> Result<(), ErrorData> {
    if policy.may_call(&effective_scopes(ctx), tool) {
        Ok(())
    } else {
        Err(tool_refused())
    }
}

/// How our MCP servers are served: the proxy rewrites Host to our listener's address and
/// the bearer layer checks Origin; sessions end when `shutdown` is cancelled, so graceful
/// shutdown is not held up by open SSE streams.
fn http_config(state: &ResourceState, shutdown: CancellationToken) -> StreamableHttpServerConfig {
    let mcp_ip = state.settings.config.mcp_addr.ip().to_string();
    StreamableHttpServerConfig::default()
        .with_allowed_hosts([
            "localhost".to_string(),
            "127.0.0.1".into(),
            "::1".into(),
            mcp_ip,
        ])
        .disable_allowed_origins()
        // Stateless (2026-07-28) answers that are one message go as plain JSON, not a
        // one-event SSE stream: cheaper for both ends. A handler that sends notifications
        // first still streams. Sessions of 2025-era clients are not affected.
        .with_json_response(true)
        .with_cancellation_token(shutdown)
}

/// The session manager of an MCP service: [`sessions::Sessions`], which keeps a session to
/// an inbox and a routing table instead of rmcp's worker and its channels (issue 17).
fn session_manager() -> Arc<Sessions> {
    Arc::new(Sessions::default())
}

/// The built-in server as a tower service, sessionful for 2025-era clients and stateless for
/// 2026-07-28 ones.
pub fn builtin_service(
    state: &ResourceState,
    shutdown: CancellationToken,
) -> McpService<builtin::BuiltinServer> {
    let notes = builtin::Notes::default();
    let policy = state.policy.clone();
    let clock = state.clock.clone();
    McpService::new(StreamableHttpService::new(
        move || {
            Ok(builtin::BuiltinServer::new(
                notes.clone(),
                policy.clone(),
                clock.clone(),
            ))
        },
        session_manager(),
        http_config(state, shutdown),
    ))
}

/// Serve the built-in demo server on standard input and output (`serve-stdio`), as a
/// stdio MCP server for trying `--upstream-cmd` and for tests. Returns when stdin closes.
pub async fn serve_builtin_stdio(clock: Arc<dyn crate::clock::Clock>) -> std::io::Result<()> {
    use rmcp::ServiceExt as _;
    let policy = Arc::new(crate::resource::policy::ScopePolicy::from_config(
        &crate::config::ScopeConfig::default(),
    ));
    let server = builtin::BuiltinServer::new(builtin::Notes::default(), policy, clock);
    let running = server
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

/// The environment of `--upstream-cmd` children (see [`stdio::child_env`]).
fn stdio_env(
    state: &ResourceState,
) -> Result<Vec<(String, std::ffi::OsString)>, stdio::CommandError> {
    let c = &state.settings.config;
    // Where the gateway reads its own secrets from: never passed to the child.
    let secrets = [
        c.shared_secret.secret_env.as_str(),
        c.external.introspection_secret_env.as_str(),
    ];
    stdio::child_env(&c.upstream_env, &secrets, |name| std::env::var_os(name))
}

/// A stdio MCP server (`--upstream-cmd`), one child per MCP session, every message passed
/// through ([`passthrough`]).
pub fn passthrough_service(
    state: &ResourceState,
    command: &str,
    shutdown: CancellationToken,
) -> Result<McpService<passthrough::Passthrough>, stdio::CommandError> {
    let env = Arc::new(stdio_env(state)?);
    let argv = Arc::new(
        crate::config::command_words(command)
            .ok_or_else(|| stdio::CommandError::new("an unclosed quote or an empty command"))?,
    );
    let policy = state.policy.clone();
    Ok(McpService::new(StreamableHttpService::new(
        move || {
            Ok(passthrough::Passthrough::new(
                argv.clone(),
                env.clone(),
                policy.clone(),
            ))
        },
        session_manager(),
        http_config(state, shutdown),
    )))
}

/// A stdio MCP server (`--upstream-cmd`) with `upstream_cmd_per_session = false`: one child
/// shared by every session, bridged for tools, resources and prompts.
pub fn stdio_service(
    state: &ResourceState,
    command: &str,
    shutdown: CancellationToken,
) -> Result<McpService<stdio::StdioBridge>, stdio::CommandError> {
    let env = stdio_env(state)?;
    let shared = stdio::StdioUpstream::new(command, env.clone())?;
    let per_session = state.settings.config.upstream_cmd_per_session;
    let command = command.to_string();
    let policy = state.policy.clone();
    Ok(McpService::new(StreamableHttpService::new(
        move || {
            // Per session: the child lives as long as the session's bridge, and is killed
            // with it when the session ends.
            let upstream = if per_session {
                stdio::StdioUpstream::new(&command, env.clone()).map_err(std::io::Error::other)?
            } else {
                shared.clone()
            };
            Ok(stdio::StdioBridge::new(upstream, policy.clone()))
        },
        session_manager(),
        http_config(state, shutdown),
    )))
}

/// An rmcp service behind one `Arc`. axum clones a route's service for every request, and
/// rmcp's own clone copies its whole configuration (allowed hosts and all); this clones a
/// pointer.
pub struct McpService<S: rmcp::ServerHandler>(Arc<StreamableHttpService<S, Sessions>>);

impl<S: rmcp::ServerHandler> McpService<S> {
    fn new(service: StreamableHttpService<S, Sessions>) -> Self {
        Self(Arc::new(service))
    }
}

impl<S: rmcp::ServerHandler> Clone for McpService<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

type McpResponse =
    http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>;

impl<S: rmcp::ServerHandler + Send + 'static> tower::Service<axum::extract::Request>
    for McpService<S>
{
    type Response = McpResponse;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<McpResponse, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        let service = self.0.clone();
        let post = req.method() == http::Method::POST;
        Box::pin(async move {
            let res = service.handle(req).await;
            Ok(
                if post && crate::proxy::hop::is_event_stream(res.headers()) {
                    with_first_events(res).await
                } else {
                    res
                },
            )
        })
    }
}

/// The SSE answer to a POST, held back until its first event, with every event that is
/// ready by then ([`crate::proxy::hop::first_frames`]). rmcp hands back the response
/// head before the session has handled the request, so the head went out in one write and
/// the answer in another, and the end of the stream often in a third; now a quick answer
/// leaves in one. A slow answer's head goes alone after
/// [`crate::proxy::hop::FIRST_FRAME_WAIT`], so a proxy's timeout on the head still
/// measures the head.
async fn with_first_events(res: McpResponse) -> McpResponse {
    let (parts, body) = res.into_parts();
    let body = crate::proxy::hop::first_frames(body, crate::proxy::hop::FIRST_FRAME_WAIT).await;
    http::Response::from_parts(parts, http_body_util::combinators::BoxBody::new(body))
}
