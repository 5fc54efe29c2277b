//! A stdio MCP server behind the gateway (`--upstream-cmd "COMMAND ARGS"`): one child
//! process shared by every session, spoken to as an MCP client (rmcp), re-spawned with
//! backoff when it dies, killed when the gateway stops; its stderr goes to the log. Our
//! own MCP server in front of it serves streamable HTTP and applies the tool policy:
//! `tools/list` shows only what the token may call, `tools/call` refuses the rest.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

use crate::resource::Identity;
use crate::resource::policy::ScopePolicy;

type Child = RunningService<RoleClient, ()>;

/// Why a command line is unusable.
#[derive(Debug, thiserror::Error)]
#[error("upstream command: {0}")]
pub struct CommandError(String);

/// Split a command line on whitespace, honouring double and single quotes.
pub fn split_command(line: &str) -> Result<Vec<String>, CommandError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(CommandError("unclosed quote".into()));
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(CommandError("empty command".into()));
    }
    Ok(words)
}

/// The child process and when it was last (re)started.
struct Slot {
    child: Option<Child>,
    last_spawn: Option<Instant>,
    failures: u32,
}

/// The shared stdio upstream.
pub struct StdioUpstream {
    argv: Vec<String>,
    slot: Mutex<Slot>,
}

impl StdioUpstream {
    /// An upstream running `command` (started on first use).
    pub fn new(command: &str) -> Result<Arc<Self>, CommandError> {
        Ok(Arc::new(Self {
            argv: split_command(command)?,
            slot: Mutex::new(Slot {
                child: None,
                last_spawn: None,
                failures: 0,
            }),
        }))
    }

    async fn spawn(&self) -> Result<Child, String> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).kill_on_drop(true);
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.argv[0]))?;
        if let Some(stderr) = stderr {
            let name = self.argv[0].clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "upstream_stderr", command = %name, "{line}");
                }
            });
        }
        ().serve(transport)
            .await
            .map_err(|e| format!("`{}` did not complete the MCP handshake: {e}", self.argv[0]))
    }

    /// Run `f` against a live child, starting or restarting it as needed. Restarts back
    /// off exponentially (up to 30 s) while the child keeps failing.
    async fn with_child<T, F, Fut>(&self, f: F) -> Result<T, ErrorData>
    where
        F: FnOnce(rmcp::Peer<RoleClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, rmcp::ServiceError>>,
    {
        let peer = {
            let mut slot = self.slot.lock().await;
            let alive = slot.child.as_ref().is_some_and(|c| !c.is_closed());
            if !alive {
                let backoff =
                    Duration::from_millis(250u64.saturating_mul(1 << slot.failures.min(7)))
                        .min(Duration::from_secs(30));
                if slot.failures > 0 && slot.last_spawn.is_some_and(|t| t.elapsed() < backoff) {
                    return Err(ErrorData::internal_error(
                        "upstream MCP server is restarting",
                        None,
                    ));
                }
                slot.last_spawn = Some(Instant::now());
                match self.spawn().await {
                    Ok(child) => {
                        tracing::info!(command = %self.argv[0], "stdio upstream started");
                        slot.child = Some(child);
                        slot.failures = 0;
                    }
                    Err(e) => {
                        slot.failures += 1;
                        tracing::warn!(error = %e, "stdio upstream failed to start");
                        return Err(ErrorData::internal_error(
                            "upstream MCP server unavailable",
                            None,
                        ));
                    }
                }
            }
            match &slot.child {
                Some(child) => child.peer().clone(),
                None => {
                    return Err(ErrorData::internal_error(
                        "upstream MCP server unavailable",
                        None,
                    ));
                }
            }
        };
        f(peer).await.map_err(|e| {
            tracing::warn!(error = %e, "stdio upstream request failed");
            ErrorData::internal_error("upstream MCP server failed", None)
        })
    }
}

/// Our MCP server in front of the stdio child.
#[derive(Clone)]
pub struct StdioBridge {
    upstream: Arc<StdioUpstream>,
    policy: Arc<ScopePolicy>,
}

impl StdioBridge {
    /// A bridge to `upstream`.
    pub fn new(upstream: Arc<StdioUpstream>, policy: Arc<ScopePolicy>) -> Self {
        Self { upstream, policy }
    }
}

fn effective(ctx: &RequestContext<RoleServer>) -> BTreeSet<String> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Identity>())
        .map(|i| i.effective.clone())
        .unwrap_or_default()
}

impl ServerHandler for StdioBridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
    }

    /// Answer with the child's own name, version and instructions (starting it if need be),
    /// advertising only the features the child has and the bridge forwards.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut result = self.negotiate_initialize(&request)?;
        let child = self
            .upstream
            .with_child(|p| async move { Ok(p.peer_info()) })
            .await?;
        if let Some(child) = child {
            if let Some(info) = child.server_info.clone() {
                result.server_info = info;
            }
            result.instructions = child.instructions.clone();
            let theirs = &child.capabilities;
            let ours = &mut result.capabilities;
            if theirs.tools.is_none() {
                ours.tools = None;
            }
            if theirs.resources.is_none() {
                ours.resources = None;
            }
            if theirs.prompts.is_none() {
                ours.prompts = None;
            }
        }
        Ok(result)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let allowed = effective(&ctx);
        let mut result = self
            .upstream
            .with_child(|p| async move { p.list_tools(request).await })
            .await?;
        result
            .tools
            .retain(|t| self.policy.may_call(&allowed, &t.name));
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.policy.may_call(&effective(&ctx), &request.name) {
            return Err(ErrorData::invalid_request(
                "the token may not call this tool",
                None,
            ));
        }
        self.upstream
            .with_child(|p| async move { p.call_tool_once(request).await })
            .await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.upstream
            .with_child(|p| async move { p.list_resources(request).await })
            .await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.upstream
            .with_child(|p| async move { p.read_resource_once(request).await })
            .await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.upstream
            .with_child(|p| async move { p.list_prompts(request).await })
            .await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        self.upstream
            .with_child(|p| async move { p.get_prompt_once(request).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_would_for_simple_cases() {
        assert_eq!(
            split_command("npx -y pkg stdio").unwrap(),
            ["npx", "-y", "pkg", "stdio"]
        );
        assert_eq!(
            split_command(r#"node "my dir/s.js" 'a b'"#).unwrap(),
            ["node", "my dir/s.js", "a b"]
        );
        assert_eq!(split_command(r#"x """#).unwrap(), ["x", ""]);
        assert!(split_command("  ").is_err());
        assert!(split_command("x \"open").is_err());
    }
}
