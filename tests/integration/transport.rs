//! The public listener as a transport: where CORS answers, how operator pages check who is
//! asking, connection limits and timeouts, and the errors of oversized bodies.

use reqwest::Method;

use crate::common;

const ORIGIN: &str = "http://localhost:6274";

async fn preflight(gw: &common::TestGateway, path: &str) -> reqwest::Response {
    gw.http
        .request(Method::OPTIONS, gw.url(path))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_answers_any_origin_only_where_browser_clients_need_it() {
    let gw = common::spawn_with(|c| c.debug_trace = true).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource/mcp",
        "/register",
        "/token",
        "/revoke",
        "/jwks.json",
    ] {
        let res = preflight(&gw, path).await;
        assert!(res.status().is_success(), "{path}: {}", res.status());
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            ORIGIN,
            "{path}"
        );
    }
    let res = gw
        .http
        .get(gw.url("/jwks.json"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    // The MCP endpoint keeps its own allow-list: loopback origins pass, others do not.
    let res = preflight(&gw, "/mcp").await;
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    let res = gw
        .http
        .request(Method::OPTIONS, gw.url("/mcp"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));

    for path in [
        "/admin",
        "/admin/grants/revoke",
        "/consents",
        "/consents/revoke",
        "/debug/requests",
        "/login",
        "/authorize",
        "/consent",
    ] {
        let res = preflight(&gw, path).await;
        assert!(
            !res.headers().contains_key("access-control-allow-origin"),
            "{path} preflight: {:?}",
            res.headers()
        );
        assert!(
            !res.status().is_success(),
            "{path}: no preflight success, got {}",
            res.status()
        );
        let res = gw
            .http
            .get(gw.url(path))
            .header("origin", ORIGIN)
            .send()
            .await
            .unwrap();
        assert!(
            !res.headers().contains_key("access-control-allow-origin"),
            "{path} GET: {:?}",
            res.headers()
        );
    }
    gw.stop().await;
}
