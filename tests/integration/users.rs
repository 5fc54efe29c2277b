//! Users who sign in before consent, scopes per user, and remembered consent.

use mcp_oauth_gateway::config::UserConfig;
use mcp_oauth_gateway::secret::hash_password;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::common::{self, TestGateway, form_field, jwt_claims, pkce, query_param};

async fn users_gateway() -> TestGateway {
    let alice = hash_password("wonderland").unwrap();
    let bob = hash_password("builder").unwrap();
    common::spawn_with(move |c| {
        c.users = vec![
            UserConfig {
                name: "alice".into(),
                password_hash: Some(alice),
                scopes: None,
                admin: false,
            },
            UserConfig {
                name: "bob".into(),
                password_hash: Some(bob),
                scopes: Some(vec!["mcp:read".into()]),
                admin: false,
            },
        ]
    })
    .await
}

/// Sign in on the login page; returns (cookie, consent page html).
async fn sign_in(
    gw: &TestGateway,
    authorize_url: &str,
    user: &str,
    password: &str,
) -> (u16, Option<String>, String) {
    let page = gw.http.get(authorize_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in"), "a login page comes first");
    let res = gw
        .http
        .post(gw.url("/login"))
        .form(&[
            ("request_id", form_field(&html, "request_id")),
            ("csrf_token", form_field(&html, "csrf_token")),
            ("username", user.into()),
            ("password", password.into()),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let cookie = res
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
    (status, cookie, res.text().await.unwrap())
}

#[tokio::test]
async fn users_sign_in_before_consent_and_become_the_subject() {
    let gw = users_gateway().await;
    let client_id = gw.register().await;
    let p = pkce();
    let url = gw.authorize_url(&client_id, &p, Some("mcp:read mcp:write"));

    let (status, cookie, html) = sign_in(&gw, &url, "alice", "wrong").await;
    assert_eq!(status, 401);
    assert!(cookie.is_none());
    assert!(html.contains("Wrong user or password"));
    let (status, _, _) = sign_in(&gw, &url, "nobody", "wonderland").await;
    assert_eq!(status, 401);

    let (status, cookie, html) = sign_in(&gw, &url, "alice", "wonderland").await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");
    assert!(html.contains("Approve") && html.contains("alice"));
    let form = [
        ("request_id", form_field(&html, "request_id")),
        ("csrf_token", form_field(&html, "csrf_token")),
        ("decision", "approve".to_string()),
    ];
    // The approval needs the session that signed in.
    let res = gw
        .http
        .post(gw.url("/consent"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let html = sign_in(&gw, &url, "alice", "wonderland").await.2;
    let form = [
        ("request_id", form_field(&html, "request_id")),
        ("csrf_token", form_field(&html, "csrf_token")),
        ("decision", "approve".to_string()),
    ];
    let res = gw
        .http
        .post(gw.url("/consent"))
        .header(COOKIE, &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let code = query_param(res.headers()[LOCATION].to_str().unwrap(), "code").unwrap();
    let (s, body) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(s, 200);
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["sub"],
        "alice"
    );

    // Remembered: the same client, same scopes, same user goes straight through.
    let res = gw
        .http
        .get(&url)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert!(query_param(res.headers()[LOCATION].to_str().unwrap(), "code").is_some());

    // The user sees and revokes the remembered consent; the client is asked again.
    let page = gw
        .http
        .get(gw.url("/consents"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&client_id));
    let res = gw
        .http
        .post(gw.url("/consents/revoke"))
        .header(COOKIE, &cookie)
        .form(&[("client_id", client_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let res = gw
        .http
        .get(&url)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the consent page again");
    assert_eq!(gw.get_status(gw.url("/consents")).await, 401);
    gw.stop().await;
}

#[tokio::test]
async fn a_user_grants_only_the_scopes_they_hold() {
    let gw = users_gateway().await;
    let client_id = gw.register().await;
    let p = pkce();
    let (status, cookie, html) = sign_in(
        &gw,
        &gw.authorize_url(&client_id, &p, Some("mcp:read mcp:write")),
        "bob",
        "builder",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        html.contains("mcp:read") && !html.contains("mcp:write"),
        "bob cannot grant write"
    );
    let res = gw
        .http
        .post(gw.url("/consent"))
        .header(COOKIE, cookie.unwrap())
        .form(&[
            ("request_id", form_field(&html, "request_id")),
            ("csrf_token", form_field(&html, "csrf_token")),
            ("decision", "approve".to_string()),
        ])
        .send()
        .await
        .unwrap();
    let code = query_param(res.headers()[LOCATION].to_str().unwrap(), "code").unwrap();
    let (_, body) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(body["scope"], "mcp:read");
    // Asking only for what bob may not grant ends in access_denied.
    let (status, _, _) = sign_in(
        &gw,
        &gw.authorize_url(&client_id, &p, Some("mcp:admin")),
        "bob",
        "builder",
    )
    .await;
    assert_eq!(status, 302);
    gw.stop().await;
}

#[tokio::test]
async fn remembering_consent_can_be_turned_off() {
    let gw = common::spawn_with(|c| c.remember_consent_seconds = 0).await;
    let client_id = gw.register().await;
    let p = pkce();
    let url = gw.authorize_url(&client_id, &p, None);
    let _ = gw.consent(&url, "approve").await;
    let res = gw.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200, "asked every time");
    gw.stop().await;
}
