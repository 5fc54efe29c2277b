//! The proxy alone, in front of fake backends: streaming, headers, failures.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use mcp_oauth_gateway::authz::AuthzState;
use mcp_oauth_gateway::proxy::Backends;
use mcp_oauth_gateway::proxy::forward::router;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::common;

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn proxy_to(state: AuthzState, mcp: SocketAddr) -> String {
    let backends = Backends {
        mcp,
        routes: mcp,
        jwks: mcp,
    };
    format!(
        "http://{}",
        serve(router(&state, None, backends, None)).await
    )
}

async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn sse_events_stream_through_as_written() {
    let gw = common::spawn().await;
    let (tx, rx) = mpsc::channel::<&'static str>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let backend = Router::new().route(
        "/mcp",
        get(move || {
            let rx = rx.clone();
            async move {
                let rx = rx.lock().await.take().unwrap();
                let stream = futures_stream(rx);
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(stream),
                )
                    .into_response()
            }
        }),
    );
    let base = proxy_to(gw.state.clone(), serve(backend).await).await;
    let mut res = reqwest::get(format!("{base}/mcp")).await.unwrap();
    assert_eq!(res.status(), 200);
    tx.send("data: one\n\n").await.unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    assert_eq!(
        &first[..],
        b"data: one\n\n",
        "the first event arrives before the second is written"
    );
    tx.send("data: two\n\n").await.unwrap();
    let second = res.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"data: two\n\n");
    drop(tx);
    assert!(res.chunk().await.unwrap().is_none());
}

fn futures_stream(
    rx: mpsc::Receiver<&'static str>,
) -> impl futures_util::Stream<Item = Result<&'static str, std::io::Error>> {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|v| (Ok(v), rx)) },
    )
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let gw = common::spawn().await;
    let backend = Router::new().route(
        "/mcp",
        any(|headers: HeaderMap| async move {
            let map: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            axum::Json(Value::Object(map))
        }),
    );
    let backend_addr = serve(backend).await;
    let base = proxy_to(gw.state.clone(), backend_addr).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    let seen: Value = res.json().await.unwrap();
    assert_eq!(
        seen["host"],
        backend_addr.to_string(),
        "Host is the backend's, as SDK servers check it"
    );
    assert_eq!(seen["x-forwarded-host"], base.trim_start_matches("http://"));
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-end-to-end"], "kept");
    assert!(seen.get("x-hop").is_none() && seen.get("keep-alive").is_none());
}

#[tokio::test]
async fn dead_backend_is_502_with_a_jsonrpc_error_on_mcp() {
    let gw = common::spawn().await;
    let base = proxy_to(gw.state.clone(), closed_port().await).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["code"], -32603);
    let res = reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn silent_backend_is_504() {
    let gw = common::spawn_with(|c| c.upstream_timeout_seconds = 1).await;
    // Accepts connections but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let base = proxy_to(gw.state.clone(), addr).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .timeout(Duration::from_secs(30))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
}

#[tokio::test]
async fn debug_trace_records_routes_and_redacts_credentials() {
    let off = common::spawn().await;
    let res = off
        .http
        .get(off.url("/debug/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "off unless asked for");
    off.stop().await;

    let gw = common::spawn_with(|c| c.debug_trace = true).await;
    let (_, t) = gw.login(None).await;
    let (s, _, _) = gw
        .mcp(
            Some(&t.access),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    assert_ne!(s, 401);
    let trace: Value = gw.get_json(gw.url("/debug/requests")).await;
    let entries = trace["requests"].as_array().unwrap();
    let find = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} traced"))
    };
    assert_eq!(find("/register")["backend"], "routes");
    assert_eq!(find("/token")["status"], 200);
    let mcp = find("/mcp");
    assert_eq!(mcp["backend"], "mcp");
    assert_eq!(mcp["request_headers"]["authorization"], "[redacted]");
    let text = trace.to_string();
    assert!(
        !text.contains(&t.access) && !text.contains(&t.refresh),
        "no token in the trace"
    );
    assert!(!text.contains("code="), "no query strings in the trace");
    assert!(
        entries.iter().all(|e| e["path"] != "/debug/requests"),
        "the trace does not trace itself"
    );
    let last = entries.last().unwrap()["id"].as_u64().unwrap();
    let newer: Value = gw
        .get_json(gw.url(&format!("/debug/requests?since={last}")))
        .await;
    assert_eq!(newer["requests"], json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn overlong_targets_and_headers_get_414_and_431_before_any_backend() {
    let gw = common::spawn().await;
    let long = format!("{}?state={}", gw.url("/authorize"), "a".repeat(9 * 1024));
    assert_eq!(gw.get_status(&long).await, 414);
    // Just under the cap, the request reaches the authorization server (which refuses it
    // for its own reasons, with its own page).
    let fits = format!("{}?state={}", gw.url("/authorize"), "a".repeat(7 * 1024));
    assert_eq!(gw.get_status(&fits).await, 400);
    let res = gw
        .http
        .get(gw.url("/healthz"))
        .header("x-padding", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    let res = gw
        .http
        .get(gw.url("/healthz"))
        .header("x-padding", "b".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let metrics = gw.state.metrics.render();
    assert!(
        !metrics.contains("status=\"414\"") && !metrics.contains("status=\"431\""),
        "refused before the forwarder counted anything"
    );
}
