//! Each role alone: built from its own state and driven with `oneshot`, with no listener,
//! no proxy and no other role. What the floor plan promises: a role needs nothing but the
//! shared parts and what it owns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use mcp_oauth_gateway::authz::{self, AuthzState};
use mcp_oauth_gateway::clock::FixedClock;
use mcp_oauth_gateway::config::SigningAlg;
use mcp_oauth_gateway::resource::{self, ResourceState};
use mcp_oauth_gateway::settings::Settings;
use mcp_oauth_gateway::shared::Shared;
use mcp_oauth_gateway::store::memory::InMemoryStore;
use mcp_oauth_gateway::tokens::keys::SigningKey;
use mcp_oauth_gateway::tokens::{jwks, sources};
use mcp_oauth_gateway::{Config, ops};
use serde_json::Value;
use tower::ServiceExt as _;

use super::common::T0;

const PUBLIC: &str = "http://127.0.0.1:9";

fn shared() -> Shared {
    let config = Config::for_test(std::env::temp_dir().join("mog-unused"));
    let settings = Settings::new(config, &url::Url::parse(PUBLIC).unwrap());
    let key = SigningKey::generate(SigningAlg::ES256).unwrap();
    Shared::new(
        settings,
        Arc::new(InMemoryStore::new()),
        Arc::new(FixedClock::new(T0)),
        Arc::new(key.into()),
    )
    .unwrap()
}

fn verifier(shared: &Shared) -> Arc<mcp_oauth_gateway::tokens::verify::Verifier> {
    Arc::new(sources::verifier(&shared.settings, shared.keys.clone()).unwrap())
}

async fn json(res: axum::response::Response) -> Value {
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_authorization_server_serves_alone() {
    let shared = shared();
    let state = AuthzState::new(shared.clone(), verifier(&shared));
    let app = authz::router(state);
    let res = app
        .clone()
        .oneshot(
            Request::get("/.well-known/oauth-authorization-server")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let meta = json(res).await;
    assert_eq!(meta["issuer"], PUBLIC);
    assert_eq!(meta["registration_endpoint"], format!("{PUBLIC}/register"));

    let mut req = Request::post("/register")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"redirect_uris":["http://127.0.0.1:5/cb"]}"#))
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let client_id = json(res).await["client_id"].as_str().unwrap().to_string();
    assert!(
        shared.store.client(&client_id).unwrap().is_some(),
        "the registration landed in the shared store"
    );
}

#[tokio::test]
async fn the_resource_server_guards_any_service_alone() {
    let shared = shared();
    let state = ResourceState::new(shared.clone(), verifier(&shared)).unwrap();
    let reached = Arc::new(AtomicBool::new(false));
    let seen = reached.clone();
    let mcp = tower::service_fn(move |_req: axum::extract::Request| {
        seen.store(true, Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response()) }
    });
    let res = resource::router(state, mcp)
        .oneshot(
            Request::post("/mcp")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{PUBLIC}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{challenge}"
    );
    assert!(!reached.load(Ordering::SeqCst), "no token, no MCP server");
}

#[tokio::test]
async fn operations_and_jwks_serve_from_the_shared_parts_alone() {
    let shared = shared();
    let res = ops::router(shared.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = jwks::router(shared.keys.clone())
        .oneshot(Request::get("/jwks.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json(res).await["keys"][0]["kid"], shared.keys.current().kid);
}
