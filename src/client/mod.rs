//! The client side: `mcp-oauth-gateway client URL [tools | call TOOL k=v ...]`.
//!
//! Talks to any MCP server the way the MCP authorization specification asks a client to:
//! on 401 it discovers the authorization server (RFC 9728, RFC 8414 / OIDC), picks a client
//! identity (configured, client ID metadata document, dynamic registration), runs the
//! authorization code grant with PKCE S256 through a loopback redirect (or the client
//! credentials grant), caches the tokens per issuer, refreshes them, and steps up on
//! `insufficient_scope`. Then it lists tools or calls one.
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
    #[arg(long, env = "MCP_CLIENT_ID")]
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

/// Run the `client` command; failures are one line on stderr and exit code 1.
pub async fn run(args: ClientArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-oauth-gateway client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `run` does, for callers that want the error.
pub async fn run_inner(args: ClientArgs) -> Result<(), ClientError> {
    let url = Url::parse(&args.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ClientError::Usage(format!("{:?} is not an http(s) URL", args.url)))?;
    let call = match &args.action {
        Some(Action::Call { tool, args }) => Some((tool.clone(), parse_arguments(args)?)),
        _ => None,
    };
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
    let auth = Auth::new(&http, cache, opts, &url);
    let mut session = mcp::Session::new(&http, auth, url);
    let result = async {
        session.initialize().await?;
        match call {
            Some((tool, arguments)) => {
                let result = session
                    .request(
                        "tools/call",
                        serde_json::json!({"name": tool, "arguments": arguments}),
                    )
                    .await?;
                print_call_result(&tool, &result)
            }
            None => {
                let result = session.request("tools/list", serde_json::json!({})).await?;
                print_tools(&result);
                Ok(())
            }
        }
    }
    .await;
    session.close().await;
    result
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

fn print_tools(result: &Value) {
    for tool in result["tools"].as_array().into_iter().flatten() {
        let name = tool["name"].as_str().unwrap_or("?");
        match tool["description"].as_str().and_then(|d| d.lines().next()) {
            Some(desc) if !desc.is_empty() => println!("{name}: {desc}"),
            _ => println!("{name}"),
        }
    }
}

fn print_call_result(tool: &str, result: &Value) -> Result<(), ClientError> {
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
    if result["isError"].as_bool() == Some(true) {
        return Err(ClientError::Mcp(format!(
            "the tool {tool} reported an error"
        )));
    }
    Ok(())
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
}
