//! The authorization server's errors: RFC 6749 §5.2 codes plus those of RFC 7591 §3.2.2
//! and RFC 8707 §2, each rendered as the standard JSON body with `Cache-Control: no-store`,
//! plus a `request_id` member (the `X-Request-Id` the proxy set; RFC 6749 §5.2 lets
//! responses carry more members) so a user's report can be matched with the logs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered by a token, registration or revocation endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// A parameter is missing, repeated, malformed or unsupported.
    #[error("{0}")]
    InvalidRequest(String),
    /// Client authentication failed. `basic` is true when the client used HTTP auth.
    #[error("{message}")]
    InvalidClient {
        /// Description.
        message: String,
        /// Whether to answer 401 with `WWW-Authenticate: Basic`.
        basic: bool,
    },
    /// The grant (code, refresh token) is invalid, expired, revoked or not this client's.
    #[error("{0}")]
    InvalidGrant(String),
    /// The client may not use this grant type.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// The grant type is not supported.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// The scope is unknown or exceeds what was granted.
    #[error("{0}")]
    InvalidScope(String),
    /// The `resource` is not one this server protects (RFC 8707).
    #[error("{0}")]
    InvalidTarget(String),
    /// A redirect URI is not acceptable (RFC 7591).
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// Other client metadata is not acceptable (RFC 7591).
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// Too many requests from this source.
    #[error("too many requests; retry after {0} seconds")]
    TooManyRequests(u64),
    /// Storage is unavailable (a full disk, a read-only database): try again later.
    #[error("temporarily unavailable; try again shortly")]
    TemporarilyUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Our fault. The cause is logged, never shown.
    #[error("internal error")]
    ServerError(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The JSON error body (RFC 6749 §5.2).
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The code.
    pub error: &'static str,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// The request id, when the request had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl OAuthError {
    /// The RFC code.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Self::InvalidClientMetadata(_) => "invalid_client_metadata",
            Self::TooManyRequests(_) => "slow_down",
            Self::TemporarilyUnavailable(_) => "temporarily_unavailable",
            Self::ServerError(_) => "server_error",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidClient { basic: true, .. } => StatusCode::UNAUTHORIZED,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ServerError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Wrap an internal failure. A storage failure a retry can get past (the store is
    /// unavailable, or a concurrent change won) is a 503, not a 500; a corrupt record is a
    /// 500 like any other fault of ours.
    pub fn server(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        use crate::store::StoreError;
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        match boxed.downcast_ref::<StoreError>() {
            Some(StoreError::Unavailable(_) | StoreError::Conflict(_)) => {
                Self::TemporarilyUnavailable(boxed)
            }
            Some(StoreError::Corrupt(_)) | None => Self::ServerError(boxed),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        match &self {
            Self::ServerError(cause) => {
                tracing::error!(error = %cause, "authorization server error")
            }
            Self::TemporarilyUnavailable(cause) => {
                tracing::error!(error = %cause, "storage unavailable")
            }
            _ => {}
        }
        let description = match &self {
            Self::ServerError(_) | Self::TemporarilyUnavailable(_) => None,
            other => Some(other.to_string()),
        };
        let body = ErrorBody {
            error: self.error_code(),
            error_description: description,
            request_id: crate::web::request_id::current_request_id(),
        };
        let mut res = (self.status(), axum::Json(body)).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Self::InvalidClient { basic: true, .. } = self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mcp-oauth-gateway\""),
            );
        }
        if let Self::TemporarilyUnavailable(_) = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Self::TooManyRequests(secs) = self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code_and_status() {
        let cases: Vec<(OAuthError, &str, u16)> = vec![
            (
                OAuthError::InvalidRequest("x".into()),
                "invalid_request",
                400,
            ),
            (
                OAuthError::InvalidClient {
                    message: "x".into(),
                    basic: false,
                },
                "invalid_client",
                400,
            ),
            (
                OAuthError::InvalidClient {
                    message: "x".into(),
                    basic: true,
                },
                "invalid_client",
                401,
            ),
            (OAuthError::InvalidGrant("x".into()), "invalid_grant", 400),
            (
                OAuthError::UnauthorizedClient("x".into()),
                "unauthorized_client",
                400,
            ),
            (
                OAuthError::UnsupportedGrantType("x".into()),
                "unsupported_grant_type",
                400,
            ),
            (OAuthError::InvalidScope("x".into()), "invalid_scope", 400),
            (OAuthError::InvalidTarget("x".into()), "invalid_target", 400),
            (
                OAuthError::InvalidRedirectUri("x".into()),
                "invalid_redirect_uri",
                400,
            ),
            (
                OAuthError::InvalidClientMetadata("x".into()),
                "invalid_client_metadata",
                400,
            ),
            (OAuthError::TooManyRequests(3), "slow_down", 429),
            (
                OAuthError::server(std::io::Error::other("disk")),
                "server_error",
                500,
            ),
            (
                OAuthError::server(crate::store::StoreError::Unavailable("read-only".into())),
                "temporarily_unavailable",
                503,
            ),
            (
                OAuthError::server(crate::store::StoreError::Conflict("taken".into())),
                "temporarily_unavailable",
                503,
            ),
            (
                OAuthError::server(crate::store::StoreError::Corrupt("a Grant record".into())),
                "server_error",
                500,
            ),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.error_code(), code);
            assert_eq!(err.status().as_u16(), status, "{code}");
        }
    }

    #[tokio::test]
    async fn bodies_name_the_request_id_when_there_is_one() {
        let body = |res: Response| async {
            let bytes = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let res = crate::web::request_id::with_request_id(Some("rid-7".into()), async {
            OAuthError::InvalidGrant("x".into()).into_response()
        })
        .await;
        let v = body(res).await;
        assert_eq!(v["error"], "invalid_grant");
        assert_eq!(v["request_id"], "rid-7");
        let v = body(OAuthError::InvalidGrant("x".into()).into_response()).await;
        assert!(v.get("request_id").is_none(), "no id, no member: {v}");
    }

    #[test]
    fn responses_are_not_cacheable_and_hide_internals() {
        let res = OAuthError::server(std::io::Error::other("secret path /x")).into_response();
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let res = OAuthError::InvalidClient {
            message: "x".into(),
            basic: true,
        }
        .into_response();
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
