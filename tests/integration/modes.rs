//! Identity providers besides the built-in one: an external issuer (a fake IdP on port 0:
//! discovery, JWKS, key rotation, outage), an application's HS256 secret, and API keys.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use mcp_oauth_gateway::config::{AuthMode, SigningAlg};
use mcp_oauth_gateway::secret::sha256_b64;
use mcp_oauth_gateway::tokens::keys::SigningKey;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{self, T0, TestGateway};

fn init() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}})
}

fn claims(iss: &str, aud: &str) -> Value {
    json!({"iss": iss, "sub": "idp-user", "aud": aud, "exp": T0 + 600, "iat": T0,
           "scope": "mcp:read", "azp": "some-client"})
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

async fn status(gw: &TestGateway, token: &str) -> u16 {
    gw.mcp(Some(token), None, init()).await.0
}

/// A fake OpenID provider: discovery and a JWKS whose keys the test can swap.
async fn fake_idp(keys: Arc<Mutex<Vec<Arc<SigningKey>>>>) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let iss = issuer.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let iss = iss.clone();
                async move { axum::Json(json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")})) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let keys = keys.lock().unwrap().clone();
                async move {
                    axum::Json(json!({"keys": keys.iter().map(|k| serde_json::to_value(&k.jwk).unwrap()).collect::<Vec<_>>()}))
                }
            }),
        );
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    (issuer, stop)
}

#[tokio::test]
async fn external_issuer_tokens_for_our_audience_pass_others_fail() {
    let first = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
    let keys = Arc::new(Mutex::new(vec![first.clone()]));
    let (issuer, idp_stop) = fake_idp(keys.clone()).await;
    let audience = "https://mcp.example.com/mcp";
    let iss = issuer.clone();
    let gw = common::spawn_with(move |c| {
        c.auth_mode = AuthMode::External;
        c.external.issuer = iss;
        c.external.audience = audience.into();
    })
    .await;

    // Discovery points clients at the external issuer; our own AS is off.
    let prm: Value = gw
        .get_json(gw.url("/.well-known/oauth-protected-resource/mcp"))
        .await;
    assert_eq!(prm["authorization_servers"], json!([issuer]));
    assert!(prm.get("jwks_uri").is_none());
    assert_eq!(
        gw.get_status(gw.url("/.well-known/oauth-authorization-server"))
            .await,
        404
    );
    assert_eq!(
        gw.http
            .post(gw.url("/register"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    assert_eq!(
        status(&gw, &sign(&first, &claims(&issuer, audience))).await,
        200
    );
    assert_eq!(
        status(&gw, &sign(&first, &claims(&issuer, "account"))).await,
        401,
        "the IdP's default audience is refused"
    );
    assert_eq!(
        status(&gw, &sign(&first, &claims("http://evil.example", audience))).await,
        401
    );
    let stranger = SigningKey::generate(SigningAlg::ES256).unwrap();
    assert_eq!(
        status(&gw, &sign(&stranger, &claims(&issuer, audience))).await,
        401
    );

    // The IdP rotates its key: one refetch on the unknown kid (after the rate limit) finds it.
    let rotated = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
    keys.lock().unwrap().push(rotated.clone());
    gw.clock.advance(31);
    assert_eq!(
        status(&gw, &sign(&rotated, &claims(&issuer, audience))).await,
        200
    );

    // The IdP goes down: the cached keys keep working, even past their TTL.
    idp_stop.cancel();
    gw.clock.advance(400);
    assert_eq!(
        status(&gw, &sign(&first, &claims(&issuer, audience))).await,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn shared_secret_mode_accepts_the_applications_hs256_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "an application secret of at least thirty-two bytes";
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let gw = common::spawn_with(move |c| {
        c.auth_mode = AuthMode::SharedSecret;
        c.shared_secret.issuer = "https://app.example.com".into();
        c.shared_secret.audience = "mcp".into();
        c.shared_secret.secret_file = Some(file);
    })
    .await;
    let hs = |claims: &Value, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(
        status(&gw, &hs(&claims("https://app.example.com", "mcp"), secret)).await,
        200
    );
    assert_eq!(
        status(
            &gw,
            &hs(&claims("https://app.example.com", "other"), secret)
        )
        .await,
        401
    );
    assert_eq!(
        status(&gw, &hs(&claims("https://evil.example", "mcp"), secret)).await,
        401
    );
    assert_eq!(
        status(
            &gw,
            &hs(
                &claims("https://app.example.com", "mcp"),
                "a different secret of thirty-two bytes!!"
            )
        )
        .await,
        401
    );
    let mut expired = claims("https://app.example.com", "mcp");
    expired["exp"] = json!(T0 - 100);
    assert_eq!(status(&gw, &hs(&expired, secret)).await, 401);
    // Asymmetric tokens mean nothing here.
    assert_eq!(
        status(&gw, &gw.mint(claims("https://app.example.com", "mcp"))).await,
        401
    );
    assert_eq!(gw.get_status(gw.url("/authorize")).await, 404);
    gw.stop().await;
}

#[tokio::test]
async fn api_keys_beside_oauth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nname = \"ci-bot\"\nsha256 = \"{}\"\nscopes = [\"mcp:read\"]\n",
            sha256_b64("key-0123456789abcdef")
        ),
    )
    .unwrap();
    let gw = common::spawn_with(move |c| {
        c.api_keys.enabled = true;
        c.api_keys.file = Some(file);
        c.api_keys.deprecated = true;
    })
    .await;
    let (s, h, _) = gw.mcp(Some("key-0123456789abcdef"), None, init()).await;
    assert_eq!(s, 200);
    let sid = h["mcp-session-id"].to_str().unwrap().to_string();
    let (s, _, v) = gw
        .call_tool("key-0123456789abcdef", &sid, "whoami", json!({}))
        .await;
    assert_eq!(s, 200);
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("ci-bot")
    );
    let (s, _, _) = gw
        .call_tool(
            "key-0123456789abcdef",
            &sid,
            "add_note",
            json!({"text": "x"}),
        )
        .await;
    assert_eq!(s, 403, "the key's scopes apply");
    assert_eq!(status(&gw, "key-wrong").await, 401);
    // OAuth still works beside the keys.
    let (_, t) = gw.login(None).await;
    assert_eq!(status(&gw, &t.access).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn external_opaque_tokens_are_introspected_and_cached() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/introspect",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                assert!(headers.get("authorization").is_some(), "the gateway authenticates");
                let answer = if body.contains("token=good-opaque") {
                    json!({"active": true, "sub": "opaque-user", "scope": "mcp:read",
                           "aud": "https://mcp.example.com/mcp", "exp": T0 + 600, "client_id": "app"})
                } else if body.contains("token=other-aud") {
                    json!({"active": true, "sub": "x", "aud": "https://elsewhere", "exp": T0 + 600})
                } else {
                    json!({"active": false})
                };
                axum::Json(answer)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let ep = endpoint.clone();
    let gw = common::spawn_with(move |c| {
        c.auth_mode = AuthMode::External;
        c.external.issuer = "https://idp.example.com".into();
        c.external.audience = "https://mcp.example.com/mcp".into();
        c.external.introspection_endpoint = Some(ep);
        c.external.introspection_client_id = Some("gateway".into());
    })
    .await;
    assert_eq!(status(&gw, "good-opaque").await, 200);
    assert_eq!(status(&gw, "good-opaque").await, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the answer is cached");
    assert_eq!(
        status(&gw, "other-aud").await,
        401,
        "another audience is refused"
    );
    assert_eq!(status(&gw, "revoked-opaque").await, 401);
    gw.clock.advance(61);
    assert_eq!(status(&gw, "good-opaque").await, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 4, "asked again after a minute");
    gw.stop().await;
}
