//! Confidential clients, client credentials, pre-registered clients, introspection, and
//! the expiry of clients nobody uses.

use base64::Engine as _;
use mcp_oauth_gateway::config::{ClientConfig, Config, InitialAccessToken, UserConfig};
use mcp_oauth_gateway::secret::sha256_b64;
use serde_json::{Value, json};

use crate::common::{self, REDIRECT, TestGateway, form_field, jwt_claims, pkce, query_param};

/// The initial access token the operator hands to whoever registers services.
const IAT: &str = "initial-access-token-for-services";

/// A gateway that accepts registrations presenting [`IAT`], bounded by `scope`.
fn with_iat(c: &mut Config, scope: Option<&str>) {
    c.initial_access_tokens = vec![InitialAccessToken {
        name: "deploy-pipeline".into(),
        sha256: sha256_b64(IAT),
        scope: scope.map(str::to_string),
    }];
}

async fn post_register(gw: &TestGateway, iat: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = gw.http.post(gw.url("/register")).json(body);
    if let Some(t) = iat {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Register a confidential client anonymously.
async fn register_confidential(gw: &TestGateway, body: Value) -> (String, String) {
    register_with(gw, None, body).await
}

/// Register a service (client credentials), presenting the initial access token.
async fn register_service(gw: &TestGateway, body: Value) -> (String, String) {
    register_with(gw, Some(IAT), body).await
}

async fn register_with(gw: &TestGateway, iat: Option<&str>, body: Value) -> (String, String) {
    let res = post_register(gw, iat, &body).await;
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
    let gw = common::spawn_with(|c| with_iat(c, None)).await;
    let (id, secret) = register_service(
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
    let (post_id, post_secret) = register_service(
        &gw,
        json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post",
               "scope": "mcp:read"}),
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
                grant_types: Some(vec!["client_credentials".into()]),
                scope: Some("mcp:read".into()),
                ..Default::default()
            },
            ClientConfig {
                client_id: "batch-job".into(),
                secret_sha256: Some(mcp_oauth_gateway::secret::sha256_b64("batch-job-secret")),
                grant_types: Some(vec!["client_credentials".into()]),
                ..Default::default()
            },
            ClientConfig {
                client_id: "claude".into(),
                client_name: Some("Claude".into()),
                redirect_uris: vec![REDIRECT.into()],
                ..Default::default()
            },
        ]
    })
    .await;
    let (s, _, body) = client_credentials(&gw, "internal-service", secret, None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["scope"], "mcp:read");
    let (s, _, body) = client_credentials(&gw, "batch-job", "batch-job-secret", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["scope"], "mcp:read mcp:write mcp:admin",
        "a configured entry without scope keeps its documented default: all offered"
    );
    let p = pkce();
    let code = gw.code("claude", &p, None).await;
    let (s, _) = gw.redeem("claude", &code, &p.verifier).await;
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn introspection_answers_as_rfc7662_says() {
    // A resource server the operator configured to introspect any token.
    let rs_id = "resource-server".to_string();
    let rs_secret = "resource-server-secret".to_string();
    let hash = sha256_b64(&rs_secret);
    let gw = common::spawn_with(|c| c.clients = vec![resource_server(&hash)]).await;
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

fn resource_server(secret_hash: &str) -> ClientConfig {
    ClientConfig {
        client_id: "resource-server".into(),
        client_name: Some("Resource server".into()),
        secret_sha256: Some(secret_hash.into()),
        grant_types: Some(vec![]),
        introspect: true,
        ..Default::default()
    }
}

const CC_BASIC: &str = "client_secret_basic";

/// Issue 12: an anonymous registration must not create a client that gets tokens without a
/// person, also when users sign in; an unknown initial access token is an RFC 6750 refusal.
#[tokio::test]
async fn anonymous_registration_cannot_create_a_client_credentials_client() {
    let gw = common::spawn_with(|c| {
        with_iat(c, None);
        c.users = vec![UserConfig {
            name: "alice".into(),
            password_hash: None,
            scopes: None,
            admin: false,
        }];
    })
    .await;
    let body =
        json!({"token_endpoint_auth_method": CC_BASIC, "grant_types": ["client_credentials"]});
    let res = post_register(&gw, None, &body).await;
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client_metadata");
    let why = v["error_description"].as_str().unwrap();
    assert!(why.contains("initial access token"), "{why}");
    assert!(v.get("client_secret").is_none());

    let res = post_register(&gw, Some("not-the-token"), &body).await;
    assert_eq!(res.status(), 401);
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(!challenge.contains("not-the-token"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"], "invalid_token");
    assert!(!v.to_string().contains("not-the-token"));
    let res = gw
        .http
        .post(gw.url("/register"))
        .basic_auth("x", Some("y"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "not a bearer token");

    // Anonymous code-flow clients still register, public or confidential.
    let _ = gw.register().await;
    let _ = register_confidential(
        &gw,
        json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": CC_BASIC}),
    )
    .await;
    // The initial access token registers the service.
    let (id, secret) = register_service(
        &gw,
        json!({"token_endpoint_auth_method": CC_BASIC, "grant_types": ["client_credentials"],
               "scope": "mcp:read"}),
    )
    .await;
    let (s, _, body) = client_credentials(&gw, &id, &secret, None).await;
    assert_eq!(
        (s, body["scope"].as_str()),
        (200, Some("mcp:read")),
        "{body}"
    );
    let events = gw.state.events.recent();
    assert!(
        events.iter().any(|e| e.event == "registration_refused"),
        "the unknown token is a security event"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_initial_access_token_bounds_the_scope_of_what_it_registers() {
    let gw = common::spawn_with(|c| with_iat(c, Some("mcp:read"))).await;
    let res = post_register(
        &gw,
        Some(IAT),
        &json!({"token_endpoint_auth_method": CC_BASIC, "grant_types": ["client_credentials"],
                "scope": "mcp:read mcp:write mcp:admin"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["scope"], "mcp:read",
        "the intersection, said in the response"
    );
    let (id, secret) = (
        v["client_id"].as_str().unwrap().to_string(),
        v["client_secret"].as_str().unwrap().to_string(),
    );
    let (s, _, body) = client_credentials(&gw, &id, &secret, None).await;
    assert_eq!(
        (s, body["scope"].as_str()),
        (200, Some("mcp:read")),
        "{body}"
    );
    let (s, _, body) = client_credentials(&gw, &id, &secret, Some("mcp:admin")).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_scope")));
    let res = post_register(
        &gw,
        Some(IAT),
        &json!({"token_endpoint_auth_method": CC_BASIC, "grant_types": ["client_credentials"],
                "scope": "mcp:admin"}),
    )
    .await;
    assert_eq!(res.status(), 400, "nothing left of what it asked for");
    let meta: Value = gw
        .get_json(gw.url("/.well-known/oauth-authorization-server"))
        .await;
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials")),
        "advertised: an initial access token can register such clients"
    );
    gw.stop().await;
}

/// Issue 12 item 2: a registered client that named no scope gets none by client credentials.
#[tokio::test]
async fn a_registered_service_without_scope_gets_no_scope() {
    let gw = common::spawn_with(|c| with_iat(c, None)).await;
    let (id, secret) = register_service(
        &gw,
        json!({"token_endpoint_auth_method": CC_BASIC, "grant_types": ["client_credentials"]}),
    )
    .await;
    for scope in [None, Some("mcp:read")] {
        let (s, _, body) = client_credentials(&gw, &id, &secret, scope).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{body}"
        );
        let why = body["error_description"].as_str().unwrap();
        assert!(why.contains("registered no scope"), "{why}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn metadata_advertises_client_credentials_only_when_a_client_can_get_it() {
    let gw = common::spawn().await;
    let meta: Value = gw
        .get_json(gw.url("/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(
        meta["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    gw.stop().await;
}

/// Issue 12 item 3: the registered scope bounds the code flow, its consent page, its token
/// and its refreshes.
#[tokio::test]
async fn the_registered_scope_bounds_the_code_flow() {
    let gw = common::spawn().await;
    let res = post_register(
        &gw,
        None,
        &json!({"redirect_uris": [REDIRECT], "scope": "mcp:read"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = pkce();
    let page = gw
        .http
        .get(gw.authorize_url(&id, &p, Some("mcp:read mcp:write mcp:admin")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(">mcp:read<"), "{html}");
    assert!(
        !html.contains("mcp:write") && !html.contains("mcp:admin"),
        "{html}"
    );
    let _ = form_field(&html, "csrf_token");
    let code = gw.code(&id, &p, Some("mcp:read mcp:write")).await;
    let (s, body) = gw.redeem(&id, &code, &p.verifier).await;
    assert_eq!(
        (s, body["scope"].as_str()),
        (200, Some("mcp:read")),
        "{body}"
    );
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["scope"],
        "mcp:read"
    );
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    let (s, _, body) = gw
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &id),
            ("scope", "mcp:read mcp:write"),
        ])
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );

    // Nothing left: an error redirect (RFC 6749 §4.1.2.1), no consent page.
    let res = gw
        .http
        .get(gw.authorize_url(&id, &pkce(), Some("mcp:write")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let loc = res.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    assert_eq!(query_param(&loc, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
    gw.stop().await;
}

/// Issue 12 item 4: a self-registered client introspects only its own tokens; a configured
/// resource server with `introspect = true` any.
#[tokio::test]
async fn introspection_of_other_clients_tokens_needs_a_configured_resource_server() {
    let rs_secret = "resource-server-secret";
    let hash = sha256_b64(rs_secret);
    let gw = common::spawn_with(|c| c.clients = vec![resource_server(&hash)]).await;
    let (_, victim) = gw.login(Some("mcp:read")).await;
    let (own_id, own_secret) = register_confidential(
        &gw,
        json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": CC_BASIC}),
    )
    .await;
    let p = pkce();
    let code = gw.code(&own_id, &p, None).await;
    let res = gw
        .http
        .post(gw.url("/token"))
        .basic_auth(&own_id, Some(&own_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", p.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let own: Value = res.json().await.unwrap();
    let ask = |id: &str, secret: &str, token: &str| {
        gw.http
            .post(gw.url("/introspect"))
            .basic_auth(id, Some(secret))
            .form(&[("token", token)])
            .send()
    };
    for token in [&victim.access, &victim.refresh] {
        let v: Value = ask(&own_id, &own_secret, token)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v, json!({"active": false}), "another client's token");
        let v: Value = ask("resource-server", rs_secret, token)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["active"], true, "the configured resource server sees it");
    }
    for field in ["access_token", "refresh_token"] {
        let token = own[field].as_str().unwrap();
        let v: Value = ask(&own_id, &own_secret, token)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["active"], true, "its own {field}");
        assert_eq!(v["client_id"], own_id.as_str());
    }
    gw.stop().await;
}

/// Issue 12 item 6: a self-registered client is marked unverified on the consent page, with
/// its id and where it sends the user; a configured one is not.
#[tokio::test]
async fn the_consent_page_marks_self_registered_clients_unverified() {
    let gw = common::spawn_with(|c| {
        c.clients = vec![ClientConfig {
            client_id: "claude".into(),
            client_name: Some("Claude".into()),
            redirect_uris: vec![REDIRECT.into()],
            ..Default::default()
        }]
    })
    .await;
    let res = post_register(
        &gw,
        None,
        &json!({"redirect_uris": [REDIRECT], "client_name": "Claude\u{202e}\u{2066}"}),
    )
    .await;
    let id = res.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = |id: String| {
        let url = gw.authorize_url(&id, &pkce(), None);
        let http = gw.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let html = page(id.clone()).await;
    assert!(html.contains("id=\"unverified\""), "{html}");
    assert!(html.contains(&id), "the client id is shown");
    assert!(html.contains("127.0.0.1"), "the redirect host is shown");
    assert!(!html.contains('\u{202e}') && !html.contains('\u{2066}'));
    let html = page("claude".into()).await;
    assert!(!html.contains("id=\"unverified\""), "{html}");
    gw.stop().await;
}
