//! The built-in demo MCP server: tools `echo`, `add`, `current_time`, `add_note`,
//! `list_notes`, `whoami`; the resource `notes://all`; the prompt `summarize_notes`.
//!
//! The bearer layer has already authorized each request; this server additionally hides
//! the tools a token may not call from `tools/list` and refuses them in `tools/call`.

use std::sync::{Arc, Mutex};

use rmcp::handler::server::common::Extension;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, ListPromptsResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, Prompt, PromptMessage, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, Role, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_router};
use serde::Deserialize;

use crate::clock::Clock;
use crate::resource::Identity;
use crate::resource::policy::ScopePolicy;

const NOTES_URI: &str = "notes://all";

/// Notes shared by every session of the built-in server.
#[derive(Debug, Clone, Default)]
pub struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    fn add(&self, text: String) -> usize {
        match self.0.lock() {
            Ok(mut notes) => {
                notes.push(text);
                notes.len()
            }
            Err(_) => 0,
        }
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// `echo` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// The text to send back.
    pub message: String,
}

/// `add` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    /// First addend.
    pub a: f64,
    /// Second addend.
    pub b: f64,
}

/// `add_note` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NoteArgs {
    /// The note.
    pub text: String,
}

/// One instance per MCP session.
#[derive(Clone)]
pub struct BuiltinServer {
    notes: Notes,
    policy: Arc<ScopePolicy>,
    clock: Arc<dyn Clock>,
    /// Built once for the process: a stateless request makes a server of its own, and the
    /// tools' descriptions and schemas are the same for all.
    tool_router: Arc<ToolRouter<Self>>,
}

#[tool_router]
impl BuiltinServer {
    /// A server over shared notes.
    pub fn new(notes: Notes, policy: Arc<ScopePolicy>, clock: Arc<dyn Clock>) -> Self {
        Self {
            notes,
            policy,
            clock,
            tool_router: Self::shared_tool_router(),
        }
    }

    fn shared_tool_router() -> Arc<ToolRouter<Self>> {
        static ROUTER: std::sync::LazyLock<Arc<ToolRouter<BuiltinServer>>> =
            std::sync::LazyLock::new(|| Arc::new(BuiltinServer::tool_router()));
        ROUTER.clone()
    }

    #[tool(description = "Echo a message back")]
    fn echo(&self, Parameters(EchoArgs { message }): Parameters<EchoArgs>) -> String {
        message
    }

    #[tool(description = "Add two numbers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "The current time in UTC (RFC 3339)")]
    fn current_time(&self) -> String {
        let now = self.clock.now();
        time::OffsetDateTime::from_unix_timestamp(now as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| now.to_string())
    }

    #[tool(description = "Store a note (needs mcp:write)")]
    fn add_note(&self, Parameters(NoteArgs { text }): Parameters<NoteArgs>) -> String {
        let n = self.notes.add(text);
        format!("note {n} stored")
    }

    #[tool(description = "List stored notes")]
    fn list_notes(&self) -> String {
        let notes = self.notes.all();
        if notes.is_empty() {
            "no notes".to_string()
        } else {
            notes.join("\n")
        }
    }

    #[tool(description = "Who the caller is: the token's subject, client and scopes")]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        match parts.extensions.get::<Identity>() {
            Some(id) => {
                let mut who = serde_json::json!({
                    "sub": id.sub,
                    "client_id": id.client_id,
                    "scopes": id.scopes,
                });
                // A person who signed in through an identity provider.
                for (k, v) in [("email", &id.email), ("name", &id.name)] {
                    if let (Some(v), Some(obj)) = (v, who.as_object_mut()) {
                        obj.insert(k.into(), v.clone().into());
                    }
                }
                who.to_string()
            }
            None => "{}".to_string(),
        }
    }
}

impl BuiltinServer {
    /// Whether this request may use `tool`. Over HTTP the bearer layer put the identity in
    /// the request; without HTTP (served on stdio, behind another gateway) there is no
    /// token and the policy is the caller's business.
    fn may_call(&self, ctx: &RequestContext<RoleServer>, tool: &str) -> bool {
        if ctx.extensions.get::<http::request::Parts>().is_none() {
            return true;
        }
        self.policy.may_call(&super::effective_scopes(ctx), tool)
    }
}

impl ServerHandler for BuiltinServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new(
            "mcp-oauth-gateway",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "Demo tools behind OAuth 2.1: echo, add, current_time, add_note, list_notes, whoami.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools: Vec<Tool> = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| self.may_call(&ctx, &t.name))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.may_call(&ctx, &request.name) {
            return Err(super::tool_refused());
        }
        self.tool_router
            .call(ToolCallContext::new(self, request, ctx))
            .await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut notes = Resource::new(NOTES_URI, "notes");
        notes.description = Some("Every note stored with add_note".into());
        notes.mime_type = Some("text/plain".into());
        Ok(ListResourcesResult::with_all_items(vec![notes]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != NOTES_URI {
            return Err(ErrorData::resource_not_found("no such resource", None));
        }
        let text = self.notes.all().join("\n");
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(
            vec![ResourceContents::text(text, NOTES_URI)],
        )))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "summarize_notes",
            Some("Ask the model to summarize the stored notes"),
            None,
        )]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "summarize_notes" {
            return Err(ErrorData::invalid_params("no such prompt", None));
        }
        let text = format!("Summarize these notes:\n{}", self.notes.all().join("\n"));
        Ok(GetPromptResponse::Complete(GetPromptResult::new(vec![
            PromptMessage::new_text(Role::User, text),
        ])))
    }
}
