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

/// One HTTP/2 (prior knowledge, as over TLS with ALPN) GET whose `:authority` is `authority`.
async fn h2_get(
    addr: std::net::SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = send
        .send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One raw HTTP/1.1 exchange (the request as written, `Connection: close` added); the status.
async fn raw_h1(addr: std::net::SocketAddr, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{head}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {text}"))
}

fn proxy_addr(gw: &common::TestGateway) -> std::net::SocketAddr {
    gw.base
        .trim_start_matches("http://")
        .parse()
        .expect("proxy address")
}

#[tokio::test]
async fn operator_pages_check_the_authority_the_client_used_also_over_http2() {
    let gw = common::spawn_with(|c| c.debug_trace = true).await;
    let addr = proxy_addr(&gw);
    let own = addr.to_string();
    // HTTP/2 carries the name in `:authority` and no `Host`: a page that rebinds its DNS
    // name to the gateway must not pass for this machine.
    let evil = format!("rebound.example:{}", addr.port());
    for path in ["/admin", "/consents", "/debug/requests"] {
        let (status, body) = h2_get(addr, &evil, path, &[]).await;
        assert_eq!(status, 403, "{path} under a foreign :authority: {body}");
    }
    // Nor can a client vouch for itself with its own X-Forwarded-Host.
    let (status, _) = h2_get(addr, &evil, "/admin", &[("x-forwarded-host", &own)]).await;
    assert_eq!(status, 403);
    // Under the gateway's own name, HTTP/2 works.
    let (status, body) = h2_get(addr, &own, "/admin", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = h2_get(addr, &own, "/debug/requests", &[]).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn operator_pages_refuse_ambiguous_hosts_and_hop_by_hop_tricks() {
    let gw = common::spawn().await;
    let addr = proxy_addr(&gw);
    let own = addr.to_string();
    assert_eq!(
        raw_h1(addr, &format!("GET /admin HTTP/1.1\r\nHost: {own}")).await,
        200
    );
    // Two Host headers: which one the checks read is anyone's guess.
    assert_eq!(
        raw_h1(
            addr,
            &format!("GET /admin HTTP/1.1\r\nHost: {own}\r\nHost: rebound.example")
        )
        .await,
        400
    );
    // `Connection: host` must not make the proxy drop the name before the check.
    assert_eq!(
        raw_h1(
            addr,
            "GET /admin HTTP/1.1\r\nHost: rebound.example\r\nConnection: host"
        )
        .await,
        403
    );
    // Nor hide the client's address.
    assert_eq!(
        raw_h1(
            addr,
            &format!(
                "GET /admin HTTP/1.1\r\nHost: {own}\r\nX-Forwarded-For: 203.0.113.9\r\n\
                 Connection: x-forwarded-for"
            )
        )
        .await,
        403
    );
    // An absolute-form target that names another host than `Host`.
    assert_eq!(
        raw_h1(
            addr,
            &format!("GET http://rebound.example/admin HTTP/1.1\r\nHost: {own}")
        )
        .await,
        400
    );
    gw.stop().await;
}

#[tokio::test]
async fn operator_pages_refuse_cross_site_requests_and_foreign_origins() {
    let gw = common::spawn_with(|c| c.debug_trace = true).await;
    let own_origin = gw.base.clone();
    for path in ["/admin", "/consents", "/debug/requests"] {
        for (name, value) in [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
            ("origin", "https://evil.example"),
            ("origin", "null"),
        ] {
            let res = gw
                .http
                .get(gw.url(path))
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{path} with {name}: {value}");
        }
    }
    for (name, value) in [
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-site", "none"),
        ("origin", own_origin.as_str()),
    ] {
        let res = gw
            .http
            .get(gw.url("/admin"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "/admin with {name}: {value}");
    }
    gw.stop().await;
}
