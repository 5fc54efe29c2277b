//! `--upstream`: the gateway in front of an existing streamable-HTTP MCP server (here an
//! rmcp server started by the test): identity headers in, token out, tools filtered, and
//! a dead upstream answered with 502 until it is back.

use std::net::SocketAddr;

use rmcp::handler::server::common::Extension;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{self, TestGateway};

#[derive(Clone)]
struct Upstream;

#[tool_router]
impl Upstream {
    fn new() -> Self {
        Self
    }

    #[tool(description = "Show the headers the upstream received")]
    fn seen_headers(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        let h = &parts.headers;
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        json!({
            "subject": get("x-mcp-subject"),
            "scopes": get("x-mcp-scopes"),
            "key": get("x-upstream-key"),
            "authorization": get("authorization"),
            "host": get("host"),
        })
        .to_string()
    }

    #[tool(description = "Something only admins may do")]
    fn delete_all(&self) -> String {
        "deleted".into()
    }
}

#[tool_handler]
impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

async fn serve_upstream(listener: TcpListener) -> CancellationToken {
    let ct = CancellationToken::new();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(ct.child_token());
    let service: StreamableHttpService<Upstream, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Upstream::new()), Default::default(), config);
    let app = axum::Router::new().nest_service("/mcp", service);
    let stop = ct.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    ct
}

async fn initialize(gw: &TestGateway, token: &str) -> String {
    let (s, h, v) = gw
        .mcp(
            Some(token),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sid = h["mcp-session-id"].to_str().unwrap().to_string();
    let (s, _, _) = gw
        .mcp(
            Some(token),
            Some(&sid),
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
        .await;
    assert_eq!(s, 202);
    sid
}

#[tokio::test]
async fn upstream_gets_identity_not_token_and_tools_are_filtered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let upstream_stop = serve_upstream(listener).await;
    let gw = common::spawn_with(|c| {
        c.upstream = Some(format!("http://{addr}/mcp"));
        c.upstream_headers
            .insert("x-upstream-key".into(), "k-123".into());
        c.identity_headers.subject = Some("X-MCP-Subject".into());
        c.identity_headers.scopes = Some("X-MCP-Scopes".into());
        c.scopes
            .tools
            .insert("delete_all".into(), "mcp:admin".into());
    })
    .await;
    let (_, t) = gw.login(Some("mcp:read mcp:write")).await;
    let sid = initialize(&gw, &t.access).await;

    let (s, _, list) = gw
        .mcp(
            Some(&t.access),
            Some(&sid),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        )
        .await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["seen_headers"],
        "delete_all needs mcp:admin and is hidden"
    );

    let res = gw
        .http
        .post(gw.resource())
        .bearer_auth(&t.access)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", &sid)
        .header("x-mcp-subject", "root")
        .json(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"seen_headers","arguments":{}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v = common::jsonrpc_body(&res.text().await.unwrap());
    let seen: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen["subject"], "local-user",
        "the verified user, not what the client claimed"
    );
    assert_eq!(seen["scopes"], "mcp:read mcp:write");
    assert_eq!(seen["key"], "k-123", "the upstream's own credential");
    assert_eq!(seen["authorization"], "", "no token passthrough");
    assert_eq!(seen["host"], addr.to_string());

    let (s, h, _) = gw.call_tool(&t.access, &sid, "delete_all", json!({})).await;
    assert_eq!(s, 403);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"mcp:admin\"")
    );

    // The upstream dies: 502 with a JSON-RPC error; it comes back on the same port: works.
    upstream_stop.cancel();
    let (s, _, v) = gw
        .call_tool(&t.access, &sid, "seen_headers", json!({}))
        .await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["code"], -32603);
    let listener = loop {
        // The old server may still be closing its socket; binding is the readiness signal.
        if let Ok(l) = TcpListener::bind(addr).await {
            break l;
        }
        tokio::task::yield_now().await;
    };
    let _again = serve_upstream(listener).await;
    let sid = initialize(&gw, &t.access).await;
    let (s, _, _) = gw
        .call_tool(&t.access, &sid, "seen_headers", json!({}))
        .await;
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn stdio_upstream_is_served_over_http_with_the_policy_applied() {
    // Our own binary serves the demo tools on stdio: a real child process speaking MCP.
    let cmd = format!("{} serve-stdio", env!("CARGO_BIN_EXE_mcp-oauth-gateway"));
    let gw = common::spawn_with(move |c| c.upstream_cmd = Some(cmd)).await;
    let (_, t) = gw.login(Some("mcp:read")).await;
    let (s, _, init) = gw
        .mcp(
            Some(&t.access),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        init["result"]["serverInfo"]["name"], "mcp-oauth-gateway",
        "the child's own name: {init}"
    );
    assert!(
        init["result"]["instructions"]
            .as_str()
            .unwrap_or("")
            .contains("echo")
    );
    let sid = initialize(&gw, &t.access).await;
    let (s, _, list) = gw
        .mcp(
            Some(&t.access),
            Some(&sid),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(
        !names.contains(&"add_note"),
        "hidden from a read-only token: {names:?}"
    );
    let (s, _, v) = gw
        .call_tool(&t.access, &sid, "echo", json!({"message": "over stdio"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["content"][0]["text"], "over stdio");
    let (s, _, _) = gw
        .call_tool(&t.access, &sid, "add_note", json!({"text": "x"}))
        .await;
    assert_eq!(s, 403);
    gw.stop().await;
}

#[tokio::test]
async fn stdio_children_can_be_one_per_session() {
    let cmd = format!("{} serve-stdio", env!("CARGO_BIN_EXE_mcp-oauth-gateway"));
    for per_session in [false, true] {
        let cmd = cmd.clone();
        let gw = common::spawn_with(move |c| {
            c.upstream_cmd = Some(cmd);
            c.upstream_cmd_per_session = per_session;
        })
        .await;
        let (_, t) = gw.login(Some("mcp:write")).await;
        let a = initialize(&gw, &t.access).await;
        let b = initialize(&gw, &t.access).await;
        let (s, _, _) = gw
            .call_tool(&t.access, &a, "add_note", json!({"text": "from a"}))
            .await;
        assert_eq!(s, 200);
        let (_, _, v) = gw.call_tool(&t.access, &b, "list_notes", json!({})).await;
        let notes = v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        if per_session {
            assert_eq!(notes, "no notes", "session b has its own child");
        } else {
            assert_eq!(notes, "from a", "one child serves both sessions");
        }
        gw.stop().await;
    }
}

/// A request with method `method` (GET, POST or DELETE) on session `sid` with `token`.
async fn on_session(
    gw: &TestGateway,
    method: reqwest::Method,
    token: &str,
    sid: &str,
) -> (u16, Value) {
    let mut req = gw
        .http
        .request(method.clone(), gw.url("/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", sid);
    if method == reqwest::Method::POST {
        req = req.json(&json!({"jsonrpc":"2.0","id":9,"method":"tools/list"}));
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, common::jsonrpc_body(&text))
}

/// Issue 12: a session belongs to the (subject, client) that opened it; any other token
/// naming it gets the 404 of an unknown session, for GET, POST and DELETE; a DELETE of an
/// unknown session is a 404 too, and a deleted session is forgotten.
async fn sessions_belong_to_their_opener(gw: &TestGateway) {
    use reqwest::Method;
    let (client_a, a) = gw.login(Some("mcp:read")).await;
    let (_, b) = gw.login(Some("mcp:read")).await;
    // Same client, another subject.
    let mallory = gw.mint({
        let mut c = gw.claims();
        c["client_id"] = json!(client_a);
        c["scope"] = json!("mcp:read");
        c
    });
    let sid = initialize(gw, &a.access).await;
    let (unknown_status, unknown) =
        on_session(gw, Method::POST, &a.access, "no-such-session").await;
    assert_eq!(unknown_status, 404, "{unknown}");
    for token in [&b.access, &mallory] {
        for method in [Method::POST, Method::GET, Method::DELETE] {
            let (s, v) = on_session(gw, method.clone(), token, &sid).await;
            assert_eq!(s, 404, "{method} on another's session: {v}");
            assert_eq!(v["error"]["code"], unknown["error"]["code"], "{v}");
            assert_eq!(v["error"]["message"], unknown["error"]["message"], "{v}");
        }
    }
    // The owner's session was not disturbed.
    let (s, v) = on_session(gw, Method::POST, &a.access, &sid).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = on_session(gw, Method::DELETE, &a.access, "no-such-session").await;
    assert_eq!(s, 404, "DELETE of an unknown session");
    let (s, v) = on_session(gw, Method::DELETE, &a.access, &sid).await;
    assert!((200..300).contains(&s), "the owner ends it: {s} {v}");
    let (s, _) = on_session(gw, Method::POST, &a.access, &sid).await;
    assert_eq!(s, 404, "a deleted session is gone");
}

#[tokio::test]
async fn sessions_belong_to_their_opener_builtin() {
    let gw = common::spawn().await;
    sessions_belong_to_their_opener(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn sessions_belong_to_their_opener_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let upstream_stop = serve_upstream(listener).await;
    let gw = common::spawn_with(|c| c.upstream = Some(format!("http://{addr}/mcp"))).await;
    sessions_belong_to_their_opener(&gw).await;
    gw.stop().await;
    upstream_stop.cancel();
}

#[tokio::test]
async fn sessions_belong_to_their_opener_upstream_cmd() {
    let cmd = format!("{} serve-stdio", env!("CARGO_BIN_EXE_mcp-oauth-gateway"));
    let gw = common::spawn_with(move |c| c.upstream_cmd = Some(cmd)).await;
    sessions_belong_to_their_opener(&gw).await;
    gw.stop().await;
}

/// Issue 12: calls that name what they act on need it as a string, and malformed JSON-RPC
/// is a JSON-RPC error with the request's id and HTTP 400, never 415 and never forwarded.
async fn malformed_calls_are_refused(gw: &TestGateway) {
    let (_, t) = gw.login(Some("mcp:read")).await;
    let sid = initialize(gw, &t.access).await;
    let raw = |body: &'static [u8], content_type: &'static str| {
        let gw = &gw;
        let (token, sid) = (t.access.clone(), sid.clone());
        async move {
            let res = gw
                .http
                .post(gw.url("/mcp"))
                .bearer_auth(token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .header("mcp-session-id", sid)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, common::jsonrpc_body(&res.text().await.unwrap()))
        }
    };
    let json = "application/json";
    for (body, code, id) in [
        (
            &br#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#[..],
            -32602,
            json!(5),
        ),
        (
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":5}}"#,
            -32602,
            json!(5),
        ),
        (
            br#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":["echo"]}"#,
            -32602,
            json!("s"),
        ),
        (
            br#"{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{}}"#,
            -32602,
            json!(6),
        ),
        (
            br#"{"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":null}}"#,
            -32602,
            json!(7),
        ),
        (br#"{"id":8,"method":"ping"}"#, -32600, json!(8)),
        (
            br#"{"jsonrpc":"2.0","id":9,"method":["ping"]}"#,
            -32600,
            json!(9),
        ),
        (
            br#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            -32600,
            Value::Null,
        ),
        (b"{not json", -32700, Value::Null),
        (b"[1, 2]", -32600, Value::Null),
    ] {
        let (s, v) = raw(body, json).await;
        let what = String::from_utf8_lossy(body);
        assert_eq!(s, 400, "{what}: {v}");
        let first = if v.is_array() {
            v[0].clone()
        } else {
            v.clone()
        };
        assert_eq!(first["error"]["code"], code, "{what}: {v}");
        assert_eq!(first["id"], id, "{what}: {v}");
    }
    // A batch: each element on its own.
    let (s, v) = raw(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}]"#,
        json,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v[1]["id"], 2, "{v}");
    assert_eq!(v[1]["error"]["code"], -32602, "{v}");
    // 415 is for a wrong Content-Type only.
    let (s, v) = raw(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, "text/plain").await;
    assert_eq!(s, 415, "{v}");
    let (s, v) = raw(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, json).await;
    assert_eq!(s, 200, "control: {v}");
}

#[tokio::test]
async fn malformed_calls_are_refused_builtin() {
    let gw = common::spawn().await;
    malformed_calls_are_refused(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn malformed_calls_are_refused_before_the_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let upstream_stop = serve_upstream(listener).await;
    let gw = common::spawn_with(|c| c.upstream = Some(format!("http://{addr}/mcp"))).await;
    malformed_calls_are_refused(&gw).await;
    gw.stop().await;
    upstream_stop.cancel();
}
