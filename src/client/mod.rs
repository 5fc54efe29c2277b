//! The client side: `mcp-oauth-gateway client [--json] URL [tools | call TOOL k=v ... |
//! resources [read URI] | prompts [get NAME k=v ...] | token | logout]`.
//!
//! Talks to any MCP server the way the MCP authorization specification asks a client to:
//! on 401 it discovers the authorization server (RFC 9728, RFC 8414 / OIDC), picks a client
//! identity (configured, client ID metadata document, dynamic registration), runs the
//! authorization code grant with PKCE S256 through a loopback redirect (or the client
//! credentials grant), caches the tokens per issuer, refreshes them, and steps up on
//! `insufficient_scope` (saying on stderr why it asks again). Then it lists tools, resources
//! or prompts, calls a tool (printing its progress on stderr), reads a resource, gets a
//! prompt, prints the access token for scripts, or logs out (RFC 7009 revocation and the
//! cache forgotten). `--json` prints one JSON document on stdout instead of text.
//!
//! - [`http`]: the HTTP client and the redacted `--verbose` trace.
//! - [`discovery`]: challenges and metadata.
//! - [`oauth`]: registration, grants, client authentication, the loopback listener.
//! - [`auth`]: when to refresh, authorize or step up.
//! - [`cache`]: the 0600 token cache.
//! - [`mcp`]: the streamable HTTP session.

pub mod auth;
pub mod cache;
pub mod discovery;
pub mod http;
pub mod mcp;
pub mod oauth;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use auth::{Auth, AuthOptions};
use oauth::{ClientKey, Interaction};

/// Talk to an MCP server as an OAuth client.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The MCP server's URL, e.g. http://127.0.0.1:3002/mcp.
    pub url: String,
    /// What to do (default: list tools).
    #[command(subcommand)]
    pub action: Option<Action>,
    /// A client registered in advance (skips registration).
    #[arg(long, env = "MCP_CLIENT_ID", allow_hyphen_values = true)]
    pub client_id: Option<String>,
    /// The secret of --client-id (a confidential client); prefer the environment variable.
    #[arg(long, env = "MCP_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// A PEM private key: authenticate --client-id with private_key_jwt (RFC 7523).
    #[arg(long, value_name = "FILE")]
    pub client_assertion_key: Option<PathBuf>,
    /// The client ID metadata document URL to use as client_id where the server supports it.
    #[arg(long, value_name = "URL")]
    pub client_metadata_url: Option<String>,
    /// The grant: the authorization code flow for a user, client credentials for a service;
    /// `auto` takes client credentials only for a client with a secret or key at a server
    /// that offers no authorization code grant.
    #[arg(long, value_enum, default_value_t = GrantChoice::Auto)]
    pub grant: GrantChoice,
    /// Scopes to request (default: what the server's challenge or metadata asks for).
    #[arg(long)]
    pub scope: Option<String>,
    /// Where tokens and registrations are kept (default $XDG_CACHE_HOME/mcp-oauth-gateway,
    /// else ~/.cache/mcp-oauth-gateway).
    #[arg(long, env = "MCP_CLIENT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Complete the authorization without a browser: request the authorization URL and
    /// follow its redirects (for servers that approve without asking a person).
    #[arg(long, alias = "no-browser")]
    pub headless: bool,
    /// Open the authorization URL with xdg-open.
    #[arg(long, conflicts_with = "headless")]
    pub open: bool,
    /// Seconds to wait for the browser to come back.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub auth_timeout: u64,
    /// Trace every HTTP exchange on stderr (secrets redacted).
    #[arg(long, short)]
    pub verbose: bool,
    /// Print one JSON document on stdout (progress as JSON lines on stderr) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What the client does once connected.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// List the server's tools.
    Tools,
    /// Call a tool: arguments as key=value, values parsed as JSON when they parse.
    Call {
        /// The tool's name.
        tool: String,
        /// Its arguments; `n=3` and `flags=[1,2]` are JSON, `msg=hello` a string.
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// List the server's resources, or read one.
    Resources {
        #[command(subcommand)]
        action: Option<ResourcesAction>,
    },
    /// List the server's prompts, or get one.
    Prompts {
        #[command(subcommand)]
        action: Option<PromptsAction>,
    },
    /// Print a valid access token for the server (refreshed or obtained as needed) on
    /// stdout, e.g. for `curl -H "Authorization: Bearer $(... token)"`.
    Token,
    /// Forget the cached tokens for the server, revoking them at the authorization server
    /// when it offers a revocation endpoint (RFC 7009).
    Logout,
}

/// `resources` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ResourcesAction {
    /// List the resources (the default).
    List,
    /// Read a resource.
    Read {
        /// The resource's URI, e.g. notes://all.
        uri: String,
    },
}

/// `prompts` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PromptsAction {
    /// List the prompts (the default).
    List,
    /// Get a prompt, its arguments as key=value (strings).
    Get {
        /// The prompt's name.
        name: String,
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
}

/// The grant to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GrantChoice {
    Auto,
    AuthorizationCode,
    ClientCredentials,
}

/// Why a command failed; every message is one line and carries no secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Network {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    OAuth(String),
    /// An OAuth error answer (RFC 6749 §5.2) from one of the server's endpoints.
    #[error("{endpoint} endpoint: {detail}")]
    Refused {
        endpoint: String,
        /// The `error` code, e.g. `invalid_grant`.
        code: String,
        detail: String,
    },
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("MCP error: {0}")]
    Mcp(String),
    #[error("token cache: {0}")]
    Cache(String),
    #[error("the system's random number generator failed")]
    Random,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether this is the OAuth error `code` from an endpoint.
    pub fn is_oauth(&self, code: &str) -> bool {
        matches!(self, Self::Refused { code: c, .. } if c == code)
    }

    /// A network error, without the URL reqwest would print (it may hold a code).
    pub fn network(what: &str, e: reqwest::Error) -> Self {
        Self::Network {
            what: what.to_string(),
            source: e.without_url(),
        }
    }
}

/// Run the `client` command; failures are one line on stderr (and `{"error": ...}` on
/// stdout with `--json`) and exit code 1.
pub async fn run(args: ClientArgs) -> ExitCode {
    let json = args.json;
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"error": e.to_string()}));
            }
            eprintln!("mcp-oauth-gateway client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the command asks of the server, with its arguments parsed.
enum Request {
    Tools,
    Call(String, Map<String, Value>),
    Resources,
    ReadResource(String),
    Prompts,
    GetPrompt(String, Map<String, Value>),
    Token,
    Logout,
}

impl Request {
    fn parse(action: &Option<Action>) -> Result<Self, ClientError> {
        Ok(match action {
            None | Some(Action::Tools) => Self::Tools,
            Some(Action::Call { tool, args }) => Self::Call(tool.clone(), parse_arguments(args)?),
            Some(Action::Resources { action }) => match action {
                None | Some(ResourcesAction::List) => Self::Resources,
                Some(ResourcesAction::Read { uri }) => Self::ReadResource(uri.clone()),
            },
            Some(Action::Prompts { action }) => match action {
                None | Some(PromptsAction::List) => Self::Prompts,
                Some(PromptsAction::Get { name, args }) => {
                    // Prompt arguments are strings (MCP `prompts/get`), whatever they look like.
                    let mut map = Map::new();
                    for pair in args {
                        let (k, v) = pair.split_once('=').ok_or_else(|| {
                            ClientError::Usage(format!("argument {pair:?} is not key=value"))
                        })?;
                        map.insert(k.to_string(), Value::String(v.to_string()));
                    }
                    Self::GetPrompt(name.clone(), map)
                }
            },
            Some(Action::Token) => Self::Token,
            Some(Action::Logout) => Self::Logout,
        })
    }
}

/// What `run` does, for callers that want the error.
pub async fn run_inner(args: ClientArgs) -> Result<(), ClientError> {
    let url = Url::parse(&args.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ClientError::Usage(format!("{:?} is not an http(s) URL", args.url)))?;
    let request = Request::parse(&args.action)?;
    let json = args.json;
    let client_key = match &args.client_assertion_key {
        Some(path) => {
            Some(ClientKey::from_pem(&std::fs::read(path).map_err(|e| {
                ClientError::Usage(format!("{}: {e}", path.display()))
            })?)?)
        }
        None => None,
    };
    if args.client_id.is_none() && (args.client_secret.is_some() || client_key.is_some()) {
        return Err(ClientError::Usage(
            "a client secret or key needs --client-id".into(),
        ));
    }
    let http = http::Http::new(args.verbose)?;
    let cache = cache::Cache::new(args.cache_dir.clone())?;
    let opts = AuthOptions {
        client_id: args.client_id,
        client_secret: args.client_secret,
        client_key,
        client_metadata_url: args.client_metadata_url,
        grant: args.grant,
        scope: args.scope,
        interaction: Interaction {
            headless: args.headless,
            open: args.open,
            timeout: Duration::from_secs(args.auth_timeout),
        },
    };
    let mut auth = Auth::new(&http, cache, opts, &url);
    if let Request::Logout = request {
        let report = auth.logout().await;
        return match &report.revoke_error {
            // With --json the error document is the one thing on stdout.
            Some(e) => {
                if !json {
                    print_logout(&report);
                }
                Err(ClientError::OAuth(format!(
                    "the cached tokens are forgotten, but revoking them failed: {e}"
                )))
            }
            None => {
                if json {
                    println!("{}", serde_json::json!(report));
                } else {
                    print_logout(&report);
                }
                Ok(())
            }
        };
    }
    let mut session = mcp::Session::new(&http, auth, url, json);
    let result = async {
        session.initialize().await?;
        match request {
            Request::Tools => {
                let tools = list_all(&mut session, "tools/list", "tools").await?;
                print_list(&tools, json, "tools", "name");
                Ok(())
            }
            Request::Call(tool, arguments) => {
                let result = session
                    .request_with_progress(
                        "tools/call",
                        serde_json::json!({"name": tool, "arguments": arguments}),
                    )
                    .await?;
                print_call_result(&tool, &result, json)
            }
            Request::Resources => {
                let resources = list_all(&mut session, "resources/list", "resources").await?;
                print_list(&resources, json, "resources", "uri");
                Ok(())
            }
            Request::ReadResource(uri) => {
                let result = session
                    .request("resources/read", serde_json::json!({"uri": uri}))
                    .await?;
                print_resource(&result, json);
                Ok(())
            }
            Request::Prompts => {
                let prompts = list_all(&mut session, "prompts/list", "prompts").await?;
                print_list(&prompts, json, "prompts", "name");
                Ok(())
            }
            Request::GetPrompt(name, arguments) => {
                let result = session
                    .request(
                        "prompts/get",
                        serde_json::json!({"name": name, "arguments": arguments}),
                    )
                    .await?;
                print_prompt(&result, json);
                Ok(())
            }
            Request::Token => {
                // The session's initialize proved the token good (refreshing or
                // authorizing as needed); print that one.
                let tokens = session.auth().tokens().ok_or_else(|| {
                    ClientError::Protocol(
                        "the server accepted the session without a token: there is none to print"
                            .into(),
                    )
                })?;
                print_token(tokens, json);
                Ok(())
            }
            Request::Logout => Ok(()),
        }
    }
    .await;
    session.close().await;
    result
}

/// Pages through a `*/list` method (at most 100 pages); every item of `key`.
async fn list_all(
    session: &mut mcp::Session<'_>,
    method: &str,
    key: &str,
) -> Result<Vec<Value>, ClientError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let params = match &cursor {
            Some(c) => serde_json::json!({"cursor": c}),
            None => serde_json::json!({}),
        };
        let result = session.request(method, params).await?;
        items.extend(result[key].as_array().cloned().unwrap_or_default());
        match result["nextCursor"].as_str() {
            Some(next) if !next.is_empty() && cursor.as_deref() != Some(next) => {
                cursor = Some(next.to_string());
            }
            _ => return Ok(items),
        }
    }
    Err(ClientError::Protocol(format!(
        "{method}: more than 100 pages"
    )))
}

/// `k=v` pairs as a JSON object; a value is JSON when it parses as JSON, else a string.
pub fn parse_arguments(pairs: &[String]) -> Result<Map<String, Value>, ClientError> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("argument {pair:?} is not key=value")))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

/// A list as `{"<key>": [...]}`, or one line per item: its `id_field`, then the first line
/// of its description.
fn print_list(items: &[Value], json: bool, key: &str, id_field: &str) {
    if json {
        let mut doc = Map::new();
        doc.insert(key.to_string(), Value::Array(items.to_vec()));
        println!("{}", Value::Object(doc));
        return;
    }
    for item in items {
        let id = item[id_field].as_str().unwrap_or("?");
        match item["description"].as_str().and_then(|d| d.lines().next()) {
            Some(desc) if !desc.is_empty() => println!("{id}: {desc}"),
            _ => println!("{id}"),
        }
    }
}

fn print_call_result(tool: &str, result: &Value, json: bool) -> Result<(), ClientError> {
    if json {
        println!("{result}");
    } else {
        let content = result["content"].as_array().cloned().unwrap_or_default();
        for item in &content {
            match (item["type"].as_str(), item["text"].as_str()) {
                (Some("text"), Some(text)) => println!("{text}"),
                _ => println!("{item}"),
            }
        }
        if content.is_empty()
            && let Some(s) = result.get("structuredContent")
        {
            println!("{s}");
        }
    }
    if result["isError"].as_bool() == Some(true) {
        return Err(ClientError::Mcp(format!(
            "the tool {tool} reported an error"
        )));
    }
    Ok(())
}

/// `resources/read`: the text of each content, or the whole result as JSON.
fn print_resource(result: &Value, json: bool) {
    if json {
        println!("{result}");
        return;
    }
    for item in result["contents"].as_array().into_iter().flatten() {
        match item["text"].as_str() {
            Some(text) => println!("{text}"),
            None => println!(
                "({}: {} bytes of base64)",
                item["mimeType"].as_str().unwrap_or("binary"),
                item["blob"].as_str().map_or(0, str::len)
            ),
        }
    }
}

/// `prompts/get`: each message as `role: text`, or the whole result as JSON.
fn print_prompt(result: &Value, json: bool) {
    if json {
        println!("{result}");
        return;
    }
    if let Some(d) = result["description"].as_str() {
        println!("# {d}");
    }
    for m in result["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("?");
        match m["content"]["text"].as_str() {
            Some(text) => println!("{role}: {text}"),
            None => println!("{role}: {}", m["content"]),
        }
    }
}

/// The access token alone (for `$(...)`), or with its expiry and scope as JSON. This is
/// the one place a token is printed, and only on stdout.
fn print_token(tokens: &cache::StoredTokens, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "access_token": tokens.access_token,
                "token_type": "Bearer",
                "expires_at": tokens.expires_at,
                "scope": tokens.scope,
                "resource": tokens.resource,
            })
        );
    } else {
        println!("{}", tokens.access_token);
    }
}

fn print_logout(report: &auth::LogoutReport) {
    if !report.had_tokens && report.files_changed == 0 {
        println!("no cached tokens for {}", report.server);
        return;
    }
    match (
        report.revoked,
        &report.revocation_endpoint,
        &report.revoke_error,
    ) {
        (Some(kind), Some(at), _) => println!("revoked the {} at {at}", kind.replace('_', " ")),
        (None, Some(at), Some(_)) => println!("could not revoke the tokens at {at}"),
        (None, None, _) if report.had_tokens => {
            println!("the authorization server offers no revocation endpoint: nothing revoked")
        }
        _ => {}
    }
    println!("forgot the cached tokens for {}", report.server);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_json_when_they_parse() {
        let m = parse_arguments(&[
            "a=1".into(),
            "b=hello".into(),
            "c={\"x\":[true]}".into(),
            "d=\"1\"".into(),
            "e=x=y".into(),
        ])
        .unwrap();
        assert_eq!(m["a"], serde_json::json!(1));
        assert_eq!(m["b"], serde_json::json!("hello"));
        assert_eq!(m["c"], serde_json::json!({"x": [true]}));
        assert_eq!(m["d"], serde_json::json!("1"));
        assert_eq!(m["e"], serde_json::json!("x=y"));
        assert!(parse_arguments(&["novalue".into()]).is_err());
    }

    #[test]
    fn prompt_arguments_stay_strings() {
        let action = Some(Action::Prompts {
            action: Some(PromptsAction::Get {
                name: "p".into(),
                args: vec!["n=3".into(), "s=[1]".into()],
            }),
        });
        let Ok(Request::GetPrompt(name, args)) = Request::parse(&action) else {
            panic!("not a prompts/get");
        };
        assert_eq!(name, "p");
        assert_eq!(args["n"], serde_json::json!("3"));
        assert_eq!(args["s"], serde_json::json!("[1]"));
        let bad = Some(Action::Prompts {
            action: Some(PromptsAction::Get {
                name: "p".into(),
                args: vec!["novalue".into()],
            }),
        });
        assert!(Request::parse(&bad).is_err());
        assert!(matches!(
            Request::parse(&Some(Action::Resources { action: None })),
            Ok(Request::Resources)
        ));
    }

    #[test]
    fn oauth_error_codes_are_matched_exactly() {
        let e = ClientError::Refused {
            endpoint: "token".into(),
            code: "invalid_grant".into(),
            detail: "invalid_grant: expired (HTTP 400 Bad Request)".into(),
        };
        assert!(e.is_oauth("invalid_grant"));
        assert!(!e.is_oauth("invalid_client"));
        assert_eq!(
            e.to_string(),
            "token endpoint: invalid_grant: expired (HTTP 400 Bad Request)"
        );
        assert!(!ClientError::OAuth("invalid_grant".into()).is_oauth("invalid_grant"));
    }
}
