//! What operators see: health, readiness, Prometheus counters that move with each outcome,
//! and request ids.

use serde_json::{Value, json};

use crate::common;

fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn health_readiness_metrics_and_request_ids() {
    let gw = common::spawn().await;
    let health: Value = gw.get_json(gw.url("/healthz")).await;
    assert_eq!(health["status"], "ok");
    let ready = gw.http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["store"], true);
    assert_eq!(ready["checks"]["listeners"], true);
    assert_eq!(ready["checks"]["signing_key"], gw.state.keys.current().kid);

    // A flow with each outcome.
    let (client_id, t) = gw.login(Some("mcp:read")).await;
    let sid = gw.mcp_session(&t.access).await;
    let _ = gw
        .call_tool(&t.access, &sid, "add_note", json!({"text": "x"}))
        .await; // 403
    let _ = gw
        .mcp(
            Some("garbage"),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    let (s, r2) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    let _ = gw
        .refresh(&client_id, r2["refresh_token"].as_str().unwrap())
        .await;
    let _ = gw.refresh(&client_id, &t.refresh).await; // replay
    gw.clock.advance(3700);
    let _ = gw
        .mcp(
            Some(&t.access),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await; // expired

    // /metrics is on the routes listener; the public proxy does not serve it by default.
    let routes = gw.state.settings.config.routes_addr;
    let text = reqwest::get(format!("http://{routes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        counter(&text, "mcp_gateway_token_validations_total{outcome=\"ok\"}") >= 2,
        "{text}"
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_token_validations_total{outcome=\"malformed\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_token_validations_total{outcome=\"expired\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_token_validations_total{outcome=\"insufficient_scope\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_tokens_issued_total{grant=\"refresh_token\"}"
        ),
        2
    );
    assert_eq!(
        counter(
            &text,
            "mcp_gateway_replays_detected_total{outcome=\"refresh_token\"}"
        ),
        1
    );
    assert_eq!(counter(&text, "mcp_gateway_client_registrations_total"), 1);
    assert!(
        counter(
            &text,
            "mcp_gateway_proxy_requests_total{backend=\"routes\",route=\"token\",status=\"200\"}"
        ) >= 1
    );
    assert!(
        !text.contains(&t.access) && !text.contains(&client_id),
        "no label carries a token or a client's value"
    );
    let public = gw.http.get(gw.url("/metrics")).send().await.unwrap();
    assert_ne!(public.status(), 200, "not public unless asked for");

    // Request ids: kept when sane, made up otherwise, always returned.
    let res = gw
        .http
        .get(gw.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = gw
        .http
        .get(gw.url("/healthz"))
        .header("x-request-id", "bad id\"<script>")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap();
    assert!(!id.contains('<') && id.len() >= 16);
    gw.stop().await;

    let open = common::spawn_with(|c| c.metrics_public = true).await;
    assert_eq!(open.get_status(open.url("/metrics")).await, 200);
    open.stop().await;
}
