//! A bounded in-memory trace of recent proxied requests, for debugging a client's flow
//! (`--debug-trace`). Paths only, never query strings; credentials redacted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

/// One proxied request.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEntry {
    /// Increasing id.
    pub id: u64,
    /// HTTP method.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Which backend the route table chose.
    pub backend: &'static str,
    /// Its address.
    pub backend_addr: String,
    /// Status returned to the client.
    pub status: u16,
    /// Time until the response head, milliseconds.
    pub duration_ms: f64,
    /// Request headers, redacted.
    pub request_headers: BTreeMap<String, String>,
    /// Response headers, redacted.
    pub response_headers: BTreeMap<String, String>,
}

/// Header values as shown in the trace: credentials are never shown.
pub fn redacted_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let v = value.to_str().unwrap_or("[binary]");
            let shown = match name.as_str() {
                "authorization" | "proxy-authorization" | "cookie" | "set-cookie" => {
                    "[redacted]".to_string()
                }
                "mcp-session-id" => format!("{}…", v.chars().take(4).collect::<String>()),
                // Redirects carry codes and state in their query.
                "location" | "referer" => match v.split_once('?') {
                    Some((before, _)) => format!("{before}?[redacted]"),
                    None => v.to_string(),
                },
                _ => v.to_string(),
            };
            (name.as_str().to_string(), shown)
        })
        .collect()
}

/// The ring of recent entries.
#[derive(Debug)]
pub struct RequestTrace {
    capacity: usize,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<TraceEntry>>,
}

impl RequestTrace {
    /// A ring keeping the last `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            next_id: AtomicU64::new(1),
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Record one request; the id is assigned here.
    pub fn record(&self, mut entry: TraceEntry) {
        entry.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() == self.capacity {
                entries.pop_front();
            }
            entries.push_back(entry);
        }
    }

    /// Entries with an id above `since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<TraceEntry> {
        self.entries
            .lock()
            .map(|e| e.iter().filter(|x| x.id > since).cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
struct SinceQuery {
    #[serde(default)]
    since: u64,
}

/// The trace endpoint's router (404 unless tracing is on).
pub fn router(trace: Option<Arc<RequestTrace>>) -> Router {
    Router::new()
        .route(crate::web::routes::DEBUG_REQUESTS, get(requests_get))
        .with_state(trace)
}

async fn requests_get(
    State(trace): State<Option<Arc<RequestTrace>>>,
    Query(query): Query<SinceQuery>,
) -> Response {
    match &trace {
        Some(trace) => {
            axum::Json(serde_json::json!({ "requests": trace.since(query.since) })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "request tracing is off; start with --debug-trace",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn entry() -> TraceEntry {
        TraceEntry {
            id: 0,
            method: "GET".into(),
            path: "/".into(),
            backend: "mcp",
            backend_addr: "x".into(),
            status: 200,
            duration_ms: 0.0,
            request_headers: BTreeMap::new(),
            response_headers: BTreeMap::new(),
        }
    }

    #[test]
    fn ring_is_bounded_and_filters_by_id() {
        let t = RequestTrace::new(3);
        for _ in 0..5 {
            t.record(entry());
        }
        let ids: Vec<u64> = t.since(0).iter().map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(t.since(4).len(), 1);
    }

    #[test]
    fn credentials_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer secret-token"),
        );
        h.insert("cookie", HeaderValue::from_static("a=b"));
        h.insert("mcp-session-id", HeaderValue::from_static("0123456789"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "location",
            HeaderValue::from_static("http://127.0.0.1/cb?code=abc&state=x"),
        );
        let r = redacted_headers(&h);
        assert_eq!(r["location"], "http://127.0.0.1/cb?[redacted]");
        assert_eq!(r["authorization"], "[redacted]");
        assert_eq!(r["cookie"], "[redacted]");
        assert_eq!(r["mcp-session-id"], "0123…");
        assert_eq!(r["content-type"], "application/json");
    }
}
