//! Confidential clients, client credentials, pre-registered clients, introspection, and
//! the expiry of clients nobody uses.

use base64::Engine as _;
use mcp_oauth_gateway::config::ClientConfig;
use serde_json::{Value, json};

use crate::common::{self, REDIRECT, TestGateway, jwt_claims, pkce};

async fn register_confidential(gw: &TestGateway, body: Value) -> (String, String) {
    let res = gw
        .http
        .post(gw.url("/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["client_secret_expires_at"], 0);
    (
        v["client_id"].as_str().unwrap().into(),
        v["client_secret"].as_str().unwrap().into(),
    )
}

async fn client_credentials(
    gw: &TestGateway,
    id: &str,
    secret: &str,
    scope: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let res = gw
        .http
        .post(gw.url("/token"))
        .basic_auth(id, Some(secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn service_client_gets_a_token_by_client_credentials_and_calls_a_tool() {
    let gw = common::spawn().await;
    let (id, secret) = register_confidential(
        &gw,
        json!({"client_name": "chat backend", "grant_types": ["client_credentials"],
               "token_endpoint_auth_method": "client_secret_basic", "scope": "mcp:read mcp:write"}),
    )
    .await;
    let (s, h, body) = client_credentials(&gw, &id, &secret, Some("mcp:write")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token for client credentials"
    );
    assert_eq!(body["scope"], "mcp:write");
    let access = body["access_token"].as_str().unwrap();
    let claims = jwt_claims(access);
    assert_eq!(claims["sub"], id.as_str(), "the client is the subject");
    assert_eq!(claims["aud"], gw.resource());
    let sid = gw.mcp_session(access).await;
    let (s, _, v) = gw
        .call_tool(access, &sid, "add_note", json!({"text": "from a service"}))
        .await;
    assert_eq!(s, 200, "{v}");

    // Scope beyond what the client registered for, and a wrong secret.
    let (s, _, body) = client_credentials(&gw, &id, &secret, Some("mcp:admin")).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_scope")));
    let (s, h, body) = client_credentials(&gw, &id, "wrong", None).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(h["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let (s, _, body) = gw
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", "wrong"),
        ])
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_client")));
    let (s, _, body) = gw
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_client")),
        "a client_secret_basic client must use Basic"
    );
    let (post_id, post_secret) = register_confidential(
        &gw,
        json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let (s, _, body) = gw
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &post_id),
            ("client_secret", &post_secret),
        ])
        .await;
    assert_eq!(s, 200, "client_secret_post works for its clients: {body}");
    // A public client cannot use client credentials.
    let public = gw.register().await;
    let (s, _, body) = gw
        .token(&[("grant_type", "client_credentials"), ("client_id", &public)])
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn confidential_client_runs_the_code_flow_with_its_secret() {
    let gw = common::spawn().await;
    let (id, secret) = register_confidential(
        &gw,
        json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post"}),
    )
    .await;
    let p = pkce();
    let code = gw.code(&id, &p, None).await;
    let form = |extra: &[(&'static str, String)]| {
        let mut f: Vec<(&str, String)> = vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", p.verifier.clone()),
            ("client_id", id.clone()),
        ];
        f.extend_from_slice(extra);
        f
    };
    let res = gw
        .http
        .post(gw.url("/token"))
        .form(&form(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the secret is required");
    let res = gw
        .http
        .post(gw.url("/token"))
        .form(&form(&[("client_secret", "wrong".into())]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a wrong secret");
    // Client authentication comes first, so failed attempts did not use the code up.
    let res = gw
        .http
        .post(gw.url("/token"))
        .form(&form(&[("client_secret", secret.clone())]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    let (s, _) = gw.refresh(&id, refresh).await;
    assert_eq!(s, 400, "refreshing needs the secret too");
    gw.stop().await;
}

#[tokio::test]
async fn pre_registered_clients_from_config() {
    let secret = "operator-chosen-secret-value";
    let hash = mcp_oauth_gateway::secret::sha256_b64(secret);
    let gw = common::spawn_with(|c| {
        c.clients = vec![
            ClientConfig {
                client_id: "internal-service".into(),
                client_name: Some("Internal".into()),
                secret_sha256: Some(hash),
                redirect_uris: vec![],
                grant_types: Some(vec!["client_credentials".into()]),
                scope: Some("mcp:read".into()),
                token_endpoint_auth_method: None,
                introspect: false,
            },
            ClientConfig {
                client_id: "claude".into(),
                client_name: Some("Claude".into()),
                secret_sha256: None,
                redirect_uris: vec![REDIRECT.into()],
                grant_types: None,
                scope: None,
                token_endpoint_auth_method: None,
                introspect: false,
            },
        ]
    })
    .await;
    let (s, _, body) = client_credentials(&gw, "internal-service", secret, None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["scope"], "mcp:read");
    let p = pkce();
    let code = gw.code("claude", &p, None).await;
    let (s, _) = gw.redeem("claude", &code, &p.verifier).await;
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn introspection_answers_as_rfc7662_says() {
    let gw = common::spawn().await;
    let (rs_id, rs_secret) = register_confidential(
        &gw,
        json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic"}),
    )
    .await;
    let (client_id, t) = gw.login(Some("mcp:read")).await;
    let ask = |token: String| {
        gw.http
            .post(gw.url("/introspect"))
            .basic_auth(&rs_id, Some(&rs_secret))
            .form(&[("token", token)])
            .send()
    };
    let v: Value = ask(t.access.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], client_id);
    assert_eq!(v["scope"], "mcp:read");
    assert_eq!(v["sub"], "local-user");
    assert_eq!(v["aud"], gw.resource());
    let v: Value = ask(t.refresh.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (v["active"].as_bool(), v["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    // Unknown, foreign-audience and expired tokens are inactive, with nothing else said.
    for token in [
        "garbage".to_string(),
        gw.mint({
            let mut c = gw.claims();
            c["aud"] = json!("http://elsewhere/mcp");
            c
        }),
    ] {
        let v: Value = ask(token).await.unwrap().json().await.unwrap();
        assert_eq!(v, json!({"active": false}));
    }
    // Revoked tokens are inactive.
    let res = gw
        .http
        .post(gw.url("/revoke"))
        .form(&[
            ("token", t.access.as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = ask(t.access.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"active": false}));
    // A rotated-out refresh token is inactive.
    let (s, _) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    let v: Value = ask(t.refresh.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"active": false}));
    gw.clock.advance(7200);
    let (_, fresh) = gw.login(None).await;
    gw.clock.advance(3600 + 60);
    let v: Value = ask(fresh.access.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"active": false}), "expired");
    // Introspection needs a confidential client.
    let res = gw
        .http
        .post(gw.url("/introspect"))
        .form(&[
            ("token", t.access.as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = gw
        .http
        .post(gw.url("/introspect"))
        .form(&[("token", t.access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{rs_id}:nope"));
    let res = gw
        .http
        .post(gw.url("/introspect"))
        .header("authorization", format!("Basic {basic}"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let meta: Value = gw
        .get_json(gw.url("/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(meta["introspection_endpoint"], gw.url("/introspect"));
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn clients_nobody_uses_expire() {
    let gw = common::spawn_with(|c| c.client_ttl_seconds = 100).await;
    let idle = gw.register().await;
    let (active, _) = gw.login(None).await;
    gw.clock.advance(60);
    let p = pkce();
    let code = gw.code(&active, &p, None).await;
    assert_eq!(
        gw.redeem(&active, &code, &p.verifier).await.0,
        200,
        "a token keeps the client alive"
    );
    gw.clock.advance(60);
    let _ = gw.register().await; // registration sweeps expired clients
    let res = gw
        .http
        .get(gw.authorize_url(&idle, &p, None))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "the idle client is gone");
    let res = gw
        .http
        .get(gw.authorize_url(&active, &p, None))
        .send()
        .await
        .unwrap();
    assert_ne!(res.status(), 400, "the active one is not");
    gw.stop().await;
}
