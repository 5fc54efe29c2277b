//! RFC 6750 §3 bearer errors with the MCP additions: every 401 and 403 carries
//! `resource_metadata` (RFC 9728 §5.1) and a `scope`. The JSON body is a
//! JSON-RPC error so MCP clients can show it; its `data.request_id` names the request (the
//! `X-Request-Id` the proxy set) for matching a user's report with the logs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A JSON-RPC 2.0 error body answering no particular request, with the request id (when
/// there is one) in `data`.
pub fn jsonrpc_error_body(code: i64, message: &str) -> Value {
    jsonrpc_error_reply(Value::Null, code, message)
}

/// A JSON-RPC 2.0 error answering the request with id `id` (null when it could not be
/// read), with the HTTP request id (when there is one) in `data`.
pub fn jsonrpc_error_reply(id: Value, code: i64, message: &str) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(rid) = crate::web::request_id::current_request_id() {
        error["data"] = json!({ "request_id": rid });
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// The RFC 6750 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerErrorCode {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 401: the token is missing a valid signature, expired, revoked, or for another audience.
    InvalidToken,
    /// 403: the token lacks a scope the request needs.
    InsufficientScope,
}

impl BearerErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The status RFC 6750 §3.1 assigns.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
        }
    }
}

/// A refusal by the resource server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerError {
    /// `None` when no token was presented (RFC 6750 §3.1: then no error code).
    pub code: Option<BearerErrorCode>,
    /// Human-readable, never containing the token.
    pub description: Option<String>,
    /// Scopes to ask for (space separated).
    pub scope: String,
    /// URL of the protected resource metadata.
    pub resource_metadata: String,
}

fn quote(value: &str) -> String {
    // Quoted-string: drop characters that cannot appear in it.
    value
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

impl BearerError {
    /// The `WWW-Authenticate` header value.
    pub fn challenge(&self) -> String {
        let mut parts = Vec::with_capacity(4);
        if let Some(code) = self.code {
            parts.push(format!("error=\"{}\"", code.as_str()));
        }
        if let Some(d) = &self.description {
            parts.push(format!("error_description=\"{}\"", quote(d)));
        }
        parts.push(format!(
            "resource_metadata=\"{}\"",
            quote(&self.resource_metadata)
        ));
        if !self.scope.is_empty() {
            parts.push(format!("scope=\"{}\"", quote(&self.scope)));
        }
        format!("Bearer {}", parts.join(", "))
    }

    /// The status: 401 when no token was presented.
    pub fn status(&self) -> StatusCode {
        self.code
            .map_or(StatusCode::UNAUTHORIZED, BearerErrorCode::status)
    }
}

impl IntoResponse for BearerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self
            .description
            .clone()
            .unwrap_or_else(|| "authorization required".to_string());
        let code = match status {
            StatusCode::BAD_REQUEST => -32600,
            _ => -32001,
        };
        let body = jsonrpc_error_body(code, &message);
        let mut res = (status, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.challenge()) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: Option<BearerErrorCode>) -> BearerError {
        BearerError {
            code,
            description: None,
            scope: "mcp:read".into(),
            resource_metadata: "http://h/.well-known/oauth-protected-resource/mcp".into(),
        }
    }

    #[test]
    fn missing_token_challenge_has_metadata_and_scope_but_no_error() {
        let e = err(None);
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            e.challenge(),
            "Bearer resource_metadata=\"http://h/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:read\""
        );
    }

    #[test]
    fn status_per_code() {
        assert_eq!(
            err(Some(BearerErrorCode::InvalidRequest)).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            err(Some(BearerErrorCode::InvalidToken)).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            err(Some(BearerErrorCode::InsufficientScope)).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn insufficient_scope_challenge() {
        let mut e = err(Some(BearerErrorCode::InsufficientScope));
        e.scope = "mcp:write".into();
        let c = e.challenge();
        assert!(c.starts_with("Bearer error=\"insufficient_scope\""));
        assert!(c.contains("scope=\"mcp:write\""));
        assert!(c.contains("resource_metadata="));
    }

    #[tokio::test]
    async fn bodies_name_the_request_id_in_data() {
        let res = crate::web::request_id::with_request_id(Some("rid-3".into()), async {
            err(Some(BearerErrorCode::InvalidToken)).into_response()
        })
        .await;
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        let bytes = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], -32001);
        assert_eq!(v["error"]["data"]["request_id"], "rid-3");
        assert!(
            jsonrpc_error_body(-32600, "x")["error"]
                .get("data")
                .is_none()
        );
    }

    #[test]
    fn quotes_cannot_break_the_header() {
        let mut e = err(Some(BearerErrorCode::InvalidToken));
        e.description = Some("bad \"x\"\r\ny".into());
        assert!(e.challenge().contains("error_description=\"bad xy\""));
    }
}
