//! TLS on the public listener (rustls): the whole flow over https with a certificate the
//! test makes, what a plain-http client gets, and a silent client that must not stall the
//! listener.

use std::path::PathBuf;
use std::sync::Arc;

use mcp_oauth_gateway::clock::FixedClock;
use mcp_oauth_gateway::config::SigningAlg;
use mcp_oauth_gateway::gateway::GatewayError;
use mcp_oauth_gateway::store::memory::InMemoryStore;
use mcp_oauth_gateway::tokens::keys::SigningKey;
use mcp_oauth_gateway::{Config, Gateway, Listeners};
use serde_json::json;

use crate::common::{T0, TestGateway, spawn_with};

struct TestCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

/// A self-signed certificate for 127.0.0.1 and localhost, written to PEM files.
fn test_cert() -> TestCert {
    let dir = tempfile::tempdir().unwrap();
    let issued =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let pem = issued.cert.pem();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    TestCert {
        _dir: dir,
        cert,
        key,
        pem,
    }
}

async fn spawn_tls(cert: &TestCert) -> TestGateway {
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    let gw = spawn_with(|config| {
        config.tls_cert = Some(c);
        config.tls_key = Some(k);
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    gw.with_http(http)
}

#[tokio::test]
async fn tls_listener_serves_discovery_login_and_mcp_over_https() {
    let cert = test_cert();
    let gw = spawn_tls(&cert).await;
    assert!(gw.base.starts_with("https://127.0.0.1:"));
    // With no public URL given, the issuer and every advertised endpoint are https.
    let meta = gw
        .get_json(gw.url("/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(meta["issuer"], gw.base);
    assert!(
        meta["token_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let (_, tokens) = gw.login(None).await;
    let sid = gw.mcp_session(&tokens.access).await;
    let (status, _, body) = gw
        .call_tool(&tokens.access, &sid, "echo", json!({"message": "over tls"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["content"][0]["text"], "over tls");
    // The 401 challenge points at https metadata too.
    let (status, headers, _) = gw
        .mcp(
            None,
            None,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
        )
        .await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            gw.base
        )),
        "{challenge}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_listener_gets_no_http_answer() {
    let cert = test_cert();
    let gw = spawn_tls(&cert).await;
    let plain = gw.base.replacen("https://", "http://", 1);
    let result = reqwest::get(format!("{plain}/.well-known/oauth-authorization-server")).await;
    assert!(result.is_err(), "plain http answered: {result:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_does_not_stall_others() {
    let cert = test_cert();
    let gw = spawn_tls(&cert).await;
    let addr = gw.base.trim_start_matches("https://").to_string();
    // Connect and say nothing: the handshake waits in its own task.
    let _silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let status = gw.get_status(gw.url("/.well-known/jwks.json")).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

/// Build (not run) a gateway with these TLS files; the error when it refuses.
async fn build_with_tls(cert: PathBuf, key: PathBuf) -> Option<GatewayError> {
    let mut config = Config::for_test(std::env::temp_dir().join("mog-unused"));
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let listeners = Listeners::bind(&config).await.unwrap();
    Gateway::with_parts(
        config,
        listeners,
        Arc::new(InMemoryStore::new()),
        Arc::new(FixedClock::new(T0)),
        SigningKey::generate(SigningAlg::ES256).unwrap(),
    )
    .err()
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_stops_the_start() {
    let cert = test_cert();
    let other = test_cert();
    assert!(
        build_with_tls(cert.cert.clone(), cert.key.clone())
            .await
            .is_none(),
        "the matching pair starts"
    );
    let Some(GatewayError::Tls(e)) = build_with_tls(cert.cert.clone(), other.key.clone()).await
    else {
        panic!("started with a mismatched key");
    };
    assert!(e.to_string().contains("TLS"), "{e}");
    // A missing file is named in the message.
    let missing = PathBuf::from("/nonexistent/cert.pem");
    let Some(e) = build_with_tls(missing, cert.key.clone()).await else {
        panic!("started without a certificate");
    };
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
}

#[tokio::test]
async fn the_per_source_cap_closes_connections_before_their_handshake() {
    let cert = test_cert();
    let (c, k) = (cert.cert.clone(), cert.key.clone());
    let gw = spawn_with(|config| {
        config.tls_cert = Some(c);
        config.tls_key = Some(k);
        config.max_connections_per_source = 2;
    })
    .await;
    let addr = gw.base.trim_start_matches("https://").to_string();
    let client = |source: [u8; 4]| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap()])
            .local_address(std::net::IpAddr::from(source))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = gw.url("/.well-known/jwks.json");
    // Two silent connections from 127.0.0.1 hold its whole allowance.
    let _held = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    let refused = client([127, 0, 0, 1]).get(&url).send().await;
    assert!(
        refused.is_err(),
        "a third from the same source: {refused:?}"
    );
    let other = client([127, 0, 0, 2]).get(&url).send().await.unwrap();
    assert_eq!(other.status(), 200, "another source is served");
    gw.stop().await;
}
