//! Forwarding authorized MCP traffic to an existing streamable-HTTP MCP server
//! (`--upstream URL`). Sessions, SSE streams and DELETE pass through; `Host` is the
//! upstream's (SDK servers check it); the client's token never leaves the gateway —
//! the upstream may get its own static headers and the verified identity in headers the
//! operator names. `tools/list` answers are filtered to what the token may call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use url::Url;

use crate::clock::Clock;
use crate::config::IdentityHeaders;
use crate::idp::vault::Vault;
use crate::metrics::Metrics;
use crate::proxy::hop::{self, SendError, TlsClient};
use crate::resource::policy::ScopePolicy;
use crate::resource::{Identity, JsonRpcId, JsonRpcMethods};

/// Largest `tools/list` answer the gateway will buffer to filter.
const MAX_LIST_BODY: usize = 8 * 1024 * 1024;

/// Why an upstream URL is unusable.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{url}`: {message}")]
pub struct UpstreamError {
    url: String,
    message: String,
}

/// The upstream connector's state.
#[derive(Clone)]
pub struct Upstream {
    scheme: &'static str,
    authority: String,
    path: String,
    client: TlsClient,
    static_headers: HeaderMap,
    identity: IdentityHeaders,
    policy: Arc<ScopePolicy>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Where the person's identity-provider token comes from, for
    /// `identity_headers.upstream_token`.
    vault: Option<(Arc<Vault>, Arc<dyn Clock>)>,
}

impl Upstream {
    /// A connector to `url`: http, or https under `tls` (whom to trust, which client
    /// certificate to show; see [`crate::roots::client_config`]), with SNI and `Host` from
    /// the URL.
    pub fn new(
        url: &str,
        tls: rustls::ClientConfig,
        static_headers: &BTreeMap<String, String>,
        identity: IdentityHeaders,
        policy: Arc<ScopePolicy>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let bad = |message: &str| UpstreamError {
            url: url.to_string(),
            message: message.to_string(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = match parsed.scheme() {
            "http" => "http",
            "https" => "https",
            _ => return Err(bad("only http:// and https:// upstreams are supported")),
        };
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut headers = HeaderMap::new();
        for (k, v) in static_headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|_| bad("bad header name"))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| bad("bad header value"))?;
            headers.insert(name, value);
        }
        Ok(Self {
            scheme,
            authority,
            path: parsed.path().to_string(),
            client: hop::tls_client(tls),
            static_headers: headers,
            identity,
            policy,
            timeout,
            metrics,
            vault: None,
        })
    }

    /// Send the person's identity-provider token as `identity_headers.upstream_token`,
    /// from `vault` (refreshed there when it is about to expire).
    pub fn with_vault(mut self, vault: Arc<Vault>, clock: Arc<dyn Clock>) -> Self {
        if self.identity.upstream_token.is_some() && vault.enabled() {
            self.vault = Some((vault, clock));
        }
        self
    }

    /// The connector as a service for the resource router.
    pub fn into_router(self) -> Router {
        Router::new().fallback(forward).with_state(self)
    }
}

fn jsonrpc_failure(status: StatusCode, id: &Value, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Keep only the tools `allowed` says yes to in a `tools/list` result.
pub fn filter_tools(message: &mut Value, allowed: impl Fn(&str) -> bool) {
    if let Some(tools) = message
        .pointer_mut("/result/tools")
        .and_then(Value::as_array_mut)
    {
        tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(&allowed));
    }
}

/// Filter a buffered answer, JSON or SSE, leaving anything unparsable untouched.
fn filter_body(bytes: &[u8], is_sse: bool, allowed: impl Fn(&str) -> bool + Copy) -> Vec<u8> {
    if !is_sse {
        return match serde_json::from_slice::<Value>(bytes) {
            Ok(mut v) => {
                filter_tools(&mut v, allowed);
                serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec())
            }
            Err(_) => bytes.to_vec(),
        };
    }
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (content, newline) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        match content.strip_prefix("data:").map(str::trim_start) {
            Some(data) if !data.is_empty() => match serde_json::from_str::<Value>(data) {
                Ok(mut v) => {
                    filter_tools(&mut v, allowed);
                    out.push_str("data: ");
                    out.push_str(&v.to_string());
                    out.push_str(newline);
                }
                Err(_) => out.push_str(line),
            },
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

fn set_header(headers: &mut HeaderMap, name: &Option<String>, value: &str) {
    if let Some(name) = name
        && let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value),
        )
    {
        headers.insert(n, v);
    }
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let identity = parts.extensions.get::<Identity>().cloned();
    let id = parts
        .extensions
        .get::<JsonRpcId>()
        .map_or(Value::Null, |i| i.0.clone());
    let lists_tools = parts
        .extensions
        .get::<JsonRpcMethods>()
        .is_some_and(|m| m.0.iter().any(|x| x == "tools/list"));
    let pq = match parts.uri.query() {
        Some(q) => format!("{}?{q}", up.path),
        None => up.path.clone(),
    };
    if hop::retarget(&mut parts, up.scheme, &up.authority, &pq).is_err() {
        return jsonrpc_failure(StatusCode::BAD_REQUEST, &id, "invalid request target");
    }
    let h = &mut parts.headers;
    h.remove(header::AUTHORIZATION);
    h.remove(header::COOKIE);
    // Identity headers come from the gateway only: drop any the client sent.
    for name in [
        &up.identity.subject,
        &up.identity.scopes,
        &up.identity.client_id,
        &up.identity.email,
        &up.identity.name,
        &up.identity.upstream_token,
    ]
    .into_iter()
    .flatten()
    {
        h.remove(name.as_str());
    }
    if let Some(id) = &identity {
        // Names and emails may be beyond ASCII: percent-encoded as UTF-8.
        let text = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::CONTROLS).to_string()
        };
        if let Some(email) = &id.email {
            set_header(h, &up.identity.email, &text(email));
        }
        if let Some(name) = &id.name {
            set_header(h, &up.identity.name, &text(name));
        }
        if let Some((vault, clock)) = &up.vault {
            match vault.access_token(&id.sub, clock.now()).await {
                Some(token) => {
                    let bearer = up
                        .identity
                        .upstream_token
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case("authorization"));
                    let value = if bearer {
                        format!("Bearer {token}")
                    } else {
                        token
                    };
                    set_header(h, &up.identity.upstream_token, &value);
                }
                None => {
                    tracing::debug!(sub = %id.sub, "no identity-provider token for this person")
                }
            }
        }
        set_header(h, &up.identity.subject, &id.sub);
        set_header(h, &up.identity.scopes, &id.scopes.join(" "));
        set_header(
            h,
            &up.identity.client_id,
            id.client_id.as_deref().unwrap_or(""),
        );
    }
    for (k, v) in &up.static_headers {
        h.insert(k.clone(), v.clone());
    }
    let sent = hop::send(&up.client, up.timeout, Request::from_parts(parts, body)).await;
    let res = match sent {
        Ok(res) => res,
        Err(SendError::Unreachable(e)) => {
            up.metrics.upstream_error();
            // The cause (refused, a certificate that does not verify, ...) is in the chain.
            let mut why = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                why.push_str(": ");
                why.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::warn!(upstream = %up.authority, error = %why, "upstream unreachable");
            return jsonrpc_failure(
                StatusCode::BAD_GATEWAY,
                &id,
                "upstream MCP server unavailable",
            );
        }
        Err(SendError::TimedOut) => {
            up.metrics.upstream_error();
            return jsonrpc_failure(
                StatusCode::GATEWAY_TIMEOUT,
                &id,
                "upstream MCP server timed out",
            );
        }
    };
    let Some(who) = identity.filter(|_| lists_tools && res.status().is_success()) else {
        return res;
    };
    let (mut parts, body) = res.into_parts();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let Ok(bytes) = axum::body::to_bytes(body, MAX_LIST_BODY).await else {
        return jsonrpc_failure(
            StatusCode::BAD_GATEWAY,
            &id,
            "upstream tools/list answer unreadable",
        );
    };
    let policy = &up.policy;
    let filtered = filter_body(&bytes, is_sse, |name| policy.may_call(&who.effective, name));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(filtered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_list_is_filtered_in_json_and_sse() {
        let allowed = |n: &str| n != "secret";
        let json =
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"secret"}]}}"#;
        let out: Value = serde_json::from_slice(&filter_body(json, false, allowed)).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
        let sse = b"id: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"secret\"},{\"name\":\"a\"}]}}\n\n";
        let out = String::from_utf8(filter_body(sse, true, allowed)).unwrap();
        assert!(out.starts_with("id: 1\ndata: "));
        assert!(out.contains("\"a\"") && !out.contains("secret"));
        assert!(out.ends_with("\n\n"));
        assert_eq!(filter_body(b"not json", false, allowed), b"not json");
    }

    #[test]
    fn only_http_upstreams() {
        let p = Arc::new(ScopePolicy::from_config(
            &crate::config::ScopeConfig::default(),
        ));
        let new = |u: &str| {
            Upstream::new(
                u,
                crate::roots::client_config(None, None).unwrap(),
                &BTreeMap::new(),
                IdentityHeaders::default(),
                p.clone(),
                Duration::from_secs(1),
                Arc::new(Metrics::new()),
            )
        };
        assert!(new("http://127.0.0.1:9/mcp").is_ok());
        assert!(new("https://x/mcp").is_ok());
        assert!(new("ftp://x/mcp").is_err());
        assert!(new("not a url").is_err());
    }
}
