//! The flow a real client runs (ARCHITECTURE.md), step by step through the proxy.

use serde_json::{Value, json};

use crate::common::{self, REDIRECT, jwt_claims, pkce, query_param};

#[tokio::test]
async fn the_whole_flow_through_the_proxy() {
    let gw = common::spawn().await;

    // 1. No token: 401 with a challenge naming the metadata and the scope.
    let (status, headers, _) = gw
        .mcp(
            None,
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        )
        .await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    let prm_url = format!("{}/.well-known/oauth-protected-resource/mcp", gw.base);
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{prm_url}\", scope=\"mcp:read\"")
    );

    // 2. Protected resource metadata, both forms.
    for url in [
        prm_url.clone(),
        gw.url("/.well-known/oauth-protected-resource"),
    ] {
        let prm: Value = gw.get_json(&url).await;
        assert_eq!(prm["resource"], gw.resource());
        assert_eq!(prm["authorization_servers"], json!([gw.base]));
        assert_eq!(prm["bearer_methods_supported"], json!(["header"]));
        assert!(
            !prm["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("offline_access"))
        );
    }

    // 3. Authorization server metadata: issuer is exactly the URL it was fetched under, S256.
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let meta: Value = gw.get_json(gw.url(path)).await;
        assert_eq!(meta["issuer"], gw.base);
        assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            meta["authorization_response_iss_parameter_supported"],
            json!(true)
        );
        for endpoint in [
            "authorization_endpoint",
            "token_endpoint",
            "registration_endpoint",
            "revocation_endpoint",
            "jwks_uri",
        ] {
            let url = meta[endpoint].as_str().unwrap();
            assert!(
                url.starts_with(&gw.base),
                "{endpoint} must go through the proxy: {url}"
            );
        }
    }
    let jwks: Value = gw.get_json(gw.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"][0]["kid"], gw.state.keys.current().kid);

    // 4-6. Register, consent, code with state and iss, token.
    let client_id = gw.register().await;
    let p = pkce();
    let loc = gw
        .consent(
            &gw.authorize_url(&client_id, &p, Some("mcp:read")),
            "approve",
        )
        .await;
    assert!(loc.starts_with(REDIRECT));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
    assert_eq!(query_param(&loc, "iss").as_deref(), Some(gw.base.as_str()));
    let code = query_param(&loc, "code").unwrap();
    let (status, headers, body) = gw
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &p.verifier),
            ("resource", &gw.resource()),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "mcp:read");
    let access = body["access_token"].as_str().unwrap().to_string();
    let claims = jwt_claims(&access);
    assert_eq!(claims["aud"], gw.resource());
    assert_eq!(claims["iss"], gw.base);
    assert_eq!(claims["client_id"], client_id);
    assert_eq!(
        claims["scope"], body["scope"],
        "the response scope is the token's scope"
    );
    for c in ["sub", "exp", "iat", "nbf", "jti"] {
        assert!(claims.get(c).is_some(), "claim {c}");
    }

    // 7. MCP with the token: initialize, list (filtered), call, identity reaches the tool.
    let sid = gw.mcp_session(&access).await;
    let (status, _, list) = gw
        .mcp(
            Some(&access),
            Some(&sid),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        )
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo") && names.contains(&"whoami"));
    assert!(
        !names.contains(&"add_note"),
        "tools the token may not call are hidden: {names:?}"
    );
    let (status, _, echo) = gw
        .call_tool(&access, &sid, "echo", json!({"message": "hello gateway"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(echo["result"]["content"][0]["text"], "hello gateway");
    let (_, _, who) = gw.call_tool(&access, &sid, "whoami", json!({})).await;
    let who: Value =
        serde_json::from_str(who["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(who["sub"], "local-user");
    assert_eq!(who["client_id"], client_id);
    assert_eq!(who["scopes"], json!(["mcp:read"]));

    // 7b. Insufficient scope: 403 naming only what this call needs.
    let (status, headers, _) = gw
        .call_tool(&access, &sid, "add_note", json!({"text": "x"}))
        .await;
    assert_eq!(status, 403);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"mcp:write\""), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    // 8. Refresh: a new pair; the old refresh token is rotated.
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, renewed) = gw.refresh(&client_id, refresh).await;
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["refresh_token"], body["refresh_token"]);
    let new_access = renewed["access_token"].as_str().unwrap();
    let (status, _, _) = gw
        .call_tool(new_access, &sid, "echo", json!({"message": "again"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .refresh(&client_id, renewed["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    let (status, replay) = gw.refresh(&client_id, refresh).await;
    assert_eq!(status, 400);
    assert_eq!(replay["error"], "invalid_grant");

    gw.stop().await;
}

#[tokio::test]
async fn refresh_retry_in_grace_window_then_replay_revokes_family() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let (s, r2) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    // The client lost the response and retries with the old token: allowed once more, and
    // the lost successor is superseded.
    gw.clock.advance(5);
    let (s, r2b) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200, "{r2b}");
    let (s, r3) = gw
        .refresh(&client_id, r2b["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(s, 200);
    // A replay of the first token now revokes the family: every token of it stops working.
    let (s, _) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 400);
    for dead in [&r2, &r3] {
        let (s, _) = gw
            .refresh(&client_id, dead["refresh_token"].as_str().unwrap())
            .await;
        assert_eq!(s, 400);
    }
    let (status, _, _) = gw
        .mcp(
            Some(r3["access_token"].as_str().unwrap()),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    assert_eq!(status, 401);
    gw.stop().await;
}

/// How many `refresh_replayed` events the operator's page has, and the replay counter.
fn refresh_replays(gw: &common::TestGateway) -> (usize, u64) {
    let events = gw
        .state
        .events
        .recent()
        .iter()
        .filter(|e| e.event == "refresh_replayed")
        .count();
    let counter = gw
        .state
        .metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix("mcp_gateway_replays_detected_total{outcome=\"refresh_token\"}")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    (events, counter)
}

async fn ping_status(gw: &common::TestGateway, access: &str) -> u16 {
    gw.mcp(
        Some(access),
        None,
        json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
    )
    .await
    .0
}

/// Issue 12: someone else using the rotated-out token inside the grace window must not fork
/// the family. The successor it supersedes is dead, and when its holder comes back that is a
/// replay: the whole family goes (the other chain included), with an event and a metric,
/// rather than the legitimate client being locked out while the other chain lives on.
#[tokio::test]
async fn a_retry_in_the_grace_window_never_forks_the_family() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let (s, mine) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    gw.clock.advance(1);
    let (s, theirs) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200, "{theirs}");
    assert_eq!(refresh_replays(&gw), (0, 0), "a retry is not a replay");

    // The holder of the superseded successor comes back.
    let (s, body) = gw
        .refresh(&client_id, mine["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(refresh_replays(&gw), (1, 1));
    // Neither chain survives: the other refresh token and every access token are dead.
    let (s, _) = gw
        .refresh(&client_id, theirs["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(s, 400, "the other chain is revoked too");
    for access in [
        &t.access,
        mine["access_token"].as_str().unwrap(),
        theirs["access_token"].as_str().unwrap(),
    ] {
        assert_eq!(ping_status(&gw, access).await, 401);
    }
    gw.stop().await;
}

/// Twenty parallel refreshes of one token through the proxy leave at most one live chain:
/// of the refresh tokens handed out, at most one works afterwards (never two), and the
/// others are replays that revoke the family with an event and a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_refreshes_leave_at_most_one_live_chain() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let results =
        futures_util::future::join_all((0..20).map(|_| gw.refresh(&client_id, &t.refresh))).await;
    let issued: Vec<Value> = results
        .into_iter()
        .map(|(s, body)| {
            assert!(s == 200 || s == 400, "{s} {body}");
            body
        })
        .filter(|b| b.get("refresh_token").is_some())
        .collect();
    assert_eq!(issued.len(), 20, "inside the window every retry succeeds");
    let mut working = 0;
    for b in &issued {
        let (s, body) = gw
            .refresh(&client_id, b["refresh_token"].as_str().unwrap())
            .await;
        match s {
            200 => working += 1,
            400 => assert_eq!(body["error"], "invalid_grant"),
            _ => panic!("{s} {body}"),
        }
    }
    assert!(working <= 1, "{working} chains were live");
    let (events, counter) = refresh_replays(&gw);
    assert!(
        events >= 1 && counter >= 1,
        "no replay recorded: {events} {counter}"
    );
    // The family is revoked: no access token handed out works any more.
    for b in &issued {
        assert_eq!(
            ping_status(&gw, b["access_token"].as_str().unwrap()).await,
            401
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_grace_period_is_replay() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let (s, r2) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    gw.clock.advance(60);
    let (s, body) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let (s, _) = gw
        .refresh(&client_id, r2["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(s, 400, "the family is revoked");
    gw.stop().await;
}

#[tokio::test]
async fn write_scope_calls_state_changing_tools_and_admin_implies_it() {
    let gw = common::spawn().await;
    for scope in ["mcp:write", "mcp:admin"] {
        let (_, t) = gw.login(Some(scope)).await;
        let sid = gw.mcp_session(&t.access).await;
        let (s, _, v) = gw
            .call_tool(&t.access, &sid, "add_note", json!({"text": scope}))
            .await;
        assert_eq!(s, 200, "{v}");
        let (_, _, v) = gw.call_tool(&t.access, &sid, "list_notes", json!({})).await;
        assert!(
            v["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains(scope)
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn default_scope_and_auto_approve() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let client_id = gw.register().await;
    let p = pkce();
    let res = gw
        .http
        .get(gw.authorize_url(&client_id, &p, None))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302, "auto-approve skips the consent page");
    let loc = res.headers()["location"].to_str().unwrap().to_string();
    let code = query_param(&loc, "code").unwrap();
    let (s, body) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(s, 200);
    assert_eq!(body["scope"], "mcp:read mcp:write");
    gw.stop().await;
}

#[tokio::test]
async fn stateless_2026_requests_are_served() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{
    "name":"echo","arguments":{"message":"stateless"},
    "_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientInfo":{"name":"it","version":"1"},
        "io.modelcontextprotocol/clientCapabilities":{}
    }}});
    let res = gw
        .http
        .post(gw.url("/mcp"))
        .bearer_auth(&t.access)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("mcp-session-id").is_none(),
        "no session in 2026-07-28"
    );
    let v = common::jsonrpc_body(&res.text().await.unwrap());
    assert_eq!(v["result"]["content"][0]["text"], "stateless", "{v}");
    gw.stop().await;
}
