//! The client's address behind a load balancer (`trusted_proxies`): through the real proxy,
//! the test client plays a load balancer on loopback that names the client in
//! `X-Forwarded-For`. Believed, each named client has its own rate limit and is the source
//! of its security events; not believed (the default), they all share the loopback peer's.

use serde_json::json;

use crate::common::{self, REDIRECT, TestGateway};

/// Register a client, saying (as a load balancer would) that `forwarded_for` sent it.
async fn register_as(gw: &TestGateway, forwarded_for: &str) -> u16 {
    gw.http
        .post(gw.url("/register"))
        .header("x-forwarded-for", forwarded_for)
        .header("x-request-id", "rid-behind-lb")
        .json(&json!({"redirect_uris": [REDIRECT], "client_name": "behind a balancer"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit_and_name() {
    let gw = common::spawn_with(|c| {
        c.register_rate_per_minute = 2;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    assert_eq!(register_as(&gw, "203.0.113.7").await, 201);
    assert_eq!(register_as(&gw, "203.0.113.7").await, 201);
    assert_eq!(
        register_as(&gw, "203.0.113.7").await,
        429,
        "203.0.113.7 used its two"
    );
    assert_eq!(
        register_as(&gw, "198.51.100.9").await,
        201,
        "another client is counted apart"
    );
    // A spoofed entry to the left of the balancer's is not believed.
    assert_eq!(
        register_as(&gw, "198.51.100.9, 203.0.113.7").await,
        429,
        "counted as 203.0.113.7, whatever it wrote before"
    );
    // Nor is a line of its own in front of the one the balancer added.
    let res = gw
        .http
        .post(gw.url("/register"))
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "both lines are read, the last one wins");

    // The security events name the client, not the balancer.
    let registered: Vec<_> = gw
        .state
        .events
        .recent()
        .into_iter()
        .filter(|e| e.event == "client_registered")
        .collect();
    assert_eq!(registered.len(), 3);
    assert_eq!(
        registered[2].source,
        Some("203.0.113.7".parse().unwrap()),
        "{registered:?}"
    );
    assert_eq!(registered[0].source, Some("198.51.100.9".parse().unwrap()));
    assert_eq!(registered[0].request_id.as_deref(), Some("rid-behind-lb"));
    // And so does the operator's page (fetched without a forwarded address: it is for
    // this machine only).
    let html = gw
        .http
        .get(gw.url("/admin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(">203.0.113.7<"), "{html}");
    assert!(html.contains(">198.51.100.9<"), "{html}");
    gw.stop().await;
}

#[tokio::test]
async fn by_default_forwarded_addresses_do_not_split_the_limit() {
    let gw = common::spawn_with(|c| c.register_rate_per_minute = 2).await;
    assert_eq!(register_as(&gw, "203.0.113.7").await, 201);
    assert_eq!(register_as(&gw, "198.51.100.9").await, 201);
    assert_eq!(
        register_as(&gw, "192.0.2.44").await,
        429,
        "all three are the loopback peer"
    );
    let sources: Vec<_> = gw
        .state
        .events
        .recent()
        .into_iter()
        .filter(|e| e.event == "client_registered")
        .map(|e| e.source)
        .collect();
    assert_eq!(sources, [Some("127.0.0.1".parse().unwrap()); 2]);
    gw.stop().await;
}

#[tokio::test]
async fn the_token_and_authorization_limits_see_the_client_too() {
    let gw = common::spawn_with(|c| {
        c.token_rate_per_minute = 1;
        c.authorize_rate_per_minute = 1;
        c.trusted_proxies = vec!["127.0.0.0/8".into(), "::1".into()];
    })
    .await;
    let token = |xff: &'static str| {
        let req = gw
            .http
            .post(gw.url("/token"))
            .header("x-forwarded-for", xff)
            .form(&[("grant_type", "client_credentials")]);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let first = token("203.0.113.7").await;
    assert_ne!(first, 429, "answered (a bad request), not limited");
    assert_eq!(token("203.0.113.7").await, 429);
    assert_eq!(token("198.51.100.9").await, first);
    let authorize = |xff: &'static str| {
        let req = gw
            .http
            .get(gw.url("/authorize?client_id=nobody"))
            .header("x-forwarded-for", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let first = authorize("203.0.113.7").await;
    assert_ne!(first, 429);
    assert_eq!(authorize("203.0.113.7").await, 429);
    assert_eq!(authorize("198.51.100.9").await, first);
    gw.stop().await;
}
