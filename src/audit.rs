//! Security events: each is one [`audit!`] statement that emits a tracing event on the
//! `audit` log target and keeps the event in a bounded ring in memory, which the
//! operator's page reads.
//!
//! An event holds names only: what happened, the client, the user, the source address and
//! the request id. Never a token, code, secret or verifier: the call sites have no such
//! field to give.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::store::{Store, StoredEvent};
use crate::web::client_ip::ClientIp;

/// How many events the page shows.
pub const CAPACITY: usize = 200;

/// Longest client id or user name kept (a metadata-document client id is a URL).
const MAX_NAME: usize = 200;

/// Where a request came from, for the events it causes: the source address (as the rate
/// limits see it: the [`ClientIp`] the router's middleware resolved, believing
/// `X-Forwarded-For` from our loopback proxy and the configured trusted proxies) and the
/// request id the proxy set. Extracting it never fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// The client's address, when the connection's peer is known.
    pub source: Option<IpAddr>,
    /// `X-Request-Id`, when present and plain.
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            source: ClientIp::of(parts),
            request_id: crate::web::request_id::request_id_of(&parts.headers),
        })
    }
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecurityEvent {
    /// When (seconds since the epoch).
    pub at: u64,
    /// What happened: the `event` field of the audit log line.
    pub event: String,
    /// The client concerned.
    pub client_id: Option<String>,
    /// The user concerned.
    pub sub: Option<String>,
    /// Where the request came from.
    pub source: Option<IpAddr>,
    /// The request that caused it.
    pub request_id: Option<String>,
}

/// The last [`CAPACITY`] events; older ones fall out. On a store that replicas share they
/// are kept there, so the operator's page of any replica shows the fleet's events (and, while
/// the store cannot answer, this replica's).
pub struct SecurityEvents {
    capacity: usize,
    ring: Mutex<VecDeque<SecurityEvent>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for SecurityEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityEvents")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for SecurityEvents {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

fn bounded(name: Option<&str>) -> Option<String> {
    name.map(|n| n.chars().take(MAX_NAME).collect())
}

impl SecurityEvents {
    /// A ring keeping `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            store: None,
        }
    }

    /// The last [`CAPACITY`] events, in `store` when it keeps them.
    pub fn in_store(store: Arc<dyn Store>) -> Self {
        Self {
            store: Some(store),
            ..Self::default()
        }
    }

    /// Keep an event, dropping the oldest when full.
    pub fn record(
        &self,
        at: u64,
        event: &'static str,
        client_id: Option<&str>,
        sub: Option<&str>,
        meta: &RequestMeta,
    ) {
        let e = SecurityEvent {
            at,
            event: event.to_string(),
            client_id: bounded(client_id),
            sub: bounded(sub),
            source: meta.source,
            request_id: meta.request_id.clone(),
        };
        if let Some(store) = &self.store {
            let stored = StoredEvent {
                at: e.at,
                event: e.event.clone(),
                client_id: e.client_id.clone(),
                sub: e.sub.clone(),
                source: e.source.map(|ip| ip.to_string()),
                request_id: e.request_id.clone(),
            };
            match store.record_event(&stored, self.capacity) {
                Ok(true) => return,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "keeping a security event in the store failed; kept here")
                }
            }
        }
        if let Ok(mut ring) = self.ring.lock() {
            while ring.len() >= self.capacity.max(1) {
                ring.pop_front();
            }
            ring.push_back(e);
        }
    }

    /// The events kept, newest first.
    pub fn recent(&self) -> Vec<SecurityEvent> {
        if let Some(store) = &self.store {
            match store.recent_events(self.capacity) {
                Ok(Some(events)) => {
                    return events
                        .into_iter()
                        .map(|e| SecurityEvent {
                            at: e.at,
                            event: e.event,
                            client_id: e.client_id,
                            sub: e.sub,
                            source: e.source.and_then(|s| s.parse().ok()),
                            request_id: e.request_id,
                        })
                        .collect();
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "reading security events from the store failed")
                }
            }
        }
        self.ring
            .lock()
            .map(|ring| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// Record a security event in the state's ring and emit it on the `audit` log target, in
/// one statement:
///
/// ```ignore
/// audit!(state, &meta, info, "code_issued", client: Some(id), sub: None;
///        client_id = %id, "authorization code issued");
/// ```
///
/// `client:` and `sub:` (each an `Option<&str>`) go to the ring; the tracing event gets
/// `event = "<name>"`, the client's address (`source`) and the request id, then the fields
/// after `;` exactly as written.
macro_rules! audit {
    ($state:expr, $meta:expr, $level:ident, $event:literal, client: $client:expr, sub: $sub:expr; $($fields:tt)+) => {{
        let meta: &$crate::audit::RequestMeta = $meta;
        $state
            .events
            .record($state.clock.now(), $event, $client, $sub, meta);
        ::tracing::$level!(
            target: "audit",
            event = $event,
            source = %meta.source.map(|s| s.to_string()).unwrap_or_default(),
            request_id = meta.request_id.as_deref().unwrap_or(""),
            $($fields)+
        );
    }};
}
pub(crate) use audit;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::http::{HeaderValue, Request};
    use std::net::SocketAddr;

    #[test]
    fn the_ring_keeps_the_newest_events() {
        let ring = SecurityEvents::new(3);
        let meta = RequestMeta {
            source: Some("192.0.2.1".parse().unwrap()),
            request_id: Some("r1".into()),
        };
        for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            ring.record(i as u64, "login", Some(name), None, &meta);
        }
        let got: Vec<_> = ring
            .recent()
            .into_iter()
            .map(|e| e.client_id.unwrap())
            .collect();
        assert_eq!(got, ["d", "c", "b"], "newest first, oldest dropped");
        assert_eq!(ring.recent()[0].request_id.as_deref(), Some("r1"));
    }

    #[test]
    fn long_names_are_cut() {
        let ring = SecurityEvents::new(1);
        let long = "x".repeat(1000);
        ring.record(
            0,
            "login",
            Some(&long),
            Some(&long),
            &RequestMeta::default(),
        );
        let e = &ring.recent()[0];
        assert_eq!(e.client_id.as_ref().unwrap().len(), MAX_NAME);
        assert_eq!(e.sub.as_ref().unwrap().len(), MAX_NAME);
    }

    #[tokio::test]
    async fn meta_uses_the_forwarded_address_only_from_loopback() {
        let meta = |peer: &str| {
            let mut req = Request::builder()
                .header("x-forwarded-for", "203.0.113.7")
                .header("x-request-id", "rid-1")
                .body(())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            req.into_parts().0
        };
        let mut parts = meta("127.0.0.1:9");
        let m = RequestMeta::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(m.source, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(m.request_id.as_deref(), Some("rid-1"));
        let mut parts = meta("198.51.100.2:9");
        let m = RequestMeta::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(m.source, Some("198.51.100.2".parse().unwrap()));
        let mut parts = Request::builder()
            .header("x-request-id", HeaderValue::from_static("bad id<"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let m = RequestMeta::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(m, RequestMeta::default(), "no peer, no odd request id");
        // The address the router's middleware resolved (trusted proxies) wins.
        let mut parts = meta("10.0.0.5:9");
        parts
            .extensions
            .insert(ClientIp("203.0.113.8".parse().unwrap()));
        let m = RequestMeta::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(m.source, Some("203.0.113.8".parse().unwrap()));
    }
}
