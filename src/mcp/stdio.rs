//! A stdio MCP server behind the gateway (`--upstream-cmd "COMMAND ARGS"`): one child
//! process shared by every session, spoken to as an MCP client (rmcp), re-spawned with
//! backoff when it dies, killed when the gateway stops; its stderr goes to the log. Our
//! own MCP server in front of it serves streamable HTTP and applies the tool policy:
//! `tools/list` shows only what the token may call, `tools/call` refuses the rest.

use std::ffi::OsString;
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

use crate::resource::policy::ScopePolicy;

type Child = RunningService<RoleClient, ()>;

/// Why a command line is unusable.
#[derive(Debug, thiserror::Error)]
#[error("upstream command: {0}")]
pub struct CommandError(String);

impl CommandError {
    /// An error saying `what`.
    pub fn new(what: &str) -> Self {
        Self(what.to_string())
    }
}

/// Why the child could not be (re)started; logged, never shown to MCP clients.
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    /// The process could not be started (no such program, not executable, ...).
    #[error("cannot start `{command}`: {source}")]
    Start {
        /// The program.
        command: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The process started but did not answer `initialize` as an MCP server.
    #[error("`{command}` did not complete the MCP handshake: {source}")]
    Handshake {
        /// The program.
        command: String,
        /// What the MCP client said (boxed: it is large, and rare).
        source: Box<rmcp::service::ClientInitializeError>,
    },
}

/// Variables a child gets from the gateway's environment whenever they are set there.
pub const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// The gateway's own settings and secrets live in variables with this prefix; a child never
/// gets one, even when the configuration names it.
const GATEWAY_PREFIX: &str = "MCP_GATEWAY_";

/// The whole environment of an `--upstream-cmd` child: [`BASE_ENV`] and `upstream_env.pass`
/// as far as `lookup` (the gateway's environment) has them, then `upstream_env.set`. Nothing
/// else of the gateway's environment reaches the child. Naming an `MCP_GATEWAY_*` variable
/// or one of `secret_names` (where the gateway reads its own secrets) is a configuration
/// error.
pub fn child_env(
    config: &crate::config::UpstreamEnv,
    secret_names: &[&str],
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, OsString)>, CommandError> {
    let forbidden = |name: &str| {
        name.to_ascii_uppercase().starts_with(GATEWAY_PREFIX)
            || secret_names.iter().any(|s| !s.is_empty() && *s == name)
    };
    let named = config.pass.iter().chain(config.set.keys());
    if let Some(name) = named.clone().find(|n| forbidden(n)) {
        return Err(CommandError(format!(
            "upstream_env may not name `{name}`: the gateway's own variables never reach the child"
        )));
    }
    if let Some(name) = named
        .clone()
        .find(|n| n.is_empty() || n.contains(['=', '\0']))
    {
        return Err(CommandError(format!(
            "upstream_env: `{name}` is not a variable name"
        )));
    }
    let mut env: Vec<(String, OsString)> = Vec::new();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(config.pass.iter().map(String::as_str))
    {
        if env.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Some(value) = lookup(name) {
            env.push((name.to_string(), value));
        }
    }
    for (name, value) in &config.set {
        env.retain(|(n, _)| n != name);
        env.push((name.clone(), OsString::from(value)));
    }
    Ok(env)
}

/// The command `argv` with exactly the environment `env`: the gateway's own (its secrets
/// included) never reaches the child, and the child dies with its handle.
pub(crate) fn command(argv: &[String], env: &[(String, OsString)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    cmd
}

/// Every line the child writes to stderr, into the log (target `upstream_stderr`).
pub(crate) fn log_stderr(stderr: tokio::process::ChildStderr, name: String) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "upstream_stderr", command = %name, "{line}");
        }
    });
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
    env: Vec<(String, OsString)>,
    slot: Mutex<Slot>,
}

impl StdioUpstream {
    /// An upstream running `command` (started on first use) with exactly the environment
    /// `env` (see [`child_env`]).
    pub fn new(command: &str, env: Vec<(String, OsString)>) -> Result<Arc<Self>, CommandError> {
        Ok(Arc::new(Self {
            argv: crate::config::command_words(command)
                .ok_or_else(|| CommandError("an unclosed quote or an empty command".into()))?,
            env,
            slot: Mutex::new(Slot {
                child: None,
                last_spawn: None,
                failures: 0,
            }),
        }))
    }

    async fn spawn(&self) -> Result<Child, SpawnError> {
        let (transport, stderr) = TokioChildProcess::builder(command(&self.argv, &self.env))
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SpawnError::Start {
                command: self.argv[0].clone(),
                source,
            })?;
        if let Some(stderr) = stderr {
            log_stderr(stderr, self.argv[0].clone());
        }
        ().serve(transport)
            .await
            .map_err(|source| SpawnError::Handshake {
                command: self.argv[0].clone(),
                source: Box::new(source),
            })
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
        let allowed = super::effective_scopes(&ctx);
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
        super::check_tool_call(&self.policy, &ctx, &request.name)?;
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

    #[tokio::test]
    async fn a_failed_start_says_whether_the_program_ran() {
        let missing = StdioUpstream::new("/nonexistent/mcp-server --stdio", Vec::new()).unwrap();
        match missing.spawn().await {
            Err(SpawnError::Start { command, source }) => {
                assert_eq!(command, "/nonexistent/mcp-server");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            Err(other) => panic!("expected a start failure, got {other}"),
            Ok(_) => panic!("a missing program started"),
        }
        // Runs, but exits without answering `initialize`.
        let silent = StdioUpstream::new("/bin/sh -c 'exit 0'", Vec::new()).unwrap();
        match silent.spawn().await {
            Err(e @ SpawnError::Handshake { .. }) => {
                assert!(
                    e.to_string()
                        .starts_with("`/bin/sh` did not complete the MCP handshake")
                );
            }
            Err(other) => panic!("expected a handshake failure, got {other}"),
            Ok(_) => panic!("`exit 0` completed an MCP handshake"),
        }
    }

    #[test]
    fn children_get_only_the_allowed_environment() {
        let gateway_env = |name: &str| {
            [
                ("PATH", "/bin"),
                ("HOME", "/home/g"),
                ("LANG", "C.UTF-8"),
                ("MCP_GATEWAY_SHARED_SECRET", "s3cret"),
                ("APP_SECRET", "s3cret"),
                ("UNRELATED", "x"),
                ("WANTED", "w"),
            ]
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| OsString::from(v))
        };
        let mut config = crate::config::UpstreamEnv {
            pass: vec!["WANTED".into(), "ABSENT".into(), "PATH".into()],
            ..Default::default()
        };
        config.set.insert("FIXED".into(), "f".into());
        config.set.insert("LANG".into(), "en_GB.UTF-8".into());
        let env = child_env(&config, &["APP_SECRET"], gateway_env).unwrap();
        let got: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("PATH", "/bin"),
                ("HOME", "/home/g"),
                ("WANTED", "w"),
                ("FIXED", "f"),
                ("LANG", "en_GB.UTF-8"),
            ]
        );
        for bad in [
            "MCP_GATEWAY_SHARED_SECRET",
            "mcp_gateway_x",
            "APP_SECRET",
            "A=B",
            "",
        ] {
            let c = crate::config::UpstreamEnv {
                pass: vec![bad.into()],
                ..Default::default()
            };
            assert!(
                child_env(&c, &["APP_SECRET"], gateway_env).is_err(),
                "{bad}"
            );
            let mut c = crate::config::UpstreamEnv::default();
            c.set.insert(bad.into(), "v".into());
            assert!(
                child_env(&c, &["APP_SECRET"], gateway_env).is_err(),
                "{bad}"
            );
        }
    }
}
