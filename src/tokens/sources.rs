//! Who issues the tokens the resource server accepts (`auth_mode`):
//!
//! - `builtin`: our own authorization server; keys read in-process.
//! - `external`: an OAuth/OIDC issuer; its JWKS is discovered (RFC 8414, then OIDC
//!   discovery) or configured, fetched over HTTP, cached, refetched once (rate-limited) on
//!   an unknown `kid`, kept when the issuer is unreachable. Tokens must name the configured
//!   audience even when the issuer signed them (ECOSYSTEM #7).
//! - `shared_secret`: HS256 JWTs of an existing application, the secret read from an
//!   environment variable or a file, never the config file.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::fetch::FetchError;
use super::keys::KeyRing;
use super::verify::{JwksCache, JwksFetcher, Keys, Verifier};
use crate::config::{AuthMode, ConfigError};
use crate::settings::Settings;

/// Largest JWKS or metadata document accepted.
const MAX_DOC: usize = 1024 * 1024;

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The JSON document at `url`: a success status, at most [`MAX_DOC`] bytes.
async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, FetchError> {
    let unreachable = |source| FetchError::Unreachable {
        url: url.to_string(),
        source,
    };
    let res = client.get(url).send().await.map_err(unreachable)?;
    if !res.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: res.status(),
        });
    }
    let bytes = res.bytes().await.map_err(unreachable)?;
    if bytes.len() > MAX_DOC {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            limit: MAX_DOC,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| FetchError::MalformedJson {
        url: url.to_string(),
        source,
    })
}

/// The well-known URLs of an issuer's metadata, in the order clients try them.
pub fn discovery_urls(issuer: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(issuer.trim_end_matches('/')) else {
        return Vec::new();
    };
    crate::web::wellknown::as_metadata_urls(&url)
        .into_iter()
        .map(String::from)
        .collect()
}

/// Find the issuer's `jwks_uri`; its metadata must name the same issuer. The well-known
/// URLs are tried in order until one answers; when none does, the last failure is returned.
async fn discover_jwks_uri(client: &reqwest::Client, issuer: &str) -> Result<String, FetchError> {
    let mut last = FetchError::NoDiscoveryUrl {
        issuer: issuer.to_string(),
    };
    for url in discovery_urls(issuer) {
        match get_json(client, &url).await {
            Ok(meta) => {
                let named = meta
                    .get("issuer")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
                    return Err(FetchError::IssuerMismatch {
                        url,
                        named: named.to_string(),
                        expected: issuer.to_string(),
                    });
                }
                return meta
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(FetchError::NoJwksUri { url });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A fetcher of an external issuer's JWKS over HTTP; discovery runs on first use, so the
/// gateway starts even while the issuer is down.
pub fn http_jwks_fetcher(
    issuer: String,
    jwks_uri: Option<String>,
) -> Result<JwksFetcher, ConfigError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| invalid("external", e.to_string()))?;
    let uri: Arc<OnceCell<String>> = Arc::new(OnceCell::new());
    if let Some(u) = jwks_uri {
        let _ = uri.set(u);
    }
    Ok(Arc::new(move || {
        let (client, uri, issuer) = (client.clone(), uri.clone(), issuer.clone());
        Box::pin(async move {
            let jwks_uri = uri
                .get_or_try_init(|| discover_jwks_uri(&client, &issuer))
                .await?
                .clone();
            let doc = get_json(&client, &jwks_uri).await?;
            serde_json::from_value::<JwkSet>(doc).map_err(|source| FetchError::NotJwkSet {
                url: jwks_uri,
                source,
            })
        })
    }))
}

/// The issuer clients are sent to, as protected resource metadata lists it.
pub fn authorization_server(settings: &Settings) -> String {
    let c = &settings.config;
    match c.auth_mode {
        AuthMode::Builtin => settings.issuer.clone(),
        AuthMode::External => c.external.issuer.clone(),
        AuthMode::SharedSecret => c.shared_secret.issuer.clone(),
    }
}

/// The verifier for the configured `auth_mode`, as the authorization server sees tokens:
/// for any of the resources it serves.
pub fn verifier(settings: &Settings, keys: Arc<KeyRing>) -> Result<Verifier, ConfigError> {
    let others = settings
        .routes
        .iter()
        .skip(1)
        .map(|r| r.resource.clone())
        .collect();
    Ok(verifier_for(settings, keys, &settings.resource)?.accepting_also(others))
}

/// The verifier of one resource (`audience`) the gateway serves; an external issuer's or a
/// shared secret's tokens name the configured audience instead.
pub fn verifier_for(
    settings: &Settings,
    keys: Arc<KeyRing>,
    audience: &str,
) -> Result<Verifier, ConfigError> {
    let c = &settings.config;
    let leeway = c.leeway_seconds;
    match c.auth_mode {
        AuthMode::Builtin => {
            // Our own key ring, read through the same cache an external issuer's keys go
            // through, so rotation and unknown-kid handling are one path.
            let fetch: JwksFetcher = Arc::new(move || {
                let set = keys.jwks();
                Box::pin(async move { Ok(set) })
            });
            // Our own tokens: typed `at+jwt`, with a `jti`, and no leeway (one clock).
            Ok(Verifier::new(
                vec![settings.issuer.clone()],
                audience.to_string(),
                leeway,
                Keys::Jwks(JwksCache::new(fetch, 300, 5)),
            )
            .own_tokens())
        }
        AuthMode::External => {
            let e = &c.external;
            if e.issuer.is_empty() || e.audience.is_empty() {
                return Err(invalid("external", "issuer and audience are required"));
            }
            let mut issuers = vec![e.issuer.clone()];
            issuers.extend(e.allowed_issuers.iter().cloned());
            let fetch = http_jwks_fetcher(e.issuer.clone(), e.jwks_uri.clone())?;
            Ok(Verifier::new(
                issuers,
                e.audience.clone(),
                leeway,
                Keys::Jwks(JwksCache::new(fetch, e.jwks_ttl_seconds, 30)),
            ))
        }
        AuthMode::SharedSecret => {
            let s = &c.shared_secret;
            if s.issuer.is_empty() || s.audience.is_empty() {
                return Err(invalid("shared_secret", "issuer and audience are required"));
            }
            let secret = match &s.secret_file {
                Some(path) => std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "shared_secret.secret_file",
                        format!("{}: {e}", path.display()),
                    )
                })?,
                None => std::env::var(&s.secret_env).map_err(|_| {
                    invalid(
                        "shared_secret.secret_env",
                        format!("environment variable {} is not set", s.secret_env),
                    )
                })?,
            };
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.len() < 32 {
                return Err(invalid(
                    "shared_secret",
                    "the secret must be at least 32 bytes",
                ));
            }
            Ok(Verifier::new(
                vec![s.issuer.clone()],
                s.audience.clone(),
                leeway,
                Keys::Hmac(DecodingKey::from_secret(secret.as_bytes())),
            ))
        }
    }
}

/// Why an opaque token is refused after asking its issuer (RFC 7662). The text is what the
/// client reads in the RFC 6750 `error_description` of its `invalid_token` answer: it names
/// the reason, never the token, the issuer's answer or our credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum IntrospectError {
    /// The introspection request failed (connection, timeout).
    #[error("the issuer could not be asked about the token")]
    Unreachable,
    /// The answer is not a JSON document.
    #[error("the issuer's introspection answer is unreadable")]
    Unreadable,
    /// The issuer says the token is not active (unknown, revoked or expired there).
    #[error("the token is not active")]
    Inactive,
    /// `aud` does not name this resource.
    #[error("the token is meant for another resource")]
    WrongAudience,
    /// The answer lacks `exp`, or a `sub` (or `client_id`) we can use.
    #[error("the issuer's introspection answer lacks sub or exp")]
    MissingClaims,
    /// `exp` has passed, whatever the issuer says.
    #[error("the token has expired")]
    Expired,
}

/// An RFC 7662 introspection client for opaque tokens of an external issuer. Answers are
/// cached by the token's hash no longer than the token lives (and at most a minute), so a
/// revocation at the issuer takes effect soon.
pub struct Introspector {
    endpoint: String,
    client_id: String,
    secret: String,
    audience: String,
    client: reqwest::Client,
    cache:
        std::sync::RwLock<std::collections::HashMap<String, (super::verify::VerifiedClaims, u64)>>,
    /// Hits (a cached answer was used) and misses (the issuer was asked), for `/metrics`.
    counters: crate::metrics::CacheCounters,
}

impl Introspector {
    /// The introspector `[external]` configures, if any.
    pub fn from_config(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let e = &settings.config.external;
        let Some(endpoint) = &e.introspection_endpoint else {
            return Ok(None);
        };
        let client_id = e.introspection_client_id.clone().ok_or_else(|| {
            invalid(
                "external.introspection_client_id",
                "is required with an introspection endpoint",
            )
        })?;
        let secret = match &e.introspection_secret_file {
            Some(path) => {
                crate::config::sources::read_secret(path, "external.introspection_secret_file")
                    .map_err(|err| invalid("external.introspection_secret_file", err.to_string()))?
            }
            None => std::env::var(&e.introspection_secret_env).unwrap_or_default(),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| invalid("external", err.to_string()))?;
        Ok(Some(Self {
            endpoint: endpoint.clone(),
            client_id,
            secret,
            audience: e.audience.clone(),
            client,
            cache: std::sync::RwLock::new(std::collections::HashMap::new()),
            counters: crate::metrics::CacheCounters::default(),
        }))
    }

    /// Count cache lookups into `counters`.
    pub fn count_into(&mut self, counters: crate::metrics::CacheCounters) {
        self.counters = counters;
    }

    /// What the issuer says about `token`; `Err` with a client-safe reason when it is not
    /// to be accepted.
    pub async fn introspect(
        &self,
        token: &str,
        now: u64,
    ) -> Result<super::verify::VerifiedClaims, IntrospectError> {
        let key = crate::secret::sha256_b64(token);
        if let Some((claims, until)) = self.cache.read().ok().and_then(|c| c.get(&key).cloned())
            && now < until
        {
            self.counters.hit();
            return Ok(claims);
        }
        self.counters.miss();
        let res = self
            .client
            .post(&self.endpoint)
            .basic_auth(&self.client_id, Some(&self.secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "token={}&token_type_hint=access_token",
                url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .map_err(|_| IntrospectError::Unreachable)?;
        let body: Value = res
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(IntrospectError::Unreadable)?;
        if body.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(IntrospectError::Inactive);
        }
        let aud_ok = match body.get("aud") {
            Some(Value::String(a)) => a == &self.audience,
            Some(Value::Array(items)) => items
                .iter()
                .any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(IntrospectError::WrongAudience);
        }
        let claims: super::verify::VerifiedClaims = serde_json::from_value(json_claims(&body))
            .map_err(|_| IntrospectError::MissingClaims)?;
        if now > claims.exp {
            return Err(IntrospectError::Expired);
        }
        let until = claims.exp.min(now + 60);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() > 10_000 {
                cache.retain(|_, (_, u)| *u > now);
            }
            cache.insert(key, (claims.clone(), until));
        }
        Ok(claims)
    }
}

/// The introspection answer in the shape of token claims (`iss` defaults to empty).
fn json_claims(body: &Value) -> Value {
    let mut v = body.clone();
    if v.get("iss").is_none() {
        v["iss"] = Value::String(String::new());
    }
    // `sub` is optional in RFC 7662; a client's own token is about the client.
    if v.get("sub").is_none() {
        v["sub"] = v
            .get("client_id")
            .cloned()
            .unwrap_or(Value::String("unknown".into()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An introspection endpoint on port 0 that calls every token active; counts its calls.
    async fn issuer(calls: Arc<std::sync::atomic::AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/introspect",
            axum::routing::post(move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    axum::Json(serde_json::json!({
                        "active": true, "sub": "u", "aud": "https://rs.example/mcp",
                        "exp": 2_000_000_000u64, "scope": "mcp:read"
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/introspect")
    }

    /// An introspector for the resource `https://rs.example/mcp` asking `endpoint`.
    fn test_introspector(endpoint: String) -> Introspector {
        Introspector {
            endpoint,
            client_id: "rs".into(),
            secret: "s".into(),
            audience: "https://rs.example/mcp".into(),
            client: reqwest::Client::new(),
            cache: std::sync::RwLock::new(std::collections::HashMap::new()),
            counters: crate::metrics::CacheCounters::default(),
        }
    }

    #[tokio::test]
    async fn introspection_cache_counts_hits_and_misses() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut introspector = test_introspector(issuer(calls.clone()).await);
        let counters = crate::metrics::CacheCounters::default();
        introspector.count_into(counters.clone());
        let now = 1_800_000_000;
        introspector.introspect("opaque-1", now).await.unwrap();
        assert_eq!(counters.counts(), (0, 1));
        introspector.introspect("opaque-1", now + 1).await.unwrap();
        assert_eq!(
            counters.counts(),
            (1, 1),
            "the second answer comes from the cache"
        );
        introspector.introspect("opaque-2", now + 1).await.unwrap();
        assert_eq!(counters.counts(), (1, 2));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// `app` served on a port of its own; its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// An issuer whose RFC 8414 metadata is `meta(base)` and whose `/jwks` answers `jwks`.
    async fn metadata_server(
        meta: impl Fn(&str) -> Value + Clone + Send + Sync + 'static,
        jwks: &'static str,
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let doc = meta(&base);
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                axum::routing::get(move || async move { axum::Json(doc) }),
            )
            .route("/jwks", axum::routing::get(move || async move { jwks }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn discovery_refuses_metadata_naming_another_issuer() {
        let issuer = metadata_server(
            |base| serde_json::json!({"issuer": "https://elsewhere.example", "jwks_uri": format!("{base}/jwks")}),
            "{\"keys\": []}",
        )
        .await;
        let err = discover_jwks_uri(&reqwest::Client::new(), &issuer)
            .await
            .unwrap_err();
        match &err {
            FetchError::IssuerMismatch {
                url,
                named,
                expected,
            } => {
                assert_eq!(
                    url,
                    &format!("{issuer}/.well-known/oauth-authorization-server")
                );
                assert_eq!(named, "https://elsewhere.example");
                assert_eq!(expected, &issuer);
            }
            other => panic!("expected an issuer mismatch, got {other:?}"),
        }
        assert!(
            err.to_string()
                .contains("names issuer `https://elsewhere.example`")
        );
    }

    #[tokio::test]
    async fn discovery_failures_say_what_failed() {
        let client = reqwest::Client::new();
        let issuer = metadata_server(|base| serde_json::json!({"issuer": base}), "").await;
        assert!(matches!(
            discover_jwks_uri(&client, &issuer).await,
            Err(FetchError::NoJwksUri { .. })
        ));
        // Nothing answers at any well-known URL: the last one's status is reported.
        let nothing = serve(axum::Router::new()).await;
        match discover_jwks_uri(&client, &nothing).await {
            Err(FetchError::Status { url, status }) => {
                assert_eq!(url, format!("{nothing}/.well-known/openid-configuration"));
                assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
            }
            other => panic!("expected a bad status, got {other:?}"),
        }
        assert!(matches!(
            discover_jwks_uri(&client, "not a url").await,
            Err(FetchError::NoDiscoveryUrl { .. })
        ));
    }

    #[tokio::test]
    async fn the_fetcher_tells_a_broken_jwks_from_an_unreachable_issuer() {
        let meta =
            |base: &str| serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")});
        let fetch = |issuer: String| http_jwks_fetcher(issuer, None).unwrap();

        let issuer = metadata_server(meta, "{\"keys\": \"none\"}").await;
        assert!(matches!(
            fetch(issuer)().await,
            Err(FetchError::NotJwkSet { .. })
        ));
        let issuer = metadata_server(meta, "<html>").await;
        assert!(matches!(
            fetch(issuer)().await,
            Err(FetchError::MalformedJson { .. })
        ));
        let issuer = metadata_server(meta, "{\"keys\": []}").await;
        assert!(fetch(issuer)().await.unwrap().keys.is_empty());

        // A port nobody listens on (bound, then released).
        let gone = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        assert!(matches!(
            fetch(gone)().await,
            Err(FetchError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn introspection_refusals_are_typed_and_keep_their_texts() {
        let answer = |body: Value| {
            axum::Router::new().route(
                "/introspect",
                axum::routing::post(move || async move { axum::Json(body) }),
            )
        };
        let introspector = test_introspector;
        let now = 1_800_000_000u64;
        let cases = [
            (
                serde_json::json!({"active": false}),
                IntrospectError::Inactive,
                "the token is not active",
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": "https://other.example", "exp": now + 60}),
                IntrospectError::WrongAudience,
                "the token is meant for another resource",
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": ["https://rs.example/mcp"]}),
                IntrospectError::MissingClaims,
                "the issuer's introspection answer lacks sub or exp",
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": "https://rs.example/mcp", "exp": now - 1}),
                IntrospectError::Expired,
                "the token has expired",
            ),
        ];
        for (body, want, text) in cases {
            let base = serve(answer(body)).await;
            let err = introspector(format!("{base}/introspect"))
                .introspect("opaque", now)
                .await
                .unwrap_err();
            assert_eq!(err, want);
            assert_eq!(err.to_string(), text);
        }
        let unreadable = serve(
            axum::Router::new().route("/introspect", axum::routing::post(|| async { "not json" })),
        )
        .await;
        assert_eq!(
            introspector(format!("{unreadable}/introspect"))
                .introspect("opaque", now)
                .await,
            Err(IntrospectError::Unreadable)
        );
        let gone = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/introspect", listener.local_addr().unwrap())
        };
        assert_eq!(
            introspector(gone).introspect("opaque", now).await,
            Err(IntrospectError::Unreachable)
        );
    }

    #[test]
    fn discovery_order() {
        assert_eq!(
            discovery_urls("https://idp.example"),
            [
                "https://idp.example/.well-known/oauth-authorization-server",
                "https://idp.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            discovery_urls("https://idp.example/realms/x/"),
            [
                "https://idp.example/.well-known/oauth-authorization-server/realms/x",
                "https://idp.example/.well-known/openid-configuration/realms/x",
                "https://idp.example/realms/x/.well-known/openid-configuration"
            ]
        );
    }
}
