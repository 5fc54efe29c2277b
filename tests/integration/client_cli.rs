//! `mcp-oauth-gateway client` against a real gateway: discovery, registration, PKCE through
//! the loopback listener (headless, the gateway auto-approving), tools, the 0600 token
//! cache and its reuse, refresh after expiry, step-up on 403, client credentials for a
//! pre-registered confidential client, and a `--verbose` trace without secrets.

use std::path::{Path, PathBuf};

use mcp_oauth_gateway::config::ClientConfig;
use serde_json::Value;

use crate::common::{self, TestGateway};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run the real binary's `client` subcommand (the gateway keeps serving meanwhile: the
/// child is awaited asynchronously).
async fn client(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-oauth-gateway"));
    cmd.arg("client")
        .arg("--headless")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env_remove("MCP_CLIENT_ID")
        .env_remove("MCP_CLIENT_SECRET")
        .env_remove("MCP_CLIENT_CACHE_DIR")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run the client");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn only_cache_entry(dir: &Path) -> (PathBuf, Value) {
    let files = cache_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    (files[0].clone(), serde_json::from_str(&text).unwrap())
}

fn counter(gw: &TestGateway, series: &str) -> u64 {
    gw.state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0)
}

fn registrations(gw: &TestGateway) -> u64 {
    counter(gw, "mcp_gateway_client_registrations_total")
}

fn mcp_url(gw: &TestGateway) -> String {
    gw.url("/mcp")
}

#[tokio::test]
async fn c1_c3_c5_discovery_registration_pkce_then_the_cache_is_reused() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let url = mcp_url(&gw);

    let run = client(&cache, &[&url, "tools"], &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("echo: Echo a message back"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("whoami"), "{}", run.stdout);
    assert_eq!(registrations(&gw), 1);

    let (path, entry) = only_cache_entry(&cache);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "cache file mode");
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "cache dir mode");
    }
    assert_eq!(entry["issuer"], gw.state.settings.issuer.as_str());
    assert_eq!(entry["client"]["source"], "registered");
    let tokens = &entry["tokens"][&url];
    assert_eq!(tokens["resource"], gw.resource());
    let claims = common::jwt_claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        claims["aud"],
        gw.resource(),
        "RFC 8707 resource reached the token"
    );
    assert_eq!(claims["client_id"], entry["client"]["client_id"]);

    // Second run: the cached token is used as is, no new registration, no new token.
    let issued = counter(
        &gw,
        "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}",
    );
    assert_eq!(issued, 1);
    let run = client(
        &cache,
        &[&url, "call", "echo", "message=hello from the cli"],
        &[],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "hello from the cli");
    assert_eq!(registrations(&gw), 1, "the cached registration was reused");
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}"
        ),
        1,
        "the cached token was reused"
    );
    let (_, again) = only_cache_entry(&cache);
    assert_eq!(
        again["tokens"][&url]["access_token"],
        tokens["access_token"]
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_rotated_refresh_token_stored() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp_url(&gw);
    let run = client(dir.path(), &[&url], &[]).await;
    assert!(run.ok, "{}", run.stderr);
    let (_, before) = only_cache_entry(dir.path());

    // The gateway's clock passes the access token's expiry: it now answers 401.
    gw.clock.advance(3600 + 60);
    let run = client(dir.path(), &[&url, "call", "whoami"], &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("mcp:read"), "{}", run.stdout);
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"refresh_token\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}"
        ),
        1,
        "refreshed, not authorized again"
    );
    assert_eq!(registrations(&gw), 1);
    let (_, after) = only_cache_entry(dir.path());
    let (b, a) = (&before["tokens"][&url], &after["tokens"][&url]);
    assert_ne!(a["access_token"], b["access_token"]);
    assert_ne!(a["refresh_token"], b["refresh_token"], "rotation stored");

    // The old refresh token is dead (its successor was used); the stored one works.
    let (s, _) = gw
        .refresh(
            after["client"]["client_id"].as_str().unwrap(),
            a["refresh_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(s, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_refused_refresh_falls_back_to_a_new_authorization() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp_url(&gw);
    assert!(client(dir.path(), &[&url], &[]).await.ok);
    let (path, mut entry) = only_cache_entry(dir.path());
    entry["tokens"][&url]["refresh_token"] = "not-a-refresh-token".into();
    entry["tokens"][&url]["access_token"] = "not-a-token".into();
    std::fs::write(&path, entry.to_string()).unwrap();
    let run = client(dir.path(), &[&url], &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}"
        ),
        2
    );
    assert_eq!(registrations(&gw), 1, "the registration is still reused");
    gw.stop().await;
}

#[tokio::test]
async fn c4_insufficient_scope_steps_up_to_the_union() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp_url(&gw);
    // The challenge asks for mcp:read; add_note needs mcp:write: 403, then a step-up.
    let run = client(
        dir.path(),
        &[&url, "call", "add_note", "text=from the cli"],
        &[],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("stored"), "{}", run.stdout);
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"authorization_code\"}"
        ),
        2
    );
    let (_, entry) = only_cache_entry(dir.path());
    let scope = entry["tokens"][&url]["scope"].as_str().unwrap().to_string();
    assert!(
        scope.contains("mcp:read") && scope.contains("mcp:write"),
        "{scope}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn client_credentials_for_a_preregistered_confidential_client() {
    let secret = "a-secret-for-the-cli-test-0123456789";
    let gw = common::spawn_with(|c| {
        c.clients = vec![ClientConfig {
            client_id: "cli-service".into(),
            client_name: Some("CLI service".into()),
            secret_sha256: Some(mcp_oauth_gateway::secret::sha256_b64(secret)),
            grant_types: Some(vec!["client_credentials".into()]),
            scope: Some("mcp:read".into()),
            ..Default::default()
        }]
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp_url(&gw);
    let run = client(
        dir.path(),
        &[
            "--verbose",
            "--client-id",
            "cli-service",
            "--grant",
            "client-credentials",
            &url,
            "call",
            "whoami",
        ],
        &[("MCP_CLIENT_SECRET", secret)],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("cli-service"), "{}", run.stdout);
    assert_eq!(
        counter(
            &gw,
            "mcp_gateway_tokens_issued_total{grant=\"client_credentials\"}"
        ),
        1
    );
    assert_eq!(registrations(&gw), 0);
    assert!(!run.stderr.contains(secret), "the secret reached the trace");
    assert!(
        run.stderr.contains("authorization: Basic [redacted]"),
        "{}",
        run.stderr
    );
    let (_, entry) = only_cache_entry(dir.path());
    assert!(
        !entry.to_string().contains(secret),
        "a configured secret is not copied into the cache"
    );
    gw.stop().await;
}

#[tokio::test]
async fn verbose_traces_every_exchange_without_a_secret() {
    let gw = common::spawn_with(|c| c.auto_approve = true).await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp_url(&gw);
    let first = client(dir.path(), &["-v", &url], &[]).await;
    assert!(first.ok, "{}", first.stderr);
    let (_, before) = only_cache_entry(dir.path());
    gw.clock.advance(3600 + 60);
    let second = client(dir.path(), &["-v", &url, "tools"], &[]).await;
    assert!(second.ok, "{}", second.stderr);
    let (_, after) = only_cache_entry(dir.path());
    let trace = format!("{}\n{}", first.stderr, second.stderr);

    // Every step shows up...
    for step in [
        "> POST ",
        "< 401 Unauthorized",
        "www-authenticate: Bearer",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server",
        "> POST http://127.0.0.1",
        "/register",
        "/authorize?",
        "code_challenge_method=S256",
        "/callback?code=%5Bredacted%5D",
        "grant_type=authorization_code",
        "grant_type=refresh_token",
        "authorization: Bearer [redacted]",
    ] {
        assert!(
            trace.contains(step),
            "{step} missing from the trace:\n{trace}"
        );
    }
    // ...and no secret does.
    let mut secrets = Vec::new();
    for entry in [&before, &after] {
        let t = &entry["tokens"][&url];
        secrets.push(t["access_token"].as_str().unwrap().to_string());
        secrets.push(t["refresh_token"].as_str().unwrap().to_string());
    }
    for secret in &secrets {
        assert!(
            !trace.contains(secret.as_str()),
            "a token reached the trace"
        );
        // A JWT's signature alone is as good as a leak.
        let tail = secret.rsplit('.').next().unwrap();
        assert!(
            !trace.contains(tail),
            "a token's signature reached the trace"
        );
    }
    for marker in ["code=", "code_verifier=", "\"code\":\"", "refresh_token="] {
        for (i, _) in trace.match_indices(marker) {
            let after = &trace[i + marker.len()..];
            assert!(
                after.starts_with("%5Bredacted%5D") || after.starts_with("[redacted]"),
                "{marker} not redacted: {}",
                &after[..after.len().min(40)]
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn headless_cannot_pass_a_consent_page_and_says_so() {
    let gw = common::spawn().await; // consent page, no auto-approve
    let dir = tempfile::tempdir().unwrap();
    let run = client(dir.path(), &[&mcp_url(&gw)], &[]).await;
    assert!(!run.ok);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {}", run.stderr);
    assert!(lines[0].contains("needs a person"), "{}", run.stderr);
    assert!(cache_files(dir.path()).is_empty(), "no tokens were cached");
    gw.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_one_clear_line() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let run = client(dir.path(), &[&format!("http://127.0.0.1:{port}/mcp")], &[]).await;
    assert!(!run.ok);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("mcp-oauth-gateway client: POST"),
        "{}",
        run.stderr
    );
}
