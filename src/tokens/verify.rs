//! Verifying access tokens: algorithm pinned to the key's, signature against a cached JWKS
//! (an unknown `kid` triggers one rate-limited refetch), `iss`, `aud`, and `exp`/`nbf`
//! against the injected clock (RFC 8725 §3.1, RFC 9068 §4). A `crit` header is refused
//! from every issuer: we understand no JWS extensions (RFC 7515 §4.1.11). The gateway's own
//! tokens ([`Verifier::own_tokens`]) must also be typed `at+jwt` and carry a `jti`, with no
//! leeway (one clock signs and checks them); other issuers get the configured leeway.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;

use super::fetch::FetchError;
use crate::metrics::CacheCounters;

/// Claims of a verified access token, as the rest of the gateway sees them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VerifiedClaims {
    /// Issuer.
    pub iss: String,
    /// Subject (the user).
    pub sub: String,
    /// Expiry.
    pub exp: u64,
    /// Token id, if the issuer sets one.
    #[serde(default)]
    pub jti: Option<String>,
    /// Granted scopes, space separated.
    #[serde(default)]
    pub scope: String,
    /// The client the token was issued to.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The person's email, when the issuer names it.
    #[serde(default)]
    pub email: Option<String>,
    /// The person's name, likewise.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    scp: Option<Value>,
}

impl VerifiedClaims {
    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}

/// Why a token was refused. Every variant is an `invalid_token` to the client; the variant
/// is for logs and metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not a well-formed JWS, or an algorithm we never accept.
    #[error("the token is malformed")]
    Malformed,
    /// The `kid` is not in the key set, even after a refetch.
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify, or the header algorithm is not the key's.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `iss` is not the expected issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not name this resource.
    #[error("the token is meant for another resource")]
    WrongAudience,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token was revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The key set could not be fetched and none is cached.
    #[error("the signing keys are unavailable")]
    KeysUnavailable,
    /// The header has `crit`: it names extensions we do not understand (RFC 7515 §4.1.11).
    #[error("the token uses a critical header extension this server does not understand")]
    CriticalHeader,
    /// Not typed as a JWT access token (`typ: at+jwt`, RFC 9068 §4), or missing `jti`.
    #[error("the token is not an access token of this issuer")]
    NotAccessToken,
}

impl VerifyError {
    /// A short name for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::KeysUnavailable => "keys_unavailable",
            Self::CriticalHeader => "critical_header",
            Self::NotAccessToken => "not_access_token",
        }
    }
}

/// A future that yields a key set, or why it could not be fetched.
pub type JwksFuture = Pin<Box<dyn Future<Output = Result<JwkSet, FetchError>> + Send>>;

/// Where a [`JwksCache`] gets keys from: our own key ring in-process, or an HTTP JWKS URI.
pub type JwksFetcher = Arc<dyn Fn() -> JwksFuture + Send + Sync>;

#[derive(Clone)]
struct CachedKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct CacheInner {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<u64>,
}

/// A JWKS cache: keys by `kid`, refreshed after `ttl`, refetched at most once per
/// `min_refetch` seconds when a token names an unknown `kid`; stale keys stay usable when a
/// refetch fails.
pub struct JwksCache {
    fetch: JwksFetcher,
    ttl: u64,
    min_refetch: u64,
    inner: RwLock<CacheInner>,
    /// Hits (a cached key answered) and misses (the source was asked, or an unknown `kid`
    /// could not be looked for yet), for `/metrics`.
    counters: CacheCounters,
}

impl JwksCache {
    /// A cache over `fetch`.
    pub fn new(fetch: JwksFetcher, ttl: u64, min_refetch: u64) -> Self {
        Self {
            fetch,
            ttl,
            min_refetch,
            inner: RwLock::new(CacheInner::default()),
            counters: CacheCounters::default(),
        }
    }

    /// Count lookups into `counters`.
    pub fn count_into(&mut self, counters: CacheCounters) {
        self.counters = counters;
    }

    /// The key named `kid` and the one algorithm it is for, fetching the set when the
    /// cache has no fresh copy (see [`JwksCache`] for when it refetches).
    pub async fn key_for(
        &self,
        kid: &str,
        now: u64,
    ) -> Result<(Algorithm, DecodingKey), VerifyError> {
        self.key(kid, now).await.map(|k| (k.alg, k.key))
    }

    fn lookup(&self, kid: &str) -> (Option<CachedKey>, Option<u64>) {
        match self.inner.read() {
            Ok(inner) => (inner.keys.get(kid).cloned(), inner.fetched_at),
            Err(_) => (None, None),
        }
    }

    async fn key(&self, kid: &str, now: u64) -> Result<CachedKey, VerifyError> {
        let (cached, fetched_at) = self.lookup(kid);
        let fresh = fetched_at.is_some_and(|t| now < t.saturating_add(self.ttl));
        let may_refetch = fetched_at.is_none_or(|t| now >= t.saturating_add(self.min_refetch));
        match cached {
            Some(key) if fresh || !may_refetch => {
                self.counters.hit();
                return Ok(key);
            }
            None if !may_refetch => {
                self.counters.miss();
                return Err(VerifyError::UnknownKey);
            }
            _ => self.counters.miss(),
        }
        match (self.fetch)().await {
            Ok(set) => {
                let keys: HashMap<String, CachedKey> = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let kid = jwk.common.key_id.clone()?;
                        let alg = match jwk.common.key_algorithm {
                            Some(a) => Algorithm::try_from(a).ok()?,
                            // Some providers (Entra) publish keys without `alg`: the
                            // usual algorithm of the key's type.
                            None => match &jwk.algorithm {
                                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                                {
                                    Algorithm::ES256
                                }
                                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                                    Algorithm::EdDSA
                                }
                                _ => return None,
                            },
                        };
                        let key = DecodingKey::from_jwk(jwk).ok()?;
                        Some((kid, CachedKey { alg, key }))
                    })
                    .collect();
                let found = keys.get(kid).cloned();
                if let Ok(mut inner) = self.inner.write() {
                    inner.keys = keys;
                    inner.fetched_at = Some(now);
                }
                found.ok_or(VerifyError::UnknownKey)
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS refetch failed; keeping cached keys");
                if let Ok(mut inner) = self.inner.write() {
                    // Rate-limit retries against a failing key source too.
                    inner.fetched_at = Some(now);
                }
                cached.ok_or(VerifyError::KeysUnavailable)
            }
        }
    }
}

/// Verifies access tokens for one resource.
pub struct Verifier {
    /// Accepted issuers.
    pub issuers: Vec<String>,
    /// The audience the token must name: our resource URL.
    pub audience: String,
    /// Further audiences accepted (the authorization server's view: every resource it
    /// serves). A resource server's verifier has none.
    also: Vec<String>,
    /// Tolerated clock skew, seconds.
    pub leeway: u64,
    /// The key source.
    pub keys: Keys,
    /// The gateway's own tokens: `typ: at+jwt` and `jti` required, no leeway.
    own: bool,
    /// Tokens whose signature already verified: the signature check is most of the cost of
    /// a request (ES256 ≈ 80 µs), so a token presented again is only re-checked for time.
    verified: VerifiedCache,
}

/// SHA-256 of a token -> its claims and until when the entry may be used: a bounded cache
/// (TinyLFU admission, least-recently-used eviction), so a flood of new tokens evicts a few
/// entries rather than wiping every one.
struct VerifiedCache {
    entries: moka::sync::Cache<[u8; 32], (VerifiedClaims, u64)>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_MAX)
                .time_to_live(std::time::Duration::from_secs(VERIFIED_TTL))
                .build(),
        }
    }
}

/// Entries kept at most.
const VERIFIED_MAX: u64 = 10_000;
/// An entry is trusted at most this long, so a key withdrawn from the JWKS stops working
/// soon even for tokens that were cached.
const VERIFIED_TTL: u64 = 300;

impl VerifiedCache {
    fn key(token: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref(),
        );
        out
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<VerifiedClaims> {
        self.entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(claims, _)| claims)
    }

    fn put(&self, key: [u8; 32], claims: VerifiedClaims, until: u64, _now: u64) {
        self.entries.insert(key, (claims, until));
    }
}

/// Where signature keys come from.
pub enum Keys {
    /// Asymmetric keys from a JWKS (ours in-process, or an external issuer's over HTTP).
    Jwks(JwksCache),
    /// One HMAC secret shared with an existing application (HS256 only).
    Hmac(DecodingKey),
}

/// Asymmetric algorithms only: `none` and HS* are never accepted (RFC 8725 §3.1).
fn is_accepted(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Verifier {
    /// A verifier for tokens of `issuers` naming `audience`.
    pub fn new(issuers: Vec<String>, audience: String, leeway: u64, keys: Keys) -> Self {
        Self {
            also: Vec::new(),
            issuers,
            audience,
            leeway,
            keys,
            own: false,
            verified: VerifiedCache::default(),
        }
    }

    /// Also accept tokens for these audiences.
    pub fn accepting_also(mut self, audiences: Vec<String>) -> Self {
        self.also = audiences;
        self
    }

    /// Verify the gateway's own tokens (RFC 9068 §4): the header must say `typ: at+jwt`,
    /// the claims must carry a `jti` (what revocation is keyed on), and `exp`/`nbf` get no
    /// leeway, since the same clock signs and checks them.
    pub fn own_tokens(mut self) -> Self {
        self.own = true;
        self.leeway = 0;
        self
    }

    /// Count the key cache's hits and misses into `counters` (no effect with an HMAC key,
    /// which is not cached).
    pub fn count_key_lookups(&mut self, counters: CacheCounters) {
        if let Keys::Jwks(cache) = &mut self.keys {
            cache.count_into(counters);
        }
    }

    /// Verify `token` at time `now`.
    pub async fn verify(&self, token: &str, now: u64) -> Result<VerifiedClaims, VerifyError> {
        let cache_key = VerifiedCache::key(token);
        if let Some(claims) = self.verified.get(&cache_key, now) {
            self.check_times(&claims, now)?;
            return Ok(claims);
        }
        let claims = self.verify_signed(token, now).await?;
        let until = claims
            .exp
            .saturating_add(self.leeway)
            .min(now + VERIFIED_TTL);
        self.verified.put(cache_key, claims.clone(), until, now);
        Ok(claims)
    }

    fn check_times(&self, claims: &VerifiedClaims, now: u64) -> Result<(), VerifyError> {
        if now > claims.exp.saturating_add(self.leeway) {
            return Err(VerifyError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now.saturating_add(self.leeway) < nbf)
        {
            return Err(VerifyError::NotYetValid);
        }
        Ok(())
    }

    async fn verify_signed(&self, token: &str, now: u64) -> Result<VerifiedClaims, VerifyError> {
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        // We implement no JWS extension, so any `crit` (even an empty one, which RFC 7515
        // forbids) makes the token unacceptable.
        if header.crit.is_some() {
            return Err(VerifyError::CriticalHeader);
        }
        if self.own && !header.typ.as_deref().is_some_and(is_at_jwt) {
            return Err(VerifyError::NotAccessToken);
        }
        let cached;
        let (alg, key) = match &self.keys {
            Keys::Jwks(cache) => {
                if !is_accepted(header.alg) {
                    return Err(VerifyError::Malformed);
                }
                let kid = header.kid.as_deref().ok_or(VerifyError::UnknownKey)?;
                cached = cache.key(kid, now).await?;
                if cached.alg != header.alg {
                    return Err(VerifyError::BadSignature);
                }
                (cached.alg, &cached.key)
            }
            Keys::Hmac(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(VerifyError::Malformed);
                }
                (Algorithm::HS256, key)
            }
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Value>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                _ => VerifyError::Malformed,
            }
        })?;
        let raw = data.claims;
        let iss = raw.get("iss").and_then(Value::as_str).unwrap_or_default();
        if !self.issuers.iter().any(|i| i == iss) {
            return Err(VerifyError::WrongIssuer);
        }
        if !audience_matches(raw.get("aud"), &self.audience)
            && !self
                .also
                .iter()
                .any(|a| audience_matches(raw.get("aud"), a))
        {
            return Err(VerifyError::WrongAudience);
        }
        let mut claims: VerifiedClaims =
            serde_json::from_value(raw).map_err(|_| VerifyError::Malformed)?;
        if self.own && claims.jti.as_deref().is_none_or(str::is_empty) {
            return Err(VerifyError::NotAccessToken);
        }
        // Some issuers (Entra) put scopes in `scp`, as a string or an array.
        if claims.scope.is_empty() {
            claims.scope = match claims.scp.take() {
                Some(Value::String(s)) => s,
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
        }
        self.check_times(&claims, now)?;
        Ok(claims)
    }
}

/// `at+jwt`, or its full media type `application/at+jwt` (RFC 9068 §2.1; media types are
/// case-insensitive).
fn is_at_jwt(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// `aud` may be a string or an array (RFC 7519 §4.1.3); ours must be in it.
fn audience_matches(aud: Option<&Value>, expected: &str) -> bool {
    match aud {
        Some(Value::String(s)) => s == expected,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(expected)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningAlg;
    use crate::tokens::issue::{AccessClaims, sign};
    use crate::tokens::keys::SigningKey;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: u64 = 1_800_000_000;

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "http://127.0.0.1:1".into(),
            sub: "alice".into(),
            aud: "http://127.0.0.1:1/mcp".into(),
            exp: NOW + 60,
            iat: NOW,
            nbf: NOW,
            jti: "j1".into(),
            scope: "mcp:read".into(),
            client_id: "c1".into(),
            email: None,
            name: None,
        }
    }

    fn verifier(keys: Vec<Arc<SigningKey>>, fetches: Arc<AtomicUsize>) -> Verifier {
        let fetch: JwksFetcher = Arc::new(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            let set = JwkSet {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            };
            Box::pin(async move { Ok(set) })
        });
        Verifier::new(
            vec!["http://127.0.0.1:1".into()],
            "http://127.0.0.1:1/mcp".into(),
            5,
            Keys::Jwks(JwksCache::new(fetch, 300, 10)),
        )
    }

    fn setup() -> (Arc<SigningKey>, Verifier, Arc<AtomicUsize>) {
        let key = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let v = verifier(vec![key.clone()], fetches.clone());
        (key, v, fetches)
    }

    #[tokio::test]
    async fn valid_token_passes_and_keys_are_cached() {
        let (key, v, fetches) = setup();
        let token = sign(&key, &claims()).unwrap();
        let c = v.verify(&token, NOW).await.unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.scopes().collect::<Vec<_>>(), ["mcp:read"]);
        v.verify(&token, NOW + 1).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_but_still_expire() {
        let (key, v, _) = setup();
        let token = sign(&key, &claims()).unwrap();
        v.verify(&token, NOW).await.unwrap();
        assert!(
            v.verified
                .get(&VerifiedCache::key(&token), NOW + 1)
                .is_some()
        );
        assert_eq!(v.verify(&token, NOW + 66).await, Err(VerifyError::Expired));
        // A different token with the same claims is verified on its own.
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[2] = "AAAA";
        assert!(v.verify(&parts.join("."), NOW).await.is_err());
    }

    #[tokio::test]
    async fn wrong_audience_is_refused() {
        let (key, v, _) = setup();
        let mut c = claims();
        c.aud = "http://other.example/mcp".into();
        let token = sign(&key, &c).unwrap();
        assert_eq!(v.verify(&token, NOW).await, Err(VerifyError::WrongAudience));
    }

    #[tokio::test]
    async fn wrong_issuer_is_refused() {
        let (key, v, _) = setup();
        let mut c = claims();
        c.iss = "http://evil.example".into();
        let token = sign(&key, &c).unwrap();
        assert_eq!(v.verify(&token, NOW).await, Err(VerifyError::WrongIssuer));
    }

    #[tokio::test]
    async fn expiry_and_nbf_use_the_given_clock_with_leeway() {
        let (key, v, _) = setup();
        let token = sign(&key, &claims()).unwrap();
        assert!(v.verify(&token, NOW + 60 + 5).await.is_ok());
        assert_eq!(v.verify(&token, NOW + 66).await, Err(VerifyError::Expired));
        assert!(v.verify(&token, NOW - 5).await.is_ok());
        assert_eq!(
            v.verify(&token, NOW - 6).await,
            Err(VerifyError::NotYetValid)
        );
    }

    #[tokio::test]
    async fn token_from_another_key_is_refused() {
        let (_, v, _) = setup();
        let stranger = SigningKey::generate(SigningAlg::ES256).unwrap();
        let token = sign(&stranger, &claims()).unwrap();
        assert_eq!(v.verify(&token, NOW).await, Err(VerifyError::UnknownKey));
    }

    #[tokio::test]
    async fn tampered_payload_fails_signature() {
        let (key, v, _) = setup();
        let token = sign(&key, &claims()).unwrap();
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut c = claims();
        c.scope = "mcp:admin".into();
        let other = sign(&key, &c).unwrap();
        parts[1] = other.split('.').nth(1).unwrap().to_string();
        let forged = parts.join(".");
        assert_eq!(v.verify(&forged, NOW).await, Err(VerifyError::BadSignature));
    }

    #[tokio::test]
    async fn alg_none_and_hs256_are_refused() {
        use base64::Engine as _;
        let (key, v, _) = setup();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = b64(&serde_json::to_string(&claims()).unwrap());
        let none = format!(
            "{}.{}.",
            b64(&format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid)),
            payload
        );
        assert_eq!(v.verify(&none, NOW).await, Err(VerifyError::Malformed));
        // HS256 "signed" with the public key as the secret: the classic confusion attack.
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let public = serde_json::to_vec(&key.jwk).unwrap();
        let hs = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(v.verify(&hs, NOW).await, Err(VerifyError::Malformed));
        assert_eq!(v.verify("a.b.c", NOW).await, Err(VerifyError::Malformed));
    }

    fn sign_with(
        key: &SigningKey,
        edit: impl FnOnce(&mut jsonwebtoken::Header),
        c: &AccessClaims,
    ) -> String {
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        edit(&mut header);
        jsonwebtoken::encode(&header, c, &key.encoding).unwrap()
    }

    #[tokio::test]
    async fn own_tokens_must_be_typed_at_jwt() {
        let (key, v, _) = setup();
        let v = v.own_tokens();
        assert!(v.verify(&sign(&key, &claims()).unwrap(), NOW).await.is_ok());
        let untyped = sign_with(&key, |_| {}, &claims());
        assert_eq!(
            v.verify(&untyped, NOW).await,
            Err(VerifyError::NotAccessToken)
        );
        let jwt = sign_with(&key, |h| h.typ = Some("JWT".into()), &claims());
        assert_eq!(v.verify(&jwt, NOW).await, Err(VerifyError::NotAccessToken));
        let media = sign_with(
            &key,
            |h| h.typ = Some("application/AT+JWT".into()),
            &claims(),
        );
        assert!(v.verify(&media, NOW).await.is_ok());
        // Another issuer's tokens need no `typ` (many IdPs send `JWT`).
        let (key, other, _) = setup();
        assert!(
            other
                .verify(&sign_with(&key, |_| {}, &claims()), NOW)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn own_tokens_need_a_jti() {
        let (key, v, _) = setup();
        let v = v.own_tokens();
        #[derive(serde::Serialize)]
        struct NoJti<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            exp: u64,
            scope: &'a str,
        }
        let c = claims();
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        let payload = NoJti {
            iss: &c.iss,
            sub: &c.sub,
            aud: &c.aud,
            exp: c.exp,
            scope: &c.scope,
        };
        let token = jsonwebtoken::encode(&header, &payload, &key.encoding).unwrap();
        assert_eq!(
            v.verify(&token, NOW).await,
            Err(VerifyError::NotAccessToken)
        );
        let mut empty = claims();
        empty.jti = String::new();
        let token = sign(&key, &empty).unwrap();
        assert_eq!(
            v.verify(&token, NOW).await,
            Err(VerifyError::NotAccessToken)
        );
    }

    #[tokio::test]
    async fn own_tokens_get_no_leeway() {
        let (key, v, _) = setup();
        let v = v.own_tokens();
        let token = sign(&key, &claims()).unwrap();
        assert!(v.verify(&token, NOW + 60).await.is_ok());
        assert_eq!(v.verify(&token, NOW + 61).await, Err(VerifyError::Expired));
        let (key, v, _) = setup();
        let v = v.own_tokens();
        let token = sign(&key, &claims()).unwrap();
        assert_eq!(
            v.verify(&token, NOW - 1).await,
            Err(VerifyError::NotYetValid)
        );
        assert!(v.verify(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn a_crit_header_is_refused_from_every_issuer() {
        for own in [false, true] {
            let (key, v, _) = setup();
            let v = if own { v.own_tokens() } else { v };
            for crit in [vec!["exp".to_string()], vec!["b64".into()], vec![]] {
                let token = sign_with(
                    &key,
                    |h| {
                        h.typ = Some("at+jwt".into());
                        h.crit = Some(crit.clone());
                    },
                    &claims(),
                );
                assert_eq!(
                    v.verify(&token, NOW).await,
                    Err(VerifyError::CriticalHeader),
                    "own={own} crit={crit:?}"
                );
            }
        }
        let secret = b"0123456789abcdef0123456789abcdef";
        let v = Verifier::new(
            vec!["http://127.0.0.1:1".into()],
            "http://127.0.0.1:1/mcp".into(),
            5,
            Keys::Hmac(DecodingKey::from_secret(secret)),
        );
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        let enc = jsonwebtoken::EncodingKey::from_secret(secret);
        assert!(
            v.verify(
                &jsonwebtoken::encode(&header, &claims(), &enc).unwrap(),
                NOW
            )
            .await
            .is_ok()
        );
        header.crit = Some(vec!["x-ext".into()]);
        let token = jsonwebtoken::encode(&header, &claims(), &enc).unwrap();
        assert_eq!(
            v.verify(&token, NOW).await,
            Err(VerifyError::CriticalHeader)
        );
    }

    #[tokio::test]
    async fn key_cache_counts_hits_and_misses() {
        let key = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut v = verifier(vec![key.clone()], fetches.clone());
        let counters = CacheCounters::default();
        v.count_key_lookups(counters.clone());
        v.verify(&sign(&key, &claims()).unwrap(), NOW)
            .await
            .unwrap();
        assert_eq!(counters.counts(), (0, 1), "the first lookup fetches");
        let mut other = claims();
        other.jti = "j2".into();
        v.verify(&sign(&key, &other).unwrap(), NOW + 1)
            .await
            .unwrap();
        assert_eq!(
            counters.counts(),
            (1, 1),
            "a second token finds the key cached"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let stranger = SigningKey::generate(SigningAlg::ES256).unwrap();
        let _ = v
            .verify(&sign(&stranger, &claims()).unwrap(), NOW + 2)
            .await;
        assert_eq!(counters.counts(), (1, 2), "an unknown kid is a miss");
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_then_is_rate_limited() {
        let key = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
        let rotated = Arc::new(SigningKey::generate(SigningAlg::ES256).unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        // The source publishes both keys; the cache first learns them at NOW.
        let v = verifier(vec![key.clone(), rotated.clone()], fetches.clone());
        let stranger = SigningKey::generate(SigningAlg::ES256).unwrap();
        v.verify(&sign(&key, &claims()).unwrap(), NOW)
            .await
            .unwrap();
        v.verify(&sign(&rotated, &claims()).unwrap(), NOW)
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let bad = sign(&stranger, &claims()).unwrap();
        assert_eq!(v.verify(&bad, NOW + 1).await, Err(VerifyError::UnknownKey));
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "refetch is rate-limited");
        assert_eq!(v.verify(&bad, NOW + 11).await, Err(VerifyError::UnknownKey));
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "one refetch after the interval"
        );
    }

    #[test]
    fn the_verified_cache_stays_bounded_and_keeps_what_it_can() {
        let cache = VerifiedCache::default();
        let claims: VerifiedClaims = serde_json::from_value(serde_json::json!({
            "iss": "i", "sub": "s", "exp": NOW + 60
        }))
        .unwrap();
        let hot = VerifiedCache::key("hot");
        cache.put(hot, claims.clone(), NOW + 60, NOW);
        for i in 0..(VERIFIED_MAX + 2_000) {
            cache.put(
                VerifiedCache::key(&format!("t{i}")),
                claims.clone(),
                NOW + 60,
                NOW,
            );
            if i % 100 == 0 {
                assert!(
                    cache.get(&hot, NOW).is_some(),
                    "a token in use is not wiped"
                );
            }
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.entry_count() <= VERIFIED_MAX);
        assert!(
            cache.get(&hot, NOW + 60).is_none(),
            "never past its own expiry"
        );
    }
}
