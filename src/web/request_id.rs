//! The request id: the proxy gives every request an `X-Request-Id` (keeping a client's
//! when it is short and plain), the backends answer with it in scope
//! ([`request_id_scope`], [`current_request_id`]), so error bodies can name it and an
//! operator can find the request in the logs.

use std::hash::BuildHasher as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The request id header (parsed once: the proxy looks it up on every request).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: Option<String>;
}

/// A client's request id is kept if it is short and plain.
fn is_sane(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The `X-Request-Id` of a request, when it is short and plain (the proxy sets one on
/// every request it forwards; a request sent straight to a backend may have none).
pub fn request_id_of(headers: &HeaderMap) -> Option<String> {
    sane_request_id(headers).map(str::to_string)
}

/// The request's `X-Request-Id` as text, when it is short and plain.
fn sane_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
}

/// The proxy's side: the request's own id when it is sane, else a fresh one, set on the
/// request as its one `X-Request-Id` (any other line the client sent is dropped) so the
/// backend sees it. Returns the id (a clone of the header value shares its bytes, for the
/// response).
pub fn assign(headers: &mut HeaderMap) -> HeaderValue {
    let id = match sane_request_id(headers) {
        Some(_) => headers.get(&REQUEST_ID).cloned(),
        None => HeaderValue::from_str(&fresh_id()).ok(),
    }
    .unwrap_or(HeaderValue::from_static("-"));
    headers.insert(&REQUEST_ID, id.clone());
    id
}

/// A new request id: 12 bytes, base64url (16 characters). A counter keyed through SipHash
/// with a key drawn from the operating system once per process: unique within the process,
/// unrelated across processes and replicas, and not to be guessed from the ids before it.
/// An id is not a secret; drawing from the system's generator for each one cost more than
/// half a microsecond a request.
fn fresh_id() -> String {
    static KEY: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&KEY.hash_one((n, 0u8)).to_le_bytes());
    bytes[8..].copy_from_slice(&KEY.hash_one((n, 1u8)).to_le_bytes()[..4]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Middleware: answer the request with its request id in scope, for
/// [`current_request_id`].
pub async fn request_id_scope(req: Request, next: Next) -> Response {
    let id = request_id_of(req.headers());
    with_request_id(id, next.run(req)).await
}

/// Run `work` with `id` as the current request id.
pub async fn with_request_id<T>(id: Option<String>, work: impl Future<Output = T>) -> T {
    CURRENT.scope(id, work).await
}

/// The request id of the request being answered, inside [`request_id_scope`].
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_request_id_is_in_scope_only_inside() {
        assert_eq!(current_request_id(), None);
        let inside = with_request_id(Some("rid-9".into()), async { current_request_id() }).await;
        assert_eq!(inside.as_deref(), Some("rid-9"));
    }

    #[test]
    fn only_plain_request_ids_are_taken() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id_of(&h), None);
        h.insert("x-request-id", HeaderValue::from_static("abc-1.2:3_4"));
        assert_eq!(request_id_of(&h).as_deref(), Some("abc-1.2:3_4"));
        h.insert("x-request-id", HeaderValue::from_static("a b"));
        assert_eq!(request_id_of(&h), None);
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(request_id_of(&h), None);
    }

    #[test]
    fn the_proxy_keeps_a_sane_id_and_replaces_any_other() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("mine-1"));
        assert_eq!(assign(&mut h), "mine-1");
        // The backend sees one id, whatever else the client sent beside it.
        h.append("x-request-id", HeaderValue::from_static("second line"));
        assert_eq!(assign(&mut h), "mine-1");
        assert_eq!(h.get_all(&REQUEST_ID).iter().count(), 1);
        h.insert("x-request-id", HeaderValue::from_static("not sane"));
        let fresh = assign(&mut h);
        let fresh = fresh.to_str().unwrap();
        assert!(is_sane(fresh) && fresh != "not sane");
        assert_eq!(h.get(&REQUEST_ID).unwrap(), fresh);
    }

    #[test]
    fn fresh_ids_are_distinct_and_plain() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16 && is_sane(id)));
    }
}
