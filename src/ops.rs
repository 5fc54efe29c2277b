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

use crate::state::AppState;

/// The operations router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz_get))
        .route("/readyz", get(readyz_get))
        .route("/metrics", get(metrics_get))
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

async fn readyz_get(State(state): State<AppState>) -> Response {
    let store = state.store.client("readyz-probe").is_ok();
    let upstream = match &state.settings.config.upstream {
        Some(url) => Some(upstream_reachable(url).await),
        None => None,
    };
    let ready = store && upstream.unwrap_or(true);
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "listeners": true,
            "store": store,
            "signing_key": state.keys.kid.clone(),
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

async fn metrics_get(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
