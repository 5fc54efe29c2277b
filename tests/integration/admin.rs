//! Operating the gateway: the operator's page (`/admin`: clients, grants, security events,
//! revocation, who may see it), the metrics it adds (key and introspection cache lookups,
//! live clients and grants), request ids in error bodies, and the cap on pending
//! authorization requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use mcp_oauth_gateway::config::{AuthMode, ClientConfig, UserConfig};
use mcp_oauth_gateway::proxy::{Backend, route};
use mcp_oauth_gateway::secret::hash_password;
use reqwest::header::{LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::common::{self, REDIRECT, T0, TestGateway, form_field, pkce, query_param};

const PATHS: [&str; 5] = [
    "/admin",
    "/admin/login",
    "/admin/logout",
    "/admin/grants/revoke",
    "/admin/clients/revoke",
];

/// Where the page is reached: through the public proxy once its route table sends the
/// admin paths to the routes listener, else the routes listener itself (as the proxy would
/// forward: a loopback peer).
fn admin_url(gw: &TestGateway, path: &str) -> String {
    if PATHS.iter().all(|p| route(p, false) == Backend::Routes) {
        gw.url(path)
    } else {
        format!("http://{}{path}", gw.state.settings.config.routes_addr)
    }
}

/// The `name=value` of a cookie a response sets.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .find(|pair| pair.starts_with(&format!("{name}=")))
}

struct Page {
    status: u16,
    html: String,
    /// The CSRF cookie the page set, if it set one.
    csrf_cookie: Option<String>,
}

async fn admin_page(gw: &TestGateway, cookie: Option<&str>, headers: &[(&str, &str)]) -> Page {
    let mut req = gw.http.get(admin_url(gw, "/admin"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let csrf_cookie = set_cookie(&res, "mog_admin_csrf");
    if status == 200 {
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert!(res.headers().contains_key("content-security-policy"));
    }
    Page {
        status,
        // minijinja writes `/` as `&#x2f;` in HTML.
        html: res.text().await.unwrap().replace("&#x2f;", "/"),
        csrf_cookie,
    }
}

async fn post(
    gw: &TestGateway,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = gw.http.post(admin_url(gw, path)).form(form);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"it","version":"1"}}})
}

/// The status of an MCP request with `token`, and its challenge.
async fn mcp_status(gw: &TestGateway, token: &str) -> (u16, String) {
    let (status, headers, _) = gw.mcp(Some(token), None, initialize()).await;
    let challenge = headers
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, challenge)
}

/// Load the page (loopback, no admin user); returns (csrf cookie, csrf token, html).
async fn open_page(gw: &TestGateway) -> (String, String, String) {
    let page = admin_page(gw, None, &[]).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let cookie = page.csrf_cookie.expect("the page sets its CSRF cookie");
    let token = form_field(&page.html, "csrf_token");
    (cookie, token, page.html)
}

#[tokio::test]
async fn admin_lists_clients_grants_and_security_events() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(Some("mcp:read")).await;
    let res = gw
        .http
        .post(gw.url("/token"))
        .header("x-request-id", "rid-refresh-1")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", t.refresh.as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refreshed: Value = res.json().await.unwrap();

    let (_, _, html) = open_page(&gw).await;
    // The client: id, name, redirect URI, authentication, times.
    assert!(html.contains(&client_id), "{html}");
    assert!(html.contains("integration test"));
    assert!(html.contains(REDIRECT));
    assert!(html.contains(">none<"), "auth method shown");
    assert!(
        html.contains("2027-01-15T08:00:00Z"),
        "created at T0, in UTC"
    );
    // The grant: user, client, scopes.
    assert!(html.contains("id=\"grants\""));
    assert!(html.contains("<strong>local-user</strong>"));
    assert!(html.contains(">mcp:read<"));
    assert_eq!(html.matches("class=\"grant-row\"").count(), 1);
    // Security events, newest first, with source and request id.
    for event in [
        "client_registered",
        "code_issued",
        "code_redeemed",
        "refreshed",
    ] {
        assert!(html.contains(&format!(">{event}<")), "{event} in {html}");
    }
    let refreshed_at = html.find(">refreshed<").unwrap();
    assert!(refreshed_at < html.find(">client_registered<").unwrap());
    assert!(html.contains("rid-refresh-1"));
    assert!(html.contains(">127.0.0.1<"), "the source address");
    // No secret is on the page.
    for secret in [
        t.access.as_str(),
        t.refresh.as_str(),
        refreshed["access_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
    ] {
        assert!(!html.contains(secret));
    }
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_grant_ends_mcp_access_at_the_next_request() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    assert_eq!(mcp_status(&gw, &t.access).await.0, 200);

    let (cookie, csrf, html) = open_page(&gw).await;
    let grant_id = form_field(&html, "grant_id");
    let res = post(
        &gw,
        "/admin/grants/revoke",
        Some(&cookie),
        &[
            ("csrf_token", &csrf),
            ("grant_id", &grant_id),
            ("confirm", "yes"),
        ],
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/admin");

    let (status, challenge) = mcp_status(&gw, &t.access).await;
    assert_eq!(status, 401, "the same token is refused at its next request");
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="));
    let (status, body) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The remembered approval went with it: the user is asked again.
    let url = gw.authorize_url(&client_id, &pkce(), None);
    let (status, html) = authorize(&gw, &url).await;
    assert_eq!(status, 200, "a consent page, not a redirect with a code");
    assert!(html.contains("name=\"decision\""));

    let page = admin_page(&gw, Some(&cookie), &[]).await;
    assert!(page.html.contains("id=\"no-grants\""), "{}", page.html);
    assert!(page.html.contains(">admin_grant_revoked<"));
    assert!(page.csrf_cookie.is_none(), "the browser's cookie is kept");
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_client_deletes_it_and_revokes_its_grants() {
    let pinned: ClientConfig = toml::from_str(&format!(
        "client_id = \"pinned-app\"\nredirect_uris = [\"{REDIRECT}\"]"
    ))
    .unwrap();
    let gw = common::spawn_with(move |c| c.clients = vec![pinned]).await;
    let (doomed, t) = gw.login(None).await;
    let (bystander, other) = gw.login(None).await;
    // A client pinned in the config, with tokens of its own.
    let p = pkce();
    let code = gw.code("pinned-app", &p, None).await;
    let (status, pinned_tokens) = gw.redeem("pinned-app", &code, &p.verifier).await;
    assert_eq!(status, 200);
    let pinned_refresh = pinned_tokens["refresh_token"].as_str().unwrap();
    let pinned_access = pinned_tokens["access_token"].as_str().unwrap();

    let (cookie, csrf, html) = open_page(&gw).await;
    assert!(html.contains("pinned-app") && html.contains(">config<"));
    for id in [doomed.as_str(), "pinned-app"] {
        let res = post(
            &gw,
            "/admin/clients/revoke",
            Some(&cookie),
            &[("csrf_token", &csrf), ("client_id", id), ("confirm", "yes")],
            &[],
        )
        .await;
        assert_eq!(res.status(), 303, "{id}");
    }

    // The registered client is gone: its tokens and its id are refused.
    assert!(gw.state.client(&doomed).unwrap().is_none());
    assert_eq!(mcp_status(&gw, &t.access).await.0, 401);
    let (status, body) = gw.refresh(&doomed, &t.refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client")),
        "a deleted client cannot authenticate: {body}"
    );
    // The pinned client stays (the config defines it) but its grants are revoked.
    assert_eq!(mcp_status(&gw, pinned_access).await.0, 401);
    let (status, body) = gw.refresh("pinned-app", pinned_refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Others keep theirs.
    assert_eq!(mcp_status(&gw, &other.access).await.0, 200);
    let live = gw.state.store.live_grants(T0).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].client_id, bystander);

    let page = admin_page(&gw, Some(&cookie), &[]).await;
    assert_eq!(page.html.matches(">admin_client_revoked<").count(), 2);
    assert!(!page.html.contains(&format!("data-client-id=\"{doomed}\"")));
    gw.stop().await;
}

#[tokio::test]
async fn forged_or_cross_site_posts_are_refused_and_revoke_nothing() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let (cookie, csrf, html) = open_page(&gw).await;
    let grant_id = form_field(&html, "grant_id");
    // Another browser's page: a valid token for another cookie.
    let (other_cookie, other_csrf, _) = open_page(&gw).await;
    assert_ne!(csrf, other_csrf);

    struct Attempt<'a> {
        what: &'a str,
        cookie: Option<&'a str>,
        csrf: Option<&'a str>,
        headers: &'a [(&'a str, &'a str)],
    }
    let forged = "x".repeat(43);
    let attempts = [
        Attempt {
            what: "no token",
            cookie: Some(&cookie),
            csrf: None,
            headers: &[],
        },
        Attempt {
            what: "wrong token",
            cookie: Some(&cookie),
            csrf: Some(&forged),
            headers: &[],
        },
        Attempt {
            what: "no cookie",
            cookie: None,
            csrf: Some(&csrf),
            headers: &[],
        },
        Attempt {
            what: "another cookie's token",
            cookie: Some(&cookie),
            csrf: Some(&other_csrf),
            headers: &[],
        },
        Attempt {
            what: "the token with another cookie",
            cookie: Some(&other_cookie),
            csrf: Some(&csrf),
            headers: &[],
        },
        Attempt {
            what: "cross-site fetch metadata",
            cookie: Some(&cookie),
            csrf: Some(&csrf),
            headers: &[("sec-fetch-site", "cross-site")],
        },
        Attempt {
            what: "a foreign origin",
            cookie: Some(&cookie),
            csrf: Some(&csrf),
            headers: &[("origin", "http://evil.example")],
        },
    ];
    for a in &attempts {
        let mut form = vec![("grant_id", grant_id.as_str())];
        if let Some(t) = a.csrf {
            form.push(("csrf_token", t));
        }
        let res = post(&gw, "/admin/grants/revoke", a.cookie, &form, a.headers).await;
        assert_eq!(res.status(), 403, "{}", a.what);
    }
    let res = post(
        &gw,
        "/admin/clients/revoke",
        Some(&cookie),
        &[("client_id", &client_id)],
        &[],
    )
    .await;
    assert_eq!(res.status(), 403, "client revoke without a token");

    // Nothing was revoked.
    assert_eq!(mcp_status(&gw, &t.access).await.0, 200);
    assert!(gw.state.client(&client_id).unwrap().is_some());
    assert_eq!(gw.state.store.live_grants(T0).unwrap().len(), 1);
    // The same post with its token and cookie is accepted: the refusals were the CSRF check.
    let res = post(
        &gw,
        "/admin/grants/revoke",
        Some(&cookie),
        &[
            ("csrf_token", &csrf),
            ("grant_id", &grant_id),
            ("confirm", "yes"),
        ],
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(mcp_status(&gw, &t.access).await.0, 401);
    gw.stop().await;
}

#[tokio::test]
async fn remote_sources_are_refused_when_no_admin_user_is_configured() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let (cookie, csrf, html) = open_page(&gw).await;
    let grant_id = form_field(&html, "grant_id");

    // A client elsewhere, as our proxy forwards it (its address appended), or behind
    // another proxy that names it; a page that rebinds its DNS name to loopback.
    let remote: [&[(&str, &str)]; 4] = [
        &[("x-forwarded-for", "203.0.113.9")],
        &[("x-forwarded-for", "127.0.0.1, 198.51.100.4")],
        &[("forwarded", "for=203.0.113.9")],
        &[("host", "rebound.example:8080")],
    ];
    for headers in remote {
        let page = admin_page(&gw, Some(&cookie), headers).await;
        assert_eq!(page.status, 403, "{headers:?}");
        assert!(!page.html.contains(&grant_id), "nothing is shown");
        let res = post(
            &gw,
            "/admin/grants/revoke",
            Some(&cookie),
            &[("csrf_token", &csrf), ("grant_id", &grant_id)],
            headers,
        )
        .await;
        assert_eq!(res.status(), 403, "{headers:?}");
    }
    assert_eq!(mcp_status(&gw, &t.access).await.0, 200, "nothing revoked");
    // Loopback hops and names are fine.
    let local = admin_page(
        &gw,
        Some(&cookie),
        &[("x-forwarded-for", "127.0.0.1"), ("host", "localhost:8080")],
    )
    .await;
    assert_eq!(local.status, 200);
    gw.stop().await;
}

fn admin_users() -> Vec<UserConfig> {
    let user = |name: &str, password: &str, admin: bool| UserConfig {
        name: name.into(),
        password_hash: Some(hash_password(password).unwrap()),
        scopes: None,
        admin,
    };
    vec![
        user("ops", "correct horse", true),
        user("bob", "builder", false),
    ]
}

#[tokio::test]
async fn with_an_admin_user_everyone_signs_in_first() {
    let users = admin_users();
    let gw = common::spawn_with(move |c| c.users = users).await;

    // Even on loopback: the sign-in form, not the page.
    let page = admin_page(&gw, None, &[]).await;
    assert_eq!(page.status, 401);
    assert!(page.html.contains("Sign in") && page.html.contains("action=\"/admin/login\""));
    assert!(!page.html.contains("id=\"clients\""));
    let cookie = page.csrf_cookie.expect("csrf cookie");
    let csrf = form_field(&page.html, "csrf_token");

    let login = |user: &'static str, password: &'static str, token: &str| {
        let form = [
            ("csrf_token", token.to_string()),
            ("username", user.to_string()),
            ("password", password.to_string()),
        ];
        let req = gw
            .http
            .post(admin_url(&gw, "/admin/login"))
            .header("cookie", cookie.as_str())
            .form(&form);
        async move { req.send().await.unwrap() }
    };
    for (user, password) in [("ops", "wrong"), ("bob", "builder"), ("nobody", "x")] {
        let res = login(user, password, &csrf).await;
        assert_eq!(res.status(), 401, "{user}");
        assert!(set_cookie(&res, "mog_session").is_none());
    }
    let res = login("ops", "correct horse", "forged").await;
    assert_eq!(res.status(), 403, "the sign-in form has a CSRF token too");
    let res = login("ops", "correct horse", &csrf).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/admin");
    let session = set_cookie(&res, "mog_session").expect("a session");

    // Signed in: the page, also from elsewhere.
    let page = admin_page(&gw, Some(&session), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("Signed in as <strong>ops</strong>"));
    assert!(page.html.contains(">admin_login<") && page.html.contains(">admin_login_failed<"));
    let remote = admin_page(&gw, Some(&session), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(remote.status, 200, "an admin may sign in from anywhere");
    // Forms are bound to the session: the sign-in form's token does not revoke.
    let session_csrf = form_field(&page.html, "csrf_token");
    assert_ne!(session_csrf, csrf);
    let both = format!("{session}; {cookie}");
    let res = post(
        &gw,
        "/admin/clients/revoke",
        Some(&both),
        &[("csrf_token", &csrf), ("client_id", "x")],
        &[],
    )
    .await;
    assert_eq!(res.status(), 403);
    let res = post(
        &gw,
        "/admin/clients/revoke",
        Some(&cookie),
        &[("csrf_token", &session_csrf), ("client_id", "x")],
        &[],
    )
    .await;
    assert_eq!(res.status(), 403, "without the session");
    let res = post(
        &gw,
        "/admin/clients/revoke",
        Some(&session),
        &[
            ("csrf_token", &session_csrf),
            ("client_id", "no-such-client"),
        ],
        &[],
    )
    .await;
    assert_eq!(res.status(), 404, "accepted, and there is no such client");

    // Signing out ends the session.
    let res = post(
        &gw,
        "/admin/logout",
        Some(&session),
        &[("csrf_token", &session_csrf)],
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(admin_page(&gw, Some(&session), &[]).await.status, 401);
    gw.stop().await;
}

async fn metrics(gw: &TestGateway) -> String {
    let routes = gw.state.settings.config.routes_addr;
    reqwest::get(format!("http://{routes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_key_cache_lookups_and_live_clients_and_grants() {
    let gw = common::spawn().await;
    let text = metrics(&gw).await;
    assert_eq!(series(&text, "mcp_gateway_live_grants "), 0);
    let (_, a) = gw.login(None).await;
    let (_, b) = gw.login(None).await;
    assert_eq!(mcp_status(&gw, &a.access).await.0, 200);
    assert_eq!(mcp_status(&gw, &b.access).await.0, 200);
    let text = metrics(&gw).await;
    let jwks = |outcome: &str| {
        series(
            &text,
            &format!("mcp_gateway_cache_lookups_total{{cache=\"jwks\",outcome=\"{outcome}\"}} "),
        )
    };
    assert_eq!(jwks("miss"), 1, "the keys are read once: {text}");
    assert!(jwks("hit") >= 1, "the second token finds them cached");
    assert_eq!(series(&text, "mcp_gateway_live_clients "), 2);
    assert_eq!(series(&text, "mcp_gateway_live_grants "), 2);

    let (cookie, csrf, html) = open_page(&gw).await;
    let grant_id = form_field(&html, "grant_id");
    let res = post(
        &gw,
        "/admin/grants/revoke",
        Some(&cookie),
        &[
            ("csrf_token", &csrf),
            ("grant_id", &grant_id),
            ("confirm", "yes"),
        ],
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    let text = metrics(&gw).await;
    assert_eq!(series(&text, "mcp_gateway_live_grants "), 1);
    gw.clock
        .advance(gw.state.settings.config.refresh_token_ttl + 1);
    let text = metrics(&gw).await;
    assert_eq!(series(&text, "mcp_gateway_live_grants "), 0, "expired");
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_introspection_cache_lookups() {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/introspect",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                axum::Json(json!({"active": true, "sub": "u", "scope": "mcp:read",
                    "aud": "https://mcp.example.com/mcp", "exp": T0 + 600}))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gw = common::spawn_with(move |c| {
        c.auth_mode = AuthMode::External;
        c.external.issuer = "https://idp.example.com".into();
        c.external.audience = "https://mcp.example.com/mcp".into();
        c.external.introspection_endpoint = Some(endpoint);
        c.external.introspection_client_id = Some("gateway".into());
    })
    .await;
    for _ in 0..3 {
        assert_eq!(mcp_status(&gw, "opaque-token").await.0, 200);
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let text = metrics(&gw).await;
    let lookups = |outcome: &str| {
        series(
            &text,
            &format!(
                "mcp_gateway_cache_lookups_total{{cache=\"introspection\",outcome=\"{outcome}\"}} "
            ),
        )
    };
    assert_eq!((lookups("hit"), lookups("miss")), (2, 1), "{text}");
    assert!(!text.contains("opaque-token"));
    gw.stop().await;
}

#[tokio::test]
async fn error_bodies_carry_the_request_id() {
    let gw = common::spawn().await;
    // An OAuth error (RFC 6749 §5.2 body plus `request_id`).
    let res = gw
        .http
        .post(gw.url("/token"))
        .header("x-request-id", "rid-oauth-1")
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "bogus"),
            ("client_id", "nobody"),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"v".repeat(43)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["request_id"], "rid-oauth-1");
    // Without one from the client, the id the proxy made up (and returned) is in the body.
    let res = gw
        .http
        .post(gw.url("/token"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    let header = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["request_id"], header.as_str());
    // The resource server's 401, in the JSON-RPC error's `data`.
    let res = gw
        .http
        .post(gw.url("/mcp"))
        .header("x-request-id", "rid-mcp-1")
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["data"]["request_id"], "rid-mcp-1", "{body}");
    // An invalid token too.
    let res = gw
        .http
        .post(gw.url("/mcp"))
        .header("x-request-id", "rid-mcp-2")
        .bearer_auth("not-a-jwt")
        .json(&initialize())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["data"]["request_id"], "rid-mcp-2");
    // The authorization endpoint's error page shows it.
    let res = gw
        .http
        .get(gw.url("/authorize?client_id=nobody"))
        .header("x-request-id", "rid-page-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("rid-page-1"));
    gw.stop().await;
}

/// GET an authorization URL; (status, Location or body).
async fn authorize(gw: &TestGateway, url: &str) -> (u16, String) {
    let res = gw.http.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    match res.headers().get(LOCATION) {
        Some(loc) => (status, loc.to_str().unwrap().to_string()),
        None => (status, res.text().await.unwrap()),
    }
}

/// POST the consent form of `page` with `decision`; (status, Location or body).
async fn answer(gw: &TestGateway, page: &str, decision: &str) -> (u16, String) {
    let res = gw
        .http
        .post(gw.url("/consent"))
        .form(&[
            ("request_id", form_field(page, "request_id")),
            ("csrf_token", form_field(page, "csrf_token")),
            ("decision", decision.into()),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    match res.headers().get(LOCATION) {
        Some(loc) => (status, loc.to_str().unwrap().to_string()),
        None => (status, res.text().await.unwrap()),
    }
}

/// Issue 12: a stranger who sends `max_pending_per_client` (100) authorization requests for
/// a client and abandons them must not lock the client out: the real request evicts the
/// oldest one and goes through to a token.
#[tokio::test]
async fn abandoned_authorizations_cannot_lock_a_client_out() {
    let gw = common::spawn().await;
    assert_eq!(gw.state.settings.config.max_pending_per_client, 100);
    let a = gw.register().await;
    let first = authorize(&gw, &gw.authorize_url(&a, &pkce(), None)).await;
    assert_eq!(first.0, 200);
    for _ in 1..100 {
        assert_eq!(
            authorize(&gw, &gw.authorize_url(&a, &pkce(), None)).await.0,
            200
        );
    }
    let p = pkce();
    let (status, page) = authorize(&gw, &gw.authorize_url(&a, &p, None)).await;
    assert_eq!(
        status, 200,
        "the real request gets its consent page: {page}"
    );
    let (status, loc) = answer(&gw, &page, "approve").await;
    assert_eq!(status, 302, "{loc}");
    let code = query_param(&loc, "code").expect("a code");
    assert_eq!(gw.redeem(&a, &code, &p.verifier).await.0, 200);
    // The stranger's oldest request gave way: its consent page says it expired.
    let (status, body) = answer(&gw, &first.1, "approve").await;
    assert_eq!(status, 400);
    assert!(body.contains("expired"), "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn pending_authorizations_are_capped_per_client_and_in_total() {
    let gw = common::spawn_with(|c| {
        c.max_pending_per_client = 2;
        c.max_pending_authorizations = 3;
    })
    .await;
    let a = gw.register().await;
    let b = gw.register().await;
    let c = gw.register().await;
    let (p1, p2, p3) = (pkce(), pkce(), pkce());
    let (status, page1) = authorize(&gw, &gw.authorize_url(&a, &p1, None)).await;
    assert_eq!(status, 200);
    let (status, page2) = authorize(&gw, &gw.authorize_url(&a, &p2, None)).await;
    assert_eq!(status, 200);

    // A third for the same client gets in; the client's oldest request gives way.
    let (status, page3) = authorize(&gw, &gw.authorize_url(&a, &p3, None)).await;
    assert_eq!(status, 200, "{page3}");
    let (status, body) = answer(&gw, &page1, "approve").await;
    assert_eq!(status, 400);
    assert!(body.contains("expired"), "{body}");
    // Another client gets in; at the total, the oldest request of anyone gives way (a's
    // second).
    let (status, _) = authorize(&gw, &gw.authorize_url(&b, &pkce(), None)).await;
    assert_eq!(status, 200);
    let (status, _) = authorize(&gw, &gw.authorize_url(&c, &pkce(), None)).await;
    assert_eq!(status, 200);
    let (status, body) = answer(&gw, &page2, "approve").await;
    assert_eq!(status, 400);
    assert!(body.contains("expired"), "{body}");

    // The newest request of a was kept: approved and redeemed.
    let (status, loc) = answer(&gw, &page3, "approve").await;
    assert_eq!(status, 302, "{loc}");
    let code = query_param(&loc, "code").expect("a code for the admitted request");
    let (status, body) = gw.redeem(&a, &code, &p3.verifier).await;
    assert_eq!(status, 200, "{body}");
    let text = metrics(&gw).await;
    assert_eq!(
        series(
            &text,
            "mcp_gateway_authorizations_over_pending_limit_total "
        ),
        2
    );
    gw.stop().await;
}

#[tokio::test]
async fn unredeemed_codes_count_against_the_cap_and_the_oldest_gives_way() {
    let gw = common::spawn_with(|c| {
        c.auto_approve = true;
        c.max_pending_per_client = 1;
    })
    .await;
    let a = gw.register().await;
    let p = pkce();
    let (status, loc) = authorize(&gw, &gw.authorize_url(&a, &p, None)).await;
    assert_eq!(status, 302);
    let old_code = query_param(&loc, "code").expect("code");
    // One code waits already: the new request still gets its code, the old one gives way.
    let q = pkce();
    let (status, loc) = authorize(&gw, &gw.authorize_url(&a, &q, None)).await;
    assert_eq!(status, 302);
    let code = query_param(&loc, "code").expect("the new request gets a code");
    let (status, body) = gw.redeem(&a, &old_code, &p.verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(gw.redeem(&a, &code, &q.verifier).await.0, 200);
    gw.stop().await;
}
