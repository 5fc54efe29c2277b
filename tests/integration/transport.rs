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

/// A failure bound for waits that the gateway's own timeouts should end much sooner; never
/// reached by a passing test.
const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the server has closed `tcp`: a read returns end of stream (or a reset).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GIVE_UP, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Bytes (a 408 or the like) before the close are fine.
            Ok(Ok(_)) => {}
        }
    }
}

/// A keep-alive HTTP/1.1 GET /healthz on `tcp`; whether a 200 came back.
async fn healthz_on(tcp: &mut tokio::net::TcpStream, host: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(GIVE_UP, tcp.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

/// Half a request head on `tcp` (a slowloris): the start of a GET, never finished.
async fn begin_a_head(tcp: &mut tokio::net::TcpStream, host: &str) {
    use tokio::io::AsyncWriteExt as _;
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
    tcp.write_all(head.as_bytes()).await.unwrap();
}

async fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn slow_and_silent_connections_are_closed_and_idle_ones_too() {
    use tokio::io::AsyncWriteExt as _;
    let gw = common::spawn_with(|c| {
        c.header_read_timeout_seconds = 1;
        c.idle_timeout_seconds = 1;
    })
    .await;
    let addr = proxy_addr(&gw);
    // Slowloris: headers begun, never finished.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    begin_a_head(&mut slow, &addr.to_string()).await;
    // Silent: connected, nothing sent.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // HTTP/2 preface only, no request.
    let mut h2_silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2_silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // Idle keep-alive after a request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(healthz_on(&mut idle, &addr.to_string()).await);
    assert!(closed_by_server(&mut slow).await, "slowloris closed");
    assert!(
        closed_by_server(&mut silent).await,
        "silent connection closed"
    );
    assert!(
        closed_by_server(&mut h2_silent).await,
        "silent HTTP/2 connection closed"
    );
    assert!(closed_by_server(&mut idle).await, "idle keep-alive closed");

    // An idle HTTP/2 connection is closed once its last request is done.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let res = send
        .send_request(
            http::Request::get(format!("http://{addr}/healthz"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    assert!(
        tokio::time::timeout(GIVE_UP, conn).await.is_ok(),
        "idle HTTP/2 connection closed by the server"
    );

    // A normal client is still served.
    assert_eq!(gw.get_status(gw.url("/healthz")).await, 200);
    gw.stop().await;
}

/// The next request on a kept-alive HTTP/1.1 connection has the header timeout from the end
/// of the last response, however long the idle timeout: a slowloris that waits for one
/// answer before it starts trickling is closed too.
#[tokio::test]
async fn a_second_request_begun_and_never_finished_closes_the_connection() {
    let gw = common::spawn_with(|c| {
        c.header_read_timeout_seconds = 1;
        c.idle_timeout_seconds = 3600;
    })
    .await;
    let addr = proxy_addr(&gw);
    let host = addr.to_string();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(healthz_on(&mut slow, &host).await);
    begin_a_head(&mut slow, &host).await;
    assert!(
        closed_by_server(&mut slow).await,
        "second head never finished"
    );
    // A connection that goes on sending requests is served on the same connection.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        assert!(healthz_on(&mut busy, &host).await);
    }
    gw.stop().await;
}

/// A graceful shutdown waits for requests in progress, not for a request whose headers
/// never end: the gateway stops at the header timeout, not at the shutdown timeout.
#[tokio::test]
async fn a_request_begun_and_never_finished_does_not_hold_up_a_shutdown() {
    let gw = common::spawn_with(|c| {
        c.header_read_timeout_seconds = 1;
        c.idle_timeout_seconds = 3600;
        c.shutdown_timeout_seconds = 3600;
    })
    .await;
    let addr = proxy_addr(&gw);
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    begin_a_head(&mut slow, &addr.to_string()).await;
    assert!(
        tokio::time::timeout(GIVE_UP, gw.stop()).await.is_ok(),
        "the shutdown waited for a request that never came"
    );
    assert!(closed_by_server(&mut slow).await);
}

#[tokio::test]
async fn connections_are_capped_per_source_without_shutting_out_others() {
    let gw = common::spawn_with(|c| c.max_connections_per_source = 5).await;
    let addr = proxy_addr(&gw);
    let host = addr.to_string();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = connect_from([127, 0, 0, 1], addr).await;
        assert!(healthz_on(&mut tcp, &host).await, "under the cap: served");
        held.push(tcp);
    }
    // A sixth from the same source is closed at once, with no answer.
    let mut sixth = connect_from([127, 0, 0, 1], addr).await;
    assert!(
        !healthz_on(&mut sixth, &host).await,
        "over the cap: refused"
    );
    assert!(closed_by_server(&mut sixth).await);
    // Another source is not affected.
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    assert!(
        healthz_on(&mut other, &host).await,
        "another source: served"
    );
    // The held connections still work.
    assert!(healthz_on(&mut held[0], &host).await);
    gw.stop().await;
}

#[tokio::test]
async fn oversized_bodies_on_oauth_endpoints_get_an_rfc6749_json_error() {
    let gw = common::spawn().await;
    let big = "a=".to_string() + &"x".repeat(70 * 1024);
    for path in [
        "/register",
        "/token",
        "/revoke",
        "/introspect",
        "/consent",
        "/login",
        "/admin/login",
    ] {
        let res = gw
            .http
            .post(gw.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 413, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request", "{path}: {v}");
        assert!(v["error_description"].is_string(), "{path}: {v}");
    }
    // The authorization server answers the same when reached directly.
    let routes = gw.state.settings.config.routes_addr;
    let res = gw
        .http
        .post(format!("http://{routes}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    // Chunked, with no length announced: the same answer.
    let chunks = futures_util::stream::iter(
        (0..80).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1024]))),
    );
    let res = gw
        .http
        .post(gw.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    gw.stop().await;
}

/// One HTTP/1.1 response read off `tcp` (head and a `Content-Length` body); its status and
/// head, or `None` when the server closed the connection first.
async fn read_h1_response(tcp: &mut tokio::net::TcpStream) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout(GIVE_UP, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while got.len() < head_end + length {
        match tokio::time::timeout(GIVE_UP, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head))
}

/// A refusal decided on the headers alone (no token: 401) must still read the body the client
/// sends after them, or the connection closes under a client that goes on using it (httpx
/// writes the head and the body separately). The body here comes a while after the head.
#[tokio::test]
async fn a_refusal_before_the_body_arrived_keeps_the_connection_usable() {
    use tokio::io::AsyncWriteExt as _;
    let gw = common::spawn().await;
    let addr = proxy_addr(&gw);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
    for path in ["/mcp", "/register"] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The client is slow, not the server: the body follows the head later.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tcp.write_all(body.as_bytes()).await.unwrap();
        let (status, head) = read_h1_response(&mut tcp).await.expect("first answer");
        assert!((400..500).contains(&status), "{path}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{path}: the body was read, so the connection stays open: {head}"
        );
        assert!(
            healthz_on(&mut tcp, &addr.to_string()).await,
            "{path}: the same connection answers the next request"
        );
    }
    gw.stop().await;
}

/// A body too large to read through before an early refusal: the refusal says
/// `Connection: close`, so no client reuses the connection and loses its next request.
#[tokio::test]
async fn a_refusal_that_leaves_a_body_unread_says_the_connection_closes() {
    use tokio::io::AsyncWriteExt as _;
    let gw = common::spawn().await;
    let addr = proxy_addr(&gw);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: 100000000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[b' '; 1024]).await.unwrap();
    let (status, head) = read_h1_response(&mut tcp).await.expect("an answer");
    assert!((400..500).contains(&status), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    gw.stop().await;
}
