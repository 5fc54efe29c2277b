//! A stdio MCP server behind the gateway, passed through message for message: one child per
//! MCP session, spoken to in raw JSON-RPC lines. Requests and notifications from the client
//! go to the child unchanged (with their `_meta`, so progress tokens survive); the child's
//! answers come back unchanged; what the child sends on its own (progress, logging, list
//! changes, resource updates, and requests such as sampling, elicitation and roots) goes
//! to the client's session, and the client's answers go back to the child under the id the
//! child chose. The gateway adds only what it must: the tool policy (`tools/list` shows
//! what the token may call, `tools/call` refuses the rest) and the session's lifecycle
//! (the child starts with the session's `initialize` and is killed when the session ends).
//!
//! rmcp serves the streamable-HTTP side (SSE streams, protocol negotiation; sessions are
//! [`super::sessions::Sessions`]); this module is the handler it calls for each message,
//! which forwards every method rmcp knows and, through its custom-request hook, every
//! method it does not.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[allow(deprecated)] // logging/setLevel's parameters: still what 2025 clients send
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult,
    CustomNotification, CustomRequest, CustomResult, ErrorCode, GetPromptRequestParams,
    GetPromptResponse, InitializeRequestParams, InitializeResult, InputRequiredResult,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig, ServerNotification, ServerRequest,
    SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, ServiceError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, oneshot};

use crate::resource::policy::ScopePolicy;

/// The client's side of the session, once it has sent a request: where the child's own
/// messages go.
type PeerSlot = Arc<Mutex<Option<Peer<RoleServer>>>>;

/// Lines to the child, and the requests the gateway is waiting on.
struct Conn {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next_id: AtomicU64,
}

impl Conn {
    async fn send(&self, message: &Value) -> Result<(), ErrorData> {
        let mut line = serde_json::to_vec(message)
            .map_err(|_| ErrorData::internal_error("unserializable message", None))?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        written.await.map_err(|e| {
            tracing::warn!(error = %e, "writing to the stdio upstream failed");
            gone()
        })
    }

    fn answer_to(&self, id: u64) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id, tx);
        }
        rx
    }

    fn answered(&self, id: u64) -> Option<oneshot::Sender<Value>> {
        self.waiting.lock().ok()?.remove(&id)
    }
}

fn gone() -> ErrorData {
    ErrorData::internal_error("upstream MCP server exited", None)
}

/// The child of one session; killed when the session (this value) goes.
struct Running {
    conn: Arc<Conn>,
    _child: tokio::process::Child,
}

/// One MCP session's passthrough to its own child.
pub struct Passthrough {
    argv: Arc<Vec<String>>,
    env: Arc<Vec<(String, OsString)>>,
    policy: Arc<ScopePolicy>,
    running: OnceCell<Running>,
    peer: PeerSlot,
    /// The child's answer to `initialize`.
    info: Mutex<Option<InitializeResult>>,
    /// Whether the child has been through `initialize` (the client's, or ours for a client
    /// that sends none: 2026-07-28 clients put their details in each request's `_meta`).
    handshake: OnceCell<()>,
}

impl Passthrough {
    /// A session's passthrough to `argv` (started on the session's first request) with
    /// exactly the environment `env`.
    pub fn new(
        argv: Arc<Vec<String>>,
        env: Arc<Vec<(String, OsString)>>,
        policy: Arc<ScopePolicy>,
    ) -> Self {
        Self {
            argv,
            env,
            policy,
            running: OnceCell::new(),
            peer: Arc::default(),
            info: Mutex::new(None),
            handshake: OnceCell::new(),
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, ErrorData> {
        let running = self
            .running
            .get_or_try_init(|| async {
                spawn(&self.argv, &self.env, self.peer.clone()).map_err(|e| {
                    tracing::warn!(command = %self.argv[0], error = %e, "stdio upstream failed to start");
                    ErrorData::internal_error("upstream MCP server unavailable", None)
                })
            })
            .await?;
        Ok(running.conn.clone())
    }
}

fn spawn(argv: &[String], env: &[(String, OsString)], peer: PeerSlot) -> std::io::Result<Running> {
    let mut child = super::stdio::command(argv, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the child's pipes are missing"));
    };
    let name = argv[0].clone();
    if let Some(stderr) = child.stderr.take() {
        super::stdio::log_stderr(stderr, name.clone());
    }
    let conn = Arc::new(Conn {
        stdin: tokio::sync::Mutex::new(stdin),
        waiting: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    tokio::spawn(read_child(stdout, conn.clone(), peer, name.clone()));
    tracing::info!(command = %name, "stdio upstream started for a session");
    Ok(Running {
        conn,
        _child: child,
    })
}

/// Everything the child writes, routed: answers to whoever waits for them, its own
/// requests and notifications to the client.
async fn read_child(
    stdout: tokio::process::ChildStdout,
    conn: Arc<Conn>,
    peer: PeerSlot,
    name: String,
) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(command = %name, "the stdio upstream wrote a line that is not JSON-RPC; ignored");
            continue;
        };
        let messages = match value {
            Value::Array(batch) => batch,
            one => vec![one],
        };
        for message in messages {
            route(message, &conn, &peer).await;
        }
    }
    // The child is gone: whoever still waits gets an error, not a hang.
    if let Ok(mut w) = conn.waiting.lock() {
        w.clear();
    }
    tracing::info!(command = %name, "stdio upstream of a session exited");
}

async fn route(message: Value, conn: &Arc<Conn>, peer: &PeerSlot) {
    let Some(method) = message.get("method").cloned() else {
        // An answer to one of ours.
        if let Some(tx) = message
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| conn.answered(id))
        {
            let _ = tx.send(message);
        }
        return;
    };
    let Some(peer) = peer.lock().ok().and_then(|p| p.clone()) else {
        return;
    };
    let mut body = json!({ "method": method });
    if let Some(params) = message.get("params") {
        body["params"] = params.clone();
    }
    match message.get("id").cloned() {
        // The child asks the client something (sampling, elicitation, roots, ping): the
        // client's answer goes back under the child's own id.
        Some(id) => {
            let conn = conn.clone();
            tokio::spawn(async move {
                let answer = match serde_json::from_value::<ServerRequest>(body) {
                    Ok(request) => match peer.send_request(request).await {
                        Ok(result) => {
                            json!({"jsonrpc": "2.0", "id": id, "result": serde_json::to_value(result).unwrap_or(Value::Null)})
                        }
                        Err(ServiceError::McpError(e)) => {
                            json!({"jsonrpc": "2.0", "id": id, "error": e})
                        }
                        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": {
                            "code": ErrorCode::INTERNAL_ERROR.0, "message": e.to_string()}}),
                    },
                    Err(_) => json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": ErrorCode::INVALID_PARAMS.0, "message": "not a request the client understands"}}),
                };
                let _ = conn.send(&answer).await;
            });
        }
        None => {
            if let Ok(notification) = serde_json::from_value::<ServerNotification>(body) {
                // In order: a progress notification must not overtake the answer.
                let _ = peer.send_notification(notification).await;
            }
        }
    }
}

impl Passthrough {
    /// Send `method` with `params` (and the request's `_meta`, which rmcp moved into the
    /// context) to the child, and wait for its answer: the raw `result`, or its error.
    /// A client that cancels gets the cancellation passed on.
    async fn call(
        &self,
        method: &str,
        params: Option<Value>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Value, ErrorData> {
        if let Ok(mut p) = self.peer.lock() {
            *p = Some(ctx.peer.clone());
        }
        let conn = self.conn().await?;
        if method != "initialize" {
            self.handshake
                .get_or_try_init(|| self.initialize_for(&conn, ctx))
                .await?;
        }
        let mut params = params.unwrap_or_else(|| json!({}));
        let meta = serde_json::to_value(&ctx.meta).unwrap_or(Value::Null);
        if meta.as_object().is_some_and(|m| !m.is_empty())
            && let Some(p) = params.as_object_mut()
        {
            p.insert("_meta".into(), meta);
        }
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if params.as_object().is_none_or(|p| !p.is_empty()) {
            message["params"] = params;
        }
        let answer = conn.answer_to(id);
        conn.send(&message).await?;
        let answer = tokio::select! {
            a = answer => a.map_err(|_| gone())?,
            () = ctx.ct.cancelled() => {
                conn.answered(id);
                let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": id, "reason": "cancelled by the client"}});
                let _ = conn.send(&cancel).await;
                return Err(ErrorData::internal_error("cancelled", None));
            }
        };
        if let Some(error) = answer.get("error") {
            return Err(serde_json::from_value(error.clone()).unwrap_or_else(|_| {
                ErrorData::internal_error("the upstream answered with a malformed error", None)
            }));
        }
        Ok(answer.get("result").cloned().unwrap_or_else(|| json!({})))
    }

    /// The handshake a stdio server needs before anything else, for a client that sent no
    /// `initialize`: in its name (from the request's `_meta`) where it gave one.
    async fn initialize_for(
        &self,
        conn: &Conn,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let version = ctx
            .meta
            .protocol_version()
            .map_or_else(|| "2025-11-25".to_string(), |v| v.to_string());
        let client = ctx.meta.client_info().map_or_else(
            || json!({"name": "mcp-oauth-gateway", "version": env!("CARGO_PKG_VERSION")}),
            |c| serde_json::to_value(c).unwrap_or(Value::Null),
        );
        let capabilities = serde_json::to_value(&ctx.meta)
            .ok()
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities").cloned())
            .unwrap_or_else(|| json!({}));
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let answer = conn.answer_to(id);
        conn.send(
            &json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": capabilities, "clientInfo": client}}),
        )
        .await?;
        let answer = answer.await.map_err(|_| gone())?;
        if answer.get("error").is_some() {
            return Err(ErrorData::internal_error(
                "the upstream refused to initialize",
                None,
            ));
        }
        conn.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
    }

    /// [`Self::call`] with typed parameters and result.
    async fn typed<P: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        params: Option<&P>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<T, ErrorData> {
        let params = match params {
            Some(p) => Some(
                serde_json::to_value(p)
                    .map_err(|_| ErrorData::internal_error("unserializable request", None))?,
            ),
            None => None,
        };
        decode(method, self.call(method, params, ctx).await?)
    }

    async fn notify(&self, method: &str, params: Option<Value>) {
        let Some(running) = self.running.get() else {
            return;
        };
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            message["params"] = p;
        }
        let _ = running.conn.send(&message).await;
    }
}

/// A result that asks the client for input first (`resultType: "input_required"`).
fn input_required(result: &Value) -> Option<InputRequiredResult> {
    (result.get("resultType").and_then(Value::as_str) == Some("input_required"))
        .then(|| serde_json::from_value(result.clone()).ok())
        .flatten()
}

fn decode<T: DeserializeOwned>(method: &str, result: Value) -> Result<T, ErrorData> {
    serde_json::from_value(result).map_err(|e| {
        tracing::warn!(%method, error = %e, "the stdio upstream's answer does not fit the method");
        ErrorData::internal_error(
            format!("the upstream's answer to {method} is malformed"),
            None,
        )
    })
}

fn params_of<T: Serialize>(p: &T) -> Option<Value> {
    serde_json::to_value(p).ok()
}

// resources/subscribe and logging/setLevel are legacy, and still what 2025 clients send.
#[allow(deprecated)]
impl ServerHandler for Passthrough {
    async fn ping(&self, ctx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.call("ping", None, &ctx).await.map(|_| ())
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        ctx.peer.set_peer_info(request.clone());
        let result: InitializeResult = self.typed("initialize", Some(&request), &ctx).await?;
        let _ = self.handshake.set(());
        if let Ok(mut info) = self.info.lock() {
            *info = Some(result.clone());
        }
        Ok(result)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.typed("completion/complete", Some(&request), &ctx)
            .await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.call("logging/setLevel", params_of(&request), &ctx)
            .await
            .map(|_| ())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let result: Value = self.typed("prompts/get", Some(&request), &ctx).await?;
        Ok(match input_required(&result) {
            Some(r) => GetPromptResponse::InputRequired(r),
            None => GetPromptResponse::Complete(decode("prompts/get", result)?),
        })
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.typed("prompts/list", request.as_ref(), &ctx).await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.typed("resources/list", request.as_ref(), &ctx).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.typed("resources/templates/list", request.as_ref(), &ctx)
            .await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let result: Value = self.typed("resources/read", Some(&request), &ctx).await?;
        Ok(match input_required(&result) {
            Some(r) => ReadResourceResponse::InputRequired(r),
            None => ReadResourceResponse::Complete(decode("resources/read", result)?),
        })
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.call("resources/subscribe", params_of(&request), &ctx)
            .await
            .map(|_| ())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.call("resources/unsubscribe", params_of(&request), &ctx)
            .await
            .map(|_| ())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        super::check_tool_call(&self.policy, &ctx, &request.name)?;
        let result: Value = self.typed("tools/call", Some(&request), &ctx).await?;
        if let Some(r) = input_required(&result) {
            return Ok(CallToolResponse::InputRequired(r));
        }
        if result.get("resultType").and_then(Value::as_str) == Some("task") {
            return Ok(CallToolResponse::Task(decode("tools/call", result)?));
        }
        Ok(CallToolResponse::Complete(decode("tools/call", result)?))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let allowed = super::effective_scopes(&ctx);
        let mut result: ListToolsResult = self.typed("tools/list", request.as_ref(), &ctx).await?;
        result
            .tools
            .retain(|t| self.policy.may_call(&allowed, &t.name));
        Ok(result)
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let CustomRequest { method, params, .. } = request;
        self.call(&method, params, &ctx).await.map(CustomResult)
    }

    async fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        _ctx: NotificationContext<RoleServer>,
    ) {
        self.notify("notifications/progress", params_of(&notification))
            .await;
    }

    async fn on_initialized(&self, _ctx: NotificationContext<RoleServer>) {
        self.notify("notifications/initialized", None).await;
    }

    async fn on_roots_list_changed(&self, _ctx: NotificationContext<RoleServer>) {
        self.notify("notifications/roots/list_changed", None).await;
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _ctx: NotificationContext<RoleServer>,
    ) {
        let CustomNotification { method, params, .. } = notification;
        self.notify(&method, params).await;
    }

    /// What the child said it is, once it has; what rmcp needs before then.
    fn get_info(&self) -> ServerConfig {
        match self.info.lock().ok().and_then(|i| i.clone()) {
            Some(info) => info,
            None => ServerConfig::new(ServerCapabilities::default()),
        }
    }
}
