//! MCP over streamable HTTP, as a client: JSON-RPC POSTs answered with JSON or an SSE
//! stream, `Mcp-Session-Id` and `MCP-Protocol-Version` once initialized, and the bearer
//! token from [`Auth`], which handles every 401 and 403 on the way.

use reqwest::Method;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use url::Url;

use super::ClientError;
use super::auth::Auth;
use super::discovery::parse_challenge;
use super::http::{Body, Http};

/// Protocol versions this client speaks, newest first; the first is what it asks for.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// One MCP session.
pub struct Session<'a> {
    http: &'a Http,
    auth: Auth<'a>,
    url: Url,
    session_id: Option<String>,
    protocol: Option<String>,
    next_id: u64,
    /// The progress token of the request in flight, when it asked for progress.
    progress_token: Option<u64>,
    /// Progress as JSON lines (`--json`) rather than text; stderr either way.
    json: bool,
}

impl<'a> Session<'a> {
    pub fn new(http: &'a Http, auth: Auth<'a>, url: Url, json: bool) -> Self {
        Self {
            http,
            auth,
            url,
            session_id: None,
            protocol: None,
            next_id: 1,
            progress_token: None,
            json,
        }
    }

    /// The authorization state (for `token`).
    pub fn auth(&self) -> &Auth<'a> {
        &self.auth
    }

    /// `initialize`, then `notifications/initialized`.
    pub async fn initialize(&mut self) -> Result<Value, ClientError> {
        let result = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSIONS[0],
                    "capabilities": {},
                    "clientInfo": {
                        "name": "mcp-oauth-gateway-client",
                        "version": env!("CARGO_PKG_VERSION"),
                    },
                }),
            )
            .await?;
        let version = result["protocolVersion"].as_str().unwrap_or_default();
        if !PROTOCOL_VERSIONS.contains(&version) {
            return Err(ClientError::Protocol(format!(
                "the server speaks MCP protocol version {version:?}, which this client does not"
            )));
        }
        self.protocol = Some(version.to_string());
        self.exchange(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            None,
        )
        .await?;
        Ok(result)
    }

    /// A request; its result, or the JSON-RPC error as [`ClientError::Mcp`].
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let reply = self
            .exchange(body, Some(id))
            .await?
            .ok_or_else(|| ClientError::Protocol(format!("the server did not answer {method}")))?;
        if let Some(err) = reply.get("error") {
            return Err(ClientError::Mcp(format!(
                "{} ({})",
                err["message"].as_str().unwrap_or("error"),
                err["code"]
            )));
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// A request that asks for progress (`_meta.progressToken`, the request's id) and
    /// prints each `notifications/progress` for it on stderr as it arrives.
    pub async fn request_with_progress(
        &mut self,
        method: &str,
        mut params: Value,
    ) -> Result<Value, ClientError> {
        let token = self.next_id;
        if let Some(obj) = params.as_object_mut() {
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("progressToken".into(), json!(token));
            }
        }
        self.progress_token = Some(token);
        let result = self.request(method, params).await;
        self.progress_token = None;
        result
    }

    /// One progress notification, if it is for the request in flight: a line on stderr.
    fn progress(&self, params: &Value) {
        let Some(token) = self.progress_token else {
            return;
        };
        let ours = params["progressToken"].as_u64() == Some(token)
            || params["progressToken"].as_str() == Some(token.to_string().as_str());
        if !ours {
            return;
        }
        let (progress, total, message) = (
            &params["progress"],
            &params["total"],
            params["message"].as_str(),
        );
        if self.json {
            let mut line = json!({"progress": progress});
            if !total.is_null() {
                line["total"] = total.clone();
            }
            if let Some(m) = message {
                line["message"] = json!(m);
            }
            eprintln!("{line}");
        } else {
            let mut line = format!("progress: {progress}");
            if !total.is_null() {
                line.push_str(&format!("/{total}"));
            }
            if let Some(m) = message {
                // One line per notification, whatever the server put in its message.
                let m: String = m.chars().filter(|c| !c.is_control()).collect();
                line.push_str(&format!(" {m}"));
            }
            eprintln!("{line}");
        }
    }

    /// End the session (DELETE, when the server gave one); failures do not matter.
    pub async fn close(&mut self) {
        let Some(sid) = self.session_id.clone() else {
            return;
        };
        let mut headers = vec![("mcp-session-id", sid)];
        if let Some(t) = self.auth.token().await {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        if let Some(p) = &self.protocol {
            headers.push(("mcp-protocol-version", p.clone()));
        }
        let _ = self
            .http
            .fetch(Method::DELETE, &self.url, &headers, Body::Empty)
            .await;
    }

    /// POST one message, authorizing as the server asks; the response to `id`, if any.
    async fn exchange(
        &mut self,
        body: Value,
        id: Option<u64>,
    ) -> Result<Option<Value>, ClientError> {
        let mut unauthorized = 0;
        loop {
            let token = self.auth.token().await;
            let mut headers = vec![("accept", "application/json, text/event-stream".to_string())];
            if let Some(t) = &token {
                headers.push(("authorization", format!("Bearer {t}")));
            }
            if let Some(s) = &self.session_id {
                headers.push(("mcp-session-id", s.clone()));
            }
            if let Some(p) = &self.protocol {
                headers.push(("mcp-protocol-version", p.clone()));
            }
            let res = self
                .http
                .send(Method::POST, &self.url, &headers, Body::Json(body.clone()))
                .await?;
            let status = res.status();
            let challenge = parse_challenge(
                res.headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            if status == StatusCode::UNAUTHORIZED {
                self.drain(res).await;
                unauthorized += 1;
                if unauthorized > 2 {
                    return Err(ClientError::Unauthorized(
                        "the server still refuses the new token".into(),
                    ));
                }
                // First a refresh of a rejected token, then a new authorization.
                self.auth
                    .unauthorized(challenge.as_ref(), token.is_some() && unauthorized == 1)
                    .await?;
                continue;
            }
            if status == StatusCode::FORBIDDEN {
                self.drain(res).await;
                match challenge {
                    Some(c) if c.error.as_deref() == Some("insufficient_scope") => {
                        self.auth.insufficient_scope(&c).await?;
                        continue;
                    }
                    _ => {
                        return Err(ClientError::Forbidden(
                            "HTTP 403 from the MCP server".into(),
                        ));
                    }
                }
            }
            if let Some(sid) = res
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                self.session_id = Some(sid.to_string());
            }
            let is_sse = res
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
            if !status.is_success() {
                let headers = res.headers().clone();
                let text = res.bytes().await.unwrap_or_default();
                self.http.trace_body(&headers, &text);
                let message = serde_json::from_slice::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Err(ClientError::Protocol(format!(
                    "HTTP {status} from the MCP server{message}"
                )));
            }
            let Some(id) = id else {
                self.drain(res).await;
                return Ok(None);
            };
            return if is_sse {
                self.read_sse(res, id).await.map(Some)
            } else {
                let headers = res.headers().clone();
                let bytes = res
                    .bytes()
                    .await
                    .map_err(|e| ClientError::network("reading the MCP response", e))?;
                self.http.trace_body(&headers, &bytes);
                let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
                    ClientError::Protocol("the MCP server's answer is not JSON".into())
                })?;
                Ok(Some(v))
            };
        }
    }

    async fn drain(&self, res: reqwest::Response) {
        let headers = res.headers().clone();
        if let Ok(bytes) = res.bytes().await {
            self.http.trace_body(&headers, &bytes);
        }
    }

    /// Read SSE events until the response to `id` (servers may send notifications first,
    /// and may keep the stream open after it).
    async fn read_sse(&self, mut res: reqwest::Response, id: u64) -> Result<Value, ClientError> {
        let headers = res.headers().clone();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = res
                .chunk()
                .await
                .map_err(|e| ClientError::network("reading the MCP event stream", e))?;
            let Some(chunk) = chunk else {
                return Err(ClientError::Protocol(
                    "the MCP event stream ended without a response".into(),
                ));
            };
            self.http.trace_body(&headers, &chunk);
            buf.extend(chunk.iter().filter(|b| **b != b'\r'));
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) else {
                    continue;
                };
                if v["id"].as_u64() == Some(id)
                    && (v.get("result").is_some() || v.get("error").is_some())
                {
                    return Ok(v);
                }
                if v["method"] == "notifications/progress" {
                    self.progress(&v["params"]);
                }
            }
        }
    }
}
