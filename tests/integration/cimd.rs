//! Client ID Metadata Documents: `CimdResolver` against tiny document servers on
//! loopback, port 0. Every server counts the requests it answers, so the tests can tell a
//! cache hit, and a refusal before any connection, from a fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcp_oauth_gateway::authz::cimd::{CimdConfig, CimdError, CimdResolver};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;
const REDIRECT: &str = "http://127.0.0.1:7777/callback";

/// A running document server.
struct DocServer {
    /// `http://127.0.0.1:<port>`.
    base: String,
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl DocServer {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The URL the request was made to, as the document's `client_id` must spell it.
fn self_url(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    format!("http://{host}{}", uri.path())
}

fn doc_for(id: &str) -> Value {
    json!({
        "client_id": id,
        "client_name": "Test CIMD Client",
        "client_uri": "https://example.com",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": "mcp:read",
    })
}

fn json_response(cache_control: Option<&'static str>, body: String) -> Response {
    let mut res = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(cc) = cache_control {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static(cc));
    }
    res
}

async fn spawn_docs() -> DocServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new()
        .route(
            "/good",
            get(|h: HeaderMap, u: Uri| async move {
                json_response(
                    Some("public, max-age=60"),
                    doc_for(&self_url(&h, &u)).to_string(),
                )
            }),
        )
        .route(
            "/default-ttl",
            get(|h: HeaderMap, u: Uri| async move {
                json_response(None, doc_for(&self_url(&h, &u)).to_string())
            }),
        )
        .route(
            "/no-store",
            get(|h: HeaderMap, u: Uri| async move {
                json_response(Some("no-store"), doc_for(&self_url(&h, &u)).to_string())
            }),
        )
        .route(
            "/plus-json",
            get(|h: HeaderMap, u: Uri| async move {
                (
                    [(header::CONTENT_TYPE, "application/cimd+json; charset=utf-8")],
                    doc_for(&self_url(&h, &u)).to_string(),
                )
            }),
        )
        .route(
            "/mismatch",
            get(|h: HeaderMap| async move {
                let host = h
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                json_response(None, doc_for(&format!("http://{host}/other")).to_string())
            }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/good")]).into_response() }),
        )
        .route(
            "/big",
            get(|h: HeaderMap, u: Uri| async move {
                let mut doc = doc_for(&self_url(&h, &u));
                doc["client_name"] = json!("x".repeat(6 * 1024));
                json_response(None, doc.to_string())
            }),
        )
        .route(
            "/big-streamed",
            get(|| async {
                // No Content-Length: the limit must hold while reading.
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
                let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }),
        )
        .route(
            "/html",
            get(|h: HeaderMap, u: Uri| async move {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    doc_for(&self_url(&h, &u)).to_string(),
                )
            }),
        )
        .route(
            "/no-content-type",
            get(|h: HeaderMap, u: Uri| async move {
                let mut res = doc_for(&self_url(&h, &u)).to_string().into_response();
                res.headers_mut().remove(header::CONTENT_TYPE);
                res
            }),
        )
        .route(
            "/secret",
            get(|h: HeaderMap, u: Uri| async move {
                let mut doc = doc_for(&self_url(&h, &u));
                doc["client_secret"] = json!("s3cret");
                json_response(None, doc.to_string())
            }),
        )
        .route(
            "/confidential",
            get(|h: HeaderMap, u: Uri| async move {
                let mut doc = doc_for(&self_url(&h, &u));
                doc["token_endpoint_auth_method"] = json!("private_key_jwt");
                json_response(None, doc.to_string())
            }),
        )
        .route(
            "/bad-redirect-uri",
            get(|h: HeaderMap, u: Uri| async move {
                let mut doc = doc_for(&self_url(&h, &u));
                doc["redirect_uris"] = json!(["http://evil.example.com/cb"]);
                json_response(None, doc.to_string())
            }),
        )
        .route(
            "/not-json",
            get(|| async { json_response(None, "{not json".to_string()) }),
        )
        .route(
            "/server-error",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/hang",
            get(|| async {
                std::future::pending::<()>().await;
                StatusCode::OK
            }),
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    DocServer {
        base: format!("http://{addr}"),
        port: addr.port(),
        hits,
    }
}

fn dev_resolver() -> CimdResolver {
    CimdResolver::new(CimdConfig {
        allow_loopback_http: true,
        ..CimdConfig::default()
    })
}

#[tokio::test]
async fn good_document_resolves_to_a_public_client() {
    let docs = spawn_docs().await;
    let resolver = dev_resolver();
    let url = docs.url("/good");
    assert!(resolver.is_metadata_url(&url));
    let client = resolver.resolve(&url, T0).await.unwrap();
    assert_eq!(client.client_id, url);
    assert_eq!(client.client_name.as_deref(), Some("Test CIMD Client"));
    assert_eq!(client.redirect_uris, vec![REDIRECT.to_string()]);
    assert_eq!(
        client.grant_types,
        vec![
            "authorization_code".to_string(),
            "refresh_token".to_string()
        ]
    );
    assert_eq!(client.token_endpoint_auth_method, "none");
    assert_eq!(client.scope.as_deref(), Some("mcp:read"));
    assert_eq!(client.created_at, T0);
    assert_eq!(client.secret_hash, None);
    assert_eq!(docs.hits(), 1);

    let plus = docs.url("/plus-json");
    assert_eq!(resolver.resolve(&plus, T0).await.unwrap().client_id, plus);
}

#[tokio::test]
async fn localhost_name_is_resolved_and_pinned_in_dev_mode() {
    let docs = spawn_docs().await;
    let url = format!("http://localhost:{}/good", docs.port);
    let client = dev_resolver().resolve(&url, T0).await.unwrap();
    assert_eq!(client.client_id, url);
    assert_eq!(docs.hits(), 1);
}

/// Which error a refused case must give.
type Check = fn(&CimdError) -> bool;

#[tokio::test]
async fn bad_documents_and_responses_are_refused() {
    let docs = spawn_docs().await;
    let resolver = dev_resolver();
    let cases: Vec<(&str, Check)> = vec![
        ("/mismatch", |e| matches!(e, CimdError::ClientIdMismatch)),
        ("/redirect", |e| matches!(e, CimdError::Redirect(302))),
        ("/big", |e| matches!(e, CimdError::TooLarge(_))),
        ("/big-streamed", |e| matches!(e, CimdError::TooLarge(_))),
        ("/html", |e| matches!(e, CimdError::ContentType)),
        ("/no-content-type", |e| matches!(e, CimdError::ContentType)),
        ("/missing", |e| matches!(e, CimdError::Status(404))),
        ("/server-error", |e| matches!(e, CimdError::Status(500))),
        ("/secret", |e| matches!(e, CimdError::ContainsSecret)),
        ("/confidential", |e| {
            matches!(e, CimdError::UnsupportedAuthMethod(_))
        }),
        ("/bad-redirect-uri", |e| {
            matches!(e, CimdError::InvalidRedirectUri(_))
        }),
        ("/not-json", |e| matches!(e, CimdError::InvalidJson)),
    ];
    let mut expected_hits = 0;
    for (path, check) in cases {
        let err = resolver.resolve(&docs.url(path), T0).await.unwrap_err();
        assert!(check(&err), "{path}: {err:?}");
        // Client-safe text: no body content leaks into the message.
        assert!(!err.to_string().contains("s3cret"), "{path}");
        assert!(!err.to_string().contains("xxxxxxxx"), "{path}");
        expected_hits += 1;
        assert_eq!(
            docs.hits(),
            expected_hits,
            "{path}: one request, redirect not followed"
        );
    }
    // Failures are not cached: asking again fetches again.
    assert!(resolver.resolve(&docs.url("/secret"), T0).await.is_err());
    assert_eq!(docs.hits(), expected_hits + 1);
}

#[tokio::test]
async fn timeout_is_enforced() {
    let docs = spawn_docs().await;
    let resolver = CimdResolver::new(CimdConfig {
        allow_loopback_http: true,
        timeout: Duration::from_millis(200),
        ..CimdConfig::default()
    });
    let err = resolver.resolve(&docs.url("/hang"), T0).await.unwrap_err();
    assert!(matches!(err, CimdError::Timeout), "{err:?}");
}

#[tokio::test]
async fn documents_are_cached_for_max_age() {
    let docs = spawn_docs().await;
    let resolver = dev_resolver();
    let url = docs.url("/good"); // Cache-Control: public, max-age=60
    resolver.resolve(&url, T0).await.unwrap();
    assert_eq!(docs.hits(), 1);
    resolver.resolve(&url, T0 + 1).await.unwrap();
    resolver.resolve(&url, T0 + 59).await.unwrap();
    assert_eq!(docs.hits(), 1, "within max-age: served from the cache");
    // Clones share the cache.
    resolver.clone().resolve(&url, T0 + 30).await.unwrap();
    assert_eq!(docs.hits(), 1);
    resolver.resolve(&url, T0 + 60).await.unwrap();
    assert_eq!(docs.hits(), 2, "max-age passed: fetched again");
    resolver.resolve(&url, T0 + 100).await.unwrap();
    assert_eq!(docs.hits(), 2);
}

#[tokio::test]
async fn default_ttl_cap_and_no_store() {
    let docs = spawn_docs().await;
    let resolver = CimdResolver::new(CimdConfig {
        allow_loopback_http: true,
        default_ttl: 300,
        max_ttl: 30,
        ..CimdConfig::default()
    });
    // No Cache-Control: the default TTL, capped at max_ttl (30 s).
    let url = docs.url("/default-ttl");
    resolver.resolve(&url, T0).await.unwrap();
    resolver.resolve(&url, T0 + 29).await.unwrap();
    assert_eq!(docs.hits(), 1);
    resolver.resolve(&url, T0 + 30).await.unwrap();
    assert_eq!(docs.hits(), 2);
    // max-age=60 is capped to 30 too.
    let good = docs.url("/good");
    resolver.resolve(&good, T0).await.unwrap();
    resolver.resolve(&good, T0 + 29).await.unwrap();
    assert_eq!(docs.hits(), 3);
    resolver.resolve(&good, T0 + 31).await.unwrap();
    assert_eq!(docs.hits(), 4);
    // no-store: never cached.
    let no_store = docs.url("/no-store");
    resolver.resolve(&no_store, T0).await.unwrap();
    resolver.resolve(&no_store, T0).await.unwrap();
    assert_eq!(docs.hits(), 6);
}

#[tokio::test]
async fn loopback_refused_before_connecting_when_not_in_dev_mode() {
    let docs = spawn_docs().await;
    let resolver = CimdResolver::new(CimdConfig::default());
    let http = docs.url("/good");
    assert!(!resolver.is_metadata_url(&http));
    let err = resolver.resolve(&http, T0).await.unwrap_err();
    assert!(matches!(err, CimdError::NotMetadataUrl), "{err:?}");
    // https to a loopback literal, and to a name that resolves to loopback: the SSRF guard.
    for url in [
        format!("https://127.0.0.1:{}/good", docs.port),
        format!("https://localhost:{}/good", docs.port),
        format!("https://[::ffff:7f00:1]:{}/good", docs.port),
    ] {
        let err = resolver.resolve(&url, T0).await.unwrap_err();
        assert!(matches!(err, CimdError::ForbiddenAddress), "{url}: {err:?}");
    }
    assert_eq!(docs.hits(), 0, "no request reached the server");
}

/// The whole code flow with a URL `client_id`, through the gateway (dev allowance for a
/// loopback document server): no registration, the document is the client.
#[tokio::test]
async fn cimd_client_completes_the_code_flow() {
    let docs = spawn_docs().await;
    let gw = crate::common::spawn_with(|c| c.cimd_allow_loopback_http = true).await;
    let meta: Value = gw
        .get_json(gw.url("/.well-known/oauth-authorization-server"))
        .await;
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    let client_id = docs.url("/good");
    let p = crate::common::pkce();
    let page = gw
        .http
        .get(gw.authorize_url(&client_id, &p, None))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Test CIMD Client"));
    assert!(
        html.contains("id=\"client-host\">127.0.0.1<"),
        "the document's host is shown"
    );
    let code = crate::common::query_param(
        &gw.consent(&gw.authorize_url(&client_id, &p, None), "approve")
            .await,
        "code",
    )
    .unwrap();
    let (s, body) = gw.redeem(&client_id, &code, &p.verifier).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["scope"], "mcp:read",
        "the document's scope is the default"
    );
    let (s, _) = gw
        .refresh(&client_id, body["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(s, 200);

    // A document whose client_id does not match its URL never gets a redirect.
    let bad = gw.authorize_url(&docs.url("/mismatch"), &p, None);
    let res = gw.http.get(&bad).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());
    // Without the development allowance a loopback document is refused.
    let strict = crate::common::spawn().await;
    let res = strict
        .http
        .get(strict.authorize_url(&client_id, &p, None))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    strict.stop().await;
    gw.stop().await;
}
