//! Issue 14: the MCP hot path checks revocations in memory. A revocation written to the
//! store by someone else (another replica) is refused once the view has synced, and not
//! before: the request never reads the database while the view is fresh.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use mcp_oauth_gateway::Config;
use mcp_oauth_gateway::clock::{Clock, FixedClock};
use mcp_oauth_gateway::config::SigningAlg;
use mcp_oauth_gateway::resource::{self, ResourceState};
use mcp_oauth_gateway::settings::Settings;
use mcp_oauth_gateway::shared::Shared;
use mcp_oauth_gateway::store::memory::InMemoryStore;
use mcp_oauth_gateway::store::view::TRUST_WITHOUT_STORE;
use mcp_oauth_gateway::tokens::keys::SigningKey;
use mcp_oauth_gateway::tokens::sources;
use serde_json::json;
use tower::ServiceExt as _;

use super::common::{self, T0, jwt_claims};

/// The resource role alone (no gateway, so no background sync: only the test syncs), and a
/// token of its issuer for `jti`.
fn resource_alone() -> (Shared, Arc<FixedClock>, ResourceState) {
    let config = Config::for_test(std::env::temp_dir().join("mog-unused"));
    let settings = Settings::new(config, &url::Url::parse("http://127.0.0.1:9").unwrap());
    let key = SigningKey::generate(SigningAlg::ES256).unwrap();
    let clock = Arc::new(FixedClock::new(T0));
    let shared = Shared::new(
        settings,
        Arc::new(InMemoryStore::new()),
        clock.clone(),
        Arc::new(key.into()),
    )
    .unwrap();
    let verifier = Arc::new(sources::verifier(&shared.settings, shared.keys.clone()).unwrap());
    let state = ResourceState::new(shared.clone(), verifier).unwrap();
    (shared, clock, state)
}

fn token(shared: &Shared, jti: &str) -> String {
    let key = shared.keys.current();
    let mut head = jsonwebtoken::Header::new(key.alg);
    head.kid = Some(key.kid.clone());
    head.typ = Some("at+jwt".into());
    let claims = json!({
        "iss": shared.settings.issuer, "sub": "alice", "aud": shared.settings.resource,
        "exp": T0 + 3600, "iat": T0, "nbf": T0, "jti": jti,
        "scope": "mcp:read mcp:write", "client_id": "c"
    });
    jsonwebtoken::encode(&head, &claims, &key.encoding).unwrap()
}

async fn ping(state: &ResourceState, token: &str) -> StatusCode {
    let mcp = tower::service_fn(|_req: axum::extract::Request| async {
        Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response())
    });
    resource::router(state.clone(), mcp)
        .oneshot(
            Request::post("/mcp")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn another_replicas_revocation_is_refused_after_one_sync_and_not_before() {
    let (shared, clock, state) = resource_alone();
    shared.revocations.sync(&*shared.store, T0).unwrap();
    let access = token(&shared, "j1");
    assert_eq!(ping(&state, &access).await, StatusCode::OK);
    // Another replica revokes it: written to the store, not to this process's memory.
    shared.store.revoke_access_token("j1", T0 + 3600).unwrap();
    assert_eq!(
        ping(&state, &access).await,
        StatusCode::OK,
        "not synced yet: the request reads memory, not the database"
    );
    clock.advance(1);
    shared
        .revocations
        .sync(&*shared.store, clock.now())
        .unwrap();
    assert_eq!(ping(&state, &access).await, StatusCode::UNAUTHORIZED);
    let other = token(&shared, "j2");
    assert_eq!(
        ping(&state, &other).await,
        StatusCode::OK,
        "others still pass"
    );
}

#[tokio::test]
async fn a_view_past_its_bound_catches_up_before_answering() {
    let (shared, clock, state) = resource_alone();
    shared.revocations.sync(&*shared.store, T0).unwrap();
    let access = token(&shared, "j1");
    shared.store.revoke_access_token("j1", T0 + 3600).unwrap();
    assert_eq!(ping(&state, &access).await, StatusCode::OK);
    // No sync for longer than memory is trusted: the request itself catches up.
    clock.advance(TRUST_WITHOUT_STORE + 1);
    assert_eq!(ping(&state, &access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(shared.revocations.synced_at(), Some(clock.now()));
}

#[tokio::test]
async fn a_grant_revoked_in_the_store_is_refused_through_the_gateway_after_a_sync() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let session = gw.mcp_session(&t.access).await;
    let ping = json!({"jsonrpc":"2.0","id":2,"method":"ping"});
    let (s, _, _) = gw.mcp(Some(&t.access), Some(&session), ping.clone()).await;
    assert_eq!(s, 200);
    // As another replica would: straight into the shared store.
    let sub = jwt_claims(&t.access)["sub"].as_str().unwrap().to_string();
    let grants = gw.state.store.live_grants(gw.clock.now()).unwrap();
    let grant = grants.iter().find(|g| g.sub == sub).unwrap();
    gw.state.store.revoke_grant(&grant.id).unwrap();
    gw.state
        .revocations
        .sync(&*gw.state.store, gw.clock.now())
        .unwrap();
    let (s, _, _) = gw.mcp(Some(&t.access), Some(&session), ping).await;
    assert_eq!(s, 401);
    gw.stop().await;
}
