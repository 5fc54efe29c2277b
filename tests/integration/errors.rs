//! Every refusal the issue names: the standard error, the right status, nothing stored lost.

use serde_json::{Value, json};

use crate::common::{self, REDIRECT, T0, form_field, pkce, query_param};

fn bearer_error(headers: &reqwest::header::HeaderMap) -> String {
    headers["www-authenticate"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn expired_token_is_401_invalid_token() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    gw.clock.advance(3600);
    let (s, _, _) = gw.mcp(Some(&t.access), None, ping.clone()).await;
    assert_ne!(s, 401, "valid up to and including exp");
    gw.clock.advance(1);
    let (s, h, _) = gw.mcp(Some(&t.access), None, ping).await;
    assert_eq!(s, 401);
    let c = bearer_error(&h);
    assert!(
        c.contains("error=\"invalid_token\"") && c.contains("resource_metadata="),
        "{c}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_refused() {
    let gw = common::spawn().await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}});
    let good = gw.mint(gw.claims());
    let (s, _, _) = gw.mcp(Some(&good), None, ping.clone()).await;
    assert_eq!(s, 200, "control: a correctly minted token passes");
    for (claim, value) in [
        ("aud", json!("http://other.example/mcp")),
        ("aud", json!(["http://other.example/mcp"])),
        ("iss", json!("http://evil.example")),
        ("exp", json!(T0 - 100)),
        ("nbf", json!(T0 + 100)),
    ] {
        let mut claims = gw.claims();
        claims[claim] = value.clone();
        let (s, h, _) = gw.mcp(Some(&gw.mint(claims)), None, ping.clone()).await;
        assert_eq!(s, 401, "{claim}={value}");
        assert!(bearer_error(&h).contains("invalid_token"));
    }
    let mut array_aud = gw.claims();
    array_aud["aud"] = json!(["http://other.example", gw.resource()]);
    let (s, _, _) = gw.mcp(Some(&gw.mint(array_aud)), None, ping.clone()).await;
    assert_eq!(s, 200, "an audience array naming us is accepted");
    for garbage in ["x", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let (s, _, _) = gw.mcp(Some(garbage), None, ping.clone()).await;
        assert_eq!(s, 401, "{garbage}");
    }
    gw.stop().await;
}

/// RFC 9068 §4 and RFC 7515 §4.1.11 on the gateway's own tokens: `typ: at+jwt` and `jti`
/// required, a `crit` header refused, and no leeway on `exp`/`nbf` (one clock).
#[tokio::test]
async fn own_tokens_are_typed_at_jwt_with_jti_no_crit_and_no_leeway() {
    let gw = common::spawn().await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}});
    let status = |token: String| {
        let ping = ping.clone();
        let gw = &gw;
        async move {
            let (s, h, _) = gw.mcp(Some(&token), None, ping).await;
            if s == 401 {
                assert!(bearer_error(&h).contains("invalid_token"));
            }
            s
        }
    };
    let (_, t) = gw.login(None).await;
    assert_eq!(common::jwt_header(&t.access)["typ"], "at+jwt");
    assert!(common::jwt_claims(&t.access)["jti"].is_string());
    assert_eq!(status(gw.mint(gw.claims())).await, 200, "control");
    assert_eq!(
        status(gw.mint_with(gw.claims(), |h| h.typ = None)).await,
        401
    );
    assert_eq!(
        status(gw.mint_with(gw.claims(), |h| h.typ = Some("JWT".into()))).await,
        401
    );
    assert_eq!(
        status(gw.mint_with(gw.claims(), |h| h.crit = Some(vec!["exp".into()]))).await,
        401
    );
    let mut no_jti = gw.claims();
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_eq!(status(gw.mint(no_jti)).await, 401);
    // No leeway: one second past exp, one second before nbf.
    let mut late = gw.claims();
    late["exp"] = json!(T0 - 1);
    assert_eq!(status(gw.mint(late)).await, 401);
    let mut early = gw.claims();
    early["nbf"] = json!(T0 + 1);
    assert_eq!(status(gw.mint(early)).await, 401);
    gw.stop().await;
}

#[tokio::test]
async fn token_in_query_string_and_malformed_headers_are_400() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let res = gw
        .http
        .post(format!("{}?access_token={}", gw.resource(), t.access))
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(bearer_error(res.headers()).contains("invalid_request"));
    let res = gw
        .http
        .post(gw.resource())
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Another scheme is no bearer token at all: 401 without an error code.
    let res = gw
        .http
        .post(gw.resource())
        .header("authorization", "Basic eDp5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(!bearer_error(res.headers()).contains("error="));
    // Upper-case scheme is fine.
    let (s, _, _) = {
        let res = gw
            .http
            .post(gw.resource())
            .header("authorization", format!("BEARER {}", t.access))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), (), ())
    };
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn replayed_code_is_refused_and_revokes_what_it_issued() {
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let p = pkce();
    let code = gw.code(&client_id, &p, None).await;
    let (s, first) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(s, 200);
    let (s, again) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!((s, again["error"].as_str()), (400, Some("invalid_grant")));
    let (s, _, _) = gw
        .mcp(
            first["access_token"].as_str(),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    assert_eq!(
        s, 401,
        "the access token from the first redemption is revoked"
    );
    let (s, _) = gw
        .refresh(&client_id, first["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(s, 400, "and so is its refresh token");
    gw.stop().await;
}

#[tokio::test]
async fn wrong_pkce_verifier_and_other_code_mismatches_are_invalid_grant() {
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let other_client = gw.register().await;
    let p = pkce();
    let wrong = pkce();
    let code = gw.code(&client_id, &p, None).await;
    let (s, body) = gw.redeem(&client_id, &code, &wrong.verifier).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let code = gw.code(&client_id, &p, None).await;
    let (s, body) = gw.redeem(&other_client, &code, &p.verifier).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let code = gw.code(&client_id, &p, None).await;
    let (s, _, body) = gw
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &p.verifier),
            ("resource", "http://other.example/mcp"),
        ])
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_target")));
    // A verifier of the wrong shape is a malformed request.
    let (s, body) = gw.redeem(&client_id, &code, "short").await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_request")));
    // A code expires.
    let code = gw.code(&client_id, &p, None).await;
    gw.clock.advance(301);
    let (s, body) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    gw.stop().await;
}

#[tokio::test]
async fn unknown_client_or_redirect_shows_a_page_and_never_redirects() {
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let p = pkce();
    let unknown = gw.authorize_url("nobody", &p, None);
    let evil = gw
        .authorize_url(&client_id, &p, None)
        .replace("127.0.0.1%3A7777", "evil.example");
    let slash = gw
        .authorize_url(&client_id, &p, None)
        .replace("callback", "callback%2F");
    for url in [unknown, evil, slash] {
        let res = gw.http.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 400, "{url}");
        assert!(res.headers().get("location").is_none());
        assert!(res.text().await.unwrap().contains("cannot continue"));
    }
    // The loopback port floats (RFC 8252 §7.3).
    let other_port = gw
        .authorize_url(&client_id, &p, None)
        .replace("7777", "45678");
    assert_eq!(gw.get_status(&other_port).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn plain_or_missing_pkce_and_bad_scope_redirect_with_error() {
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let p = pkce();
    let base = gw.authorize_url(&client_id, &p, None);
    for (url, code) in [
        (
            base.replace("code_challenge_method=S256", "code_challenge_method=plain"),
            "invalid_request",
        ),
        (
            base.replace(&format!("code_challenge={}&", p.challenge), ""),
            "invalid_request",
        ),
        (format!("{base}&scope=root"), "invalid_scope"),
        (
            base.replace("resource=http", "resource=https"),
            "invalid_target",
        ),
        (format!("{base}&state=dup"), "invalid_request"),
    ] {
        let res = gw.http.get(&url).send().await.unwrap();
        let loc = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        if code == "invalid_request" && url.ends_with("state=dup") {
            // A repeated parameter makes the whole request untrustworthy: page, no redirect.
            assert_eq!(res.status(), 400);
            continue;
        }
        let loc = loc.unwrap_or_else(|| panic!("redirect expected for {url}"));
        assert!(loc.starts_with(REDIRECT));
        assert_eq!(query_param(&loc, "error").as_deref(), Some(code), "{url}");
        assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
        assert_eq!(query_param(&loc, "iss").as_deref(), Some(gw.base.as_str()));
    }
    gw.stop().await;
}

#[tokio::test]
async fn consent_deny_replay_and_forgery() {
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let p = pkce();
    let loc = gw
        .consent(&gw.authorize_url(&client_id, &p, None), "deny")
        .await;
    assert_eq!(query_param(&loc, "error").as_deref(), Some("access_denied"));
    assert!(query_param(&loc, "code").is_none());

    let html = gw
        .http
        .get(gw.authorize_url(&client_id, &p, None))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let field = |name: &str| form_field(&html, name);
    let (rid, csrf) = (field("request_id"), field("csrf_token"));
    let post = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut req = gw.http.post(gw.url("/consent")).form(&form);
        if let Some(o) = origin {
            req = req
                .header("origin", o)
                .header("sec-fetch-site", "cross-site");
        }
        req.send()
    };
    let res = post(
        vec![
            ("request_id", rid.clone()),
            ("csrf_token", csrf.clone()),
            ("decision", "approve".into()),
        ],
        Some("http://evil.example"),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403, "cross-site submission");
    let res = post(
        vec![
            ("request_id", rid.clone()),
            ("csrf_token", "forged".into()),
            ("decision", "approve".into()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403, "wrong CSRF token");
    let res = post(
        vec![
            ("request_id", rid),
            ("csrf_token", csrf),
            ("decision", "approve".into()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        res.status(),
        302,
        "forged attempts did not cost the user the request"
    );
    gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_request_errors() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(Some("mcp:read")).await;
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("grant_type", "password"), ("username", "u")],
            400,
            "unsupported_grant_type",
        ),
        (vec![("code", "x")], 400, "invalid_request"),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "nope"),
                ("client_id", &client_id),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &t.refresh),
                ("client_id", "nobody"),
            ],
            400,
            "invalid_client",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &t.refresh),
                ("client_id", &client_id),
                ("scope", "mcp:admin"),
            ],
            400,
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &t.refresh),
                ("client_id", &client_id),
                ("resource", "http://x/mcp"),
            ],
            400,
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("grant_type", "refresh_token"),
            ],
            400,
            "invalid_request",
        ),
    ];
    for (form, status, code) in cases {
        let (s, h, body) = gw.token(&form).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (status, Some(code)),
            "{form:?}"
        );
        assert_eq!(h["cache-control"], "no-store");
    }
    let res = gw
        .http
        .post(gw.url("/token"))
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // None of that disturbed the grant: the refresh token still works.
    let (s, _) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn registration_errors_and_rate_limit() {
    let gw = common::spawn_with(|c| c.register_rate_per_minute = 3).await;
    for (body, code) in [
        (
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://ok.example/cb#frag"]}),
            "invalid_redirect_uri",
        ),
        (json!({"client_name": "no uris"}), "invalid_redirect_uri"),
    ] {
        let res = gw
            .http
            .post(gw.url("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"], code);
    }
    let res = gw
        .http
        .post(gw.url("/register"))
        .json(&json!({"redirect_uris": ["https://ok.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "the fourth registration in a minute");
    assert!(res.headers().contains_key("retry-after"));
    gw.clock.advance(60);
    let res = gw
        .http
        .post(gw.url("/register"))
        .json(&json!({"redirect_uris": ["https://ok.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    gw.stop().await;
}

#[tokio::test]
async fn mcp_body_and_header_checks() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let send = |body: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let mut req = gw
            .http
            .post(gw.resource())
            .bearer_auth(&t.access)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let res = send("{not json", &[]).await.unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32700);
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}"#;
    let res = send(call, &[("mcp-method", "tools/list")]).await.unwrap();
    assert_eq!(res.status(), 400, "Mcp-Method must match the body");
    let res = send(
        call,
        &[("mcp-method", "tools/call"), ("mcp-name", "add_note")],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400, "Mcp-Name must match the body");
    // A batch is authorized on every message in it.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"x"}}}]"#;
    let (_, ro) = gw.login(Some("mcp:read")).await;
    let res = gw
        .http
        .post(gw.resource())
        .bearer_auth(&ro.access)
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    gw.stop().await;
}

#[tokio::test]
async fn origin_is_checked_on_mcp_and_cors_is_answered() {
    let gw = common::spawn().await;
    let (_, t) = gw.login(None).await;
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}});
    let post = |origin: &'static str| {
        gw.http
            .post(gw.resource())
            .bearer_auth(&t.access)
            .header("accept", "application/json, text/event-stream")
            .header("origin", origin)
            .json(&init)
            .send()
    };
    assert_eq!(
        post("http://evil.example").await.unwrap().status(),
        403,
        "DNS rebinding defence"
    );
    let ok = post("http://localhost:6274").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );

    for path in [
        "/token",
        "/register",
        "/.well-known/oauth-authorization-server",
        "/mcp",
    ] {
        let res = gw
            .http
            .request(reqwest::Method::OPTIONS, gw.url(path))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-protocol-version, mcp-method",
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}");
        let h = res.headers();
        assert_eq!(
            h["access-control-allow-origin"], "http://localhost:6274",
            "{path}"
        );
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(
            allowed.contains("mcp-protocol-version") && allowed.contains("authorization"),
            "{allowed}"
        );
    }
    let res = gw
        .http
        .post(gw.resource())
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("www-authenticate") && exposed.contains("mcp-session-id"));
    // A foreign origin gets no CORS grant on the MCP endpoint.
    let res = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.resource())
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn revocation_of_access_and_refresh_tokens() {
    let gw = common::spawn().await;
    let (client_id, t) = gw.login(None).await;
    let revoke = |token: String| {
        gw.http
            .post(gw.url("/revoke"))
            .form(&[("token", token), ("client_id", client_id.clone())])
            .send()
    };
    assert_eq!(revoke(t.access.clone()).await.unwrap().status(), 200);
    let (s, _, _) = gw
        .mcp(
            Some(&t.access),
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(revoke(t.refresh.clone()).await.unwrap().status(), 200);
    let (s, _) = gw.refresh(&client_id, &t.refresh).await;
    assert_eq!(s, 400);
    assert_eq!(
        revoke("unknown".into()).await.unwrap().status(),
        200,
        "RFC 7009 §2.2"
    );
    gw.stop().await;
}

#[tokio::test]
async fn consent_post_from_our_own_page_with_null_origin_is_accepted() {
    // Chromium sends `Origin: null` on some same-origin form posts; fetch metadata decides.
    let gw = common::spawn().await;
    let client_id = gw.register().await;
    let p = pkce();
    let page = gw
        .http
        .get(gw.authorize_url(&client_id, &p, None))
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    let html = page.text().await.unwrap();
    let field = |name: &str| form_field(&html, name);
    let form = [
        ("request_id", field("request_id")),
        ("csrf_token", field("csrf_token")),
        ("decision", "approve".into()),
    ];
    let sibling = gw
        .http
        .post(gw.url("/consent"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-site")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(sibling.status(), 403, "a sibling site is not our page");
    let res = gw
        .http
        .post(gw.url("/consent"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert!(query_param(res.headers()["location"].to_str().unwrap(), "code").is_some());
    gw.stop().await;
}

#[tokio::test]
async fn token_and_authorize_are_rate_limited_per_source() {
    let gw = common::spawn_with(|c| {
        c.token_rate_per_minute = 2;
        c.authorize_rate_per_minute = 2;
    })
    .await;
    for _ in 0..2 {
        let (s, _, _) = gw.token(&[("grant_type", "client_credentials")]).await;
        assert_eq!(s, 400);
    }
    let res = gw
        .http
        .post(gw.url("/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    for _ in 0..2 {
        assert_eq!(gw.get_status(gw.url("/authorize")).await, 400);
    }
    assert_eq!(gw.get_status(gw.url("/authorize")).await, 429);
    gw.clock.advance(60);
    assert_eq!(
        gw.get_status(gw.url("/authorize")).await,
        400,
        "a new minute"
    );
    gw.stop().await;
}
