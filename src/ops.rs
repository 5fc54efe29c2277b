//! What operators poll: `/healthz` (the process answers), `/readyz` (all it depends on
//! works: the store, the signing key, the upstream when one is configured) and `/metrics`
//! (Prometheus). Served by the routes listener; `/metrics` reaches the public proxy only
//! when `metrics_public` is set.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::shared::Shared;
use crate::web::routes;

/// The operations router.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(healthz_get))
        .route(routes::READYZ, get(readyz_get))
        .route(routes::METRICS, get(metrics_get))
        .with_state(state)
}

async fn healthz_get() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Whether the upstream (http or its authority) accepts a TCP connection.
async fn upstream_reachable(url: &str) -> bool {
    let Some(authority) = url::Url::parse(url).ok().and_then(|u| {
        let host = u.host_str()?.to_string();
        Some(format!("{host}:{}", u.port_or_known_default()?))
    }) else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(authority)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether a listener accepts a TCP connection (a wildcard address is tried on loopback).
async fn accepts(addr: std::net::SocketAddr) -> bool {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn readyz_get(State(state): State<Shared>) -> Response {
    let c = &state.settings.config;
    // This answer comes from the routes listener; the other three are dialled.
    let (proxy, mcp, jwks) = tokio::join!(
        accepts(c.proxy_addr),
        accepts(c.mcp_addr),
        accepts(c.jwks_addr)
    );
    let listeners = proxy && mcp && jwks;
    let store = state.store.client("readyz-probe").is_ok()
        && state.store.probe_write(state.clock.now()).is_ok();
    let upstream = match &state.settings.config.upstream {
        Some(url) => Some(upstream_reachable(url).await),
        None => None,
    };
    let ready = listeners && store && upstream.unwrap_or(true);
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "listeners": listeners,
            "store": store,
            "signing_key": state.keys.current().kid.clone(),
            "upstream": upstream,
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_get(State(state): State<Shared>) -> Response {
    // Gauges of stored state are read when asked for, not kept in step with every change.
    match state.store.live_counts(state.clock.now()) {
        Ok(live) => state.metrics.set_live(
            live.clients + state.settings.pinned_clients.len(),
            live.grants,
        ),
        Err(e) => tracing::warn!(error = %e, "live counts unavailable for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_is_gone_does_not_accept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(accepts(addr).await);
        let wildcard = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
        assert!(
            accepts(wildcard).await,
            "a wildcard bind is dialled on loopback"
        );
        drop(listener);
        assert!(!accepts(addr).await);
    }
}
