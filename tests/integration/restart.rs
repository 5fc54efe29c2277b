//! State that must survive a restart (ECOSYSTEM #8): registered clients, refresh tokens,
//! access tokens issued before, revocations.

use serde_json::json;

use crate::common::{self, pkce};

fn gw_kid(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("signing-key.kid"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn clients_grants_and_tokens_survive_a_restart_and_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let public = "http://127.0.0.1:9";
    let gw = common::spawn_persistent(dir.path(), public).await;
    let (client_id, t) = gw.login(None).await;
    let (other_client, revoked) = gw.login(None).await;
    let res = gw
        .http
        .post(gw.url("/revoke"))
        .form(&[
            ("token", revoked.refresh.as_str()),
            ("client_id", other_client.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    gw.stop().await;
    // The operator rotates the signing key between the two runs.
    let old_kid = gw_kid(dir.path());
    mcp_oauth_gateway::tokens::keys::SigningKey::rotate(
        dir.path(),
        mcp_oauth_gateway::config::SigningAlg::ES256,
        common::T0,
    )
    .unwrap();

    let gw = common::spawn_persistent(dir.path(), public).await;
    assert_ne!(
        gw.state.keys.current().kid,
        old_kid,
        "new tokens are signed with the new key"
    );
    assert_eq!(
        gw.state.keys.jwks().keys.len(),
        2,
        "the old key is still published"
    );
    // The access token issued before still validates (same key, same issuer).
    let sid = gw.mcp_session(&t.access).await;
    let (s, _, v) = gw
        .call_tool(&t.access, &sid, "echo", json!({"message": "after restart"}))
        .await;
    assert_eq!(s, 200, "{v}");
    // The refresh token still refreshes, once.
    let (s, body) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200, "{body}");
    // The registered client can log in again without registering.
    let p = pkce();
    let code = gw.code(&client_id, &p, None).await;
    let (s, _) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(s, 200);
    // What was revoked stays revoked.
    let (s, _, _) = gw
        .mcp(
            Some(&revoked.access),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    assert_eq!(s, 401);
    gw.stop().await;
}

#[tokio::test]
async fn b_signing_keys_rotate_on_their_interval_without_a_restart() {
    use mcp_oauth_gateway::gateway::rotate_if_due;
    let dir = tempfile::tempdir().unwrap();
    let gw = common::spawn_with_ring(dir.path()).await;
    // The key was made at the test's T0.
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("signing-key.pem"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(common::T0))
        .unwrap();
    let (client_id, t) = gw.login(None).await;
    let old_kid = gw.state.keys.current().kid.clone();
    assert_eq!(common::jwt_header(&t.access)["kid"], old_kid.as_str());

    rotate_if_due(&gw.state, 600);
    assert_eq!(gw.state.keys.current().kid, old_kid, "not due yet");
    gw.clock.advance(600);
    rotate_if_due(&gw.state, 600);
    let new_kid = gw.state.keys.current().kid.clone();
    assert_ne!(new_kid, old_kid, "due: a new key signs");
    let jwks = gw.get_json(gw.url("/.well-known/jwks.json")).await;
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, [new_kid.clone(), old_kid.clone()], "both published");
    assert!(
        gw.state
            .events
            .recent()
            .iter()
            .any(|e| e.event == "key_rotated"),
        "the rotation is an audit event"
    );

    // The token signed before still works; the refreshed one carries the new kid and works.
    let sid = gw.mcp_session(&t.access).await;
    let (s, _, v) = gw
        .call_tool(&t.access, &sid, "echo", json!({"message": "old key"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, body) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200, "{body}");
    let fresh = body["access_token"].as_str().unwrap();
    assert_eq!(common::jwt_header(fresh)["kid"], new_kid.as_str());
    let sid = gw.mcp_session(fresh).await;
    let (s, _, v) = gw
        .call_tool(fresh, &sid, "echo", json!({"message": "new key"}))
        .await;
    assert_eq!(s, 200, "{v}");

    // Once every token the old key signed has expired, it leaves the JWKS.
    gw.clock.advance(3600 + 10);
    rotate_if_due(&gw.state, 0);
    let jwks = gw.get_json(gw.url("/.well-known/jwks.json")).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], new_kid.as_str());
}
