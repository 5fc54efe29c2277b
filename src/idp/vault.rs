//! The upstream token vault: the identity provider's tokens for each person who signed in
//! through one, sealed (AES-256-GCM, the person's subject as additional data) under a key
//! every replica derives alike ([`KeyRing::local_secret`]), kept in the store so replicas
//! share them, refreshed shortly before they expire, and handed to the upstream MCP server
//! only when the operator names a header for them (`identity_headers.upstream_token`).
//! Tokens are kept at all only then.
//!
//! Revoking a person's grant, or their signing out, drops their tokens and ends their
//! browser sessions, so the next authorization goes through the provider again. What other
//! replicas hold in memory goes within the second: the drop writes a marker into the
//! revocation log every replica follows, and a cached token whose marker is there is not
//! used again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Providers, UpstreamTokens};
use crate::store::Store;
use crate::store::view::RevocationView;
use crate::tokens::keys::{KeyEncryptionKey, KeyError, KeyRing};

/// Refresh this long before the provider's access token expires, seconds.
const REFRESH_AHEAD: u64 = 60;
/// How long a token read from the store is used before the store is asked again (another
/// replica may have refreshed or dropped it), seconds.
const CACHE_SECONDS: u64 = 30;

struct Cached {
    tokens: UpstreamTokens,
    read_at: u64,
    /// The stored record's `updated_at`: a drop of this version is announced under
    /// [`drop_marker`].
    version: u64,
}

/// The revocation-log entry that says `sub`'s tokens of record version `version` were
/// dropped (not an access token's `jti`: those are random, these have a prefix).
fn drop_marker(sub: &str, version: u64) -> String {
    format!("upstream-dropped:{version}:{sub}")
}

/// Sealed provider tokens, by person.
pub struct Vault {
    enabled: bool,
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    /// The sealing key; only when tokens are kept.
    seal: Option<KeyEncryptionKey>,
    cache: Mutex<HashMap<String, Cached>>,
    /// The revocation log as this process sees it.
    revocations: Arc<RevocationView>,
    /// One refresh at a time per person in this process.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over `store`; `enabled` when an upstream is to receive the tokens.
    pub fn new(
        enabled: bool,
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        keys: &KeyRing,
        revocations: Arc<RevocationView>,
    ) -> Result<Self, KeyError> {
        // Derived only when tokens are kept: a data dir gets its secret file only then.
        let seal = if enabled {
            Some(KeyEncryptionKey::from_bytes(
                &keys.local_secret("mog-upstream-token-vault")?,
            )?)
        } else {
            None
        };
        Ok(Self {
            enabled,
            store,
            providers,
            seal,
            cache: Mutex::new(HashMap::new()),
            revocations,
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether tokens are kept.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The sealed form of `tokens` for `sub`, or `None` when the vault keeps nothing.
    pub fn seal(&self, sub: &str, tokens: &UpstreamTokens) -> Option<Vec<u8>> {
        let key = self.seal.as_ref()?;
        let plain = serde_json::to_vec(tokens).ok()?;
        key.seal(sub, &plain)
            .inspect_err(|e| tracing::error!(error = %e, "sealing provider tokens failed"))
            .ok()
    }

    fn open(&self, sub: &str, sealed: &[u8]) -> Option<UpstreamTokens> {
        let plain = self
            .seal
            .as_ref()?
            .open(sub, sealed)
            .inspect_err(|_| tracing::warn!(%sub, "stored provider tokens do not open (another key?); the person must sign in again"))
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    fn cached(&self, sub: &str, now: u64) -> Option<UpstreamTokens> {
        let cache = self.cache.lock().ok()?;
        let c = cache.get(sub)?;
        // Dropped by another replica: the marker arrives with the revocations.
        if self
            .revocations
            .check(&drop_marker(sub, c.version), now)
            .unwrap_or(true)
        {
            return None;
        }
        let fresh = now < c.read_at.saturating_add(CACHE_SECONDS);
        let valid = c
            .tokens
            .expires_at
            .is_none_or(|exp| now.saturating_add(REFRESH_AHEAD) < exp);
        (fresh && valid).then(|| c.tokens.clone())
    }

    fn remember(&self, sub: &str, tokens: &UpstreamTokens, version: u64, now: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= 10_000 {
                cache.retain(|_, c| now < c.read_at.saturating_add(CACHE_SECONDS));
            }
            cache.insert(
                sub.to_string(),
                Cached {
                    tokens: tokens.clone(),
                    read_at: now,
                    version,
                },
            );
        }
    }

    /// The provider's access token for `sub`, refreshed when it is about to expire; `None`
    /// when there is none (never signed in through a provider, dropped, or the refresh was
    /// refused: the person must sign in again).
    pub async fn access_token(&self, sub: &str, now: u64) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if let Some(t) = self.cached(sub, now) {
            return Some(t.access_token);
        }
        let _one = self.refreshing.lock().await;
        if let Some(t) = self.cached(sub, now) {
            return Some(t.access_token);
        }
        let identity = self
            .store
            .identity(sub)
            .inspect_err(|e| tracing::error!(error = %e, "reading provider tokens failed"))
            .ok()??;
        let sealed = identity.upstream?;
        let tokens = self.open(sub, &sealed)?;
        let expiring = tokens
            .expires_at
            .is_some_and(|exp| now.saturating_add(REFRESH_AHEAD) >= exp);
        if !expiring {
            self.remember(sub, &tokens, identity.updated_at, now);
            return Some(tokens.access_token);
        }
        let (Some(refresh_token), Some(provider)) = (
            tokens.refresh_token.clone(),
            self.providers.get(&identity.provider),
        ) else {
            // Expiring and nothing to refresh with: use it while it lasts.
            return tokens
                .expires_at
                .is_some_and(|exp| now < exp)
                .then_some(tokens.access_token);
        };
        match provider.refresh(&refresh_token, now).await {
            Ok(mut fresh) => {
                if fresh.refresh_token.is_none() {
                    fresh.refresh_token = Some(refresh_token);
                }
                let new_sealed = self.seal(sub, &fresh)?;
                match self.store.swap_upstream(sub, &sealed, new_sealed, now) {
                    Ok(true) => {
                        tracing::info!(%sub, provider = %identity.provider, "provider token refreshed");
                        self.remember(sub, &fresh, now, now);
                        Some(fresh.access_token)
                    }
                    // Another replica refreshed (or dropped) first: what it stored wins.
                    Ok(false) => {
                        let again = self.store.identity(sub).ok()??;
                        let t = self.open(sub, again.upstream.as_deref()?)?;
                        self.remember(sub, &t, again.updated_at, now);
                        Some(t.access_token)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing refreshed provider tokens failed");
                        Some(fresh.access_token)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%sub, provider = %identity.provider, error = %e, "refreshing the provider token failed; the person must sign in again");
                None
            }
        }
    }

    /// Whether `sub` signed in through a provider but the vault holds nothing for them
    /// (dropped): their grants must not be refreshed until they sign in again.
    pub fn lost(&self, sub: &str) -> bool {
        self.enabled
            && self
                .store
                .identity(sub)
                .ok()
                .flatten()
                .is_some_and(|i| i.upstream.is_none())
    }

    /// Forget what this process cached for `sub` (they just signed in again).
    pub fn forget_cached(&self, sub: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(sub);
        }
    }

    /// Drop `sub`'s provider tokens and end their browser sessions (a grant revoked, a
    /// sign-out), here and, through the store, on every replica ([`forget_stored`]). A
    /// store failure is logged.
    pub fn forget(&self, sub: &str, now: u64) {
        self.forget_cached(sub);
        forget_stored(self.store.as_ref(), sub, now);
    }
}

/// The store's part of [`Vault::forget`], for who holds no vault (the `admin revoke`
/// command): drop `sub`'s provider tokens, announce the drop in the revocation log (every
/// running replica stops using what it cached within the second) and end their browser
/// sessions. Only people who signed in through a provider: a password user's sessions
/// stay. Returns whether `sub` is such a person; a store failure is logged.
pub fn forget_stored(store: &dyn Store, sub: &str, now: u64) -> bool {
    let Ok(Some(identity)) = store.identity(sub) else {
        return false;
    };
    // The marker outlives any cache entry.
    if let Err(e) = store.revoke_access_token(
        &drop_marker(sub, identity.updated_at),
        now.saturating_add(2 * CACHE_SECONDS),
    ) {
        tracing::error!(error = %e, "announcing dropped provider tokens failed");
    }
    if let Err(e) = store.drop_upstream(sub) {
        tracing::error!(error = %e, "dropping provider tokens failed");
    }
    match store.end_sessions_of(sub) {
        Ok(n) if n > 0 => tracing::info!(%sub, sessions = n, "browser sessions ended"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "ending browser sessions failed"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningAlg;
    use crate::store::Identity;
    use crate::store::memory::InMemoryStore;
    use crate::tokens::keys::SigningKey;

    fn vault(store: Arc<dyn Store>) -> Vault {
        let ring = KeyRing::from(SigningKey::generate(SigningAlg::ES256).unwrap());
        Vault::new(
            true,
            store,
            Arc::new(Providers::default()),
            &ring,
            Arc::default(),
        )
        .unwrap()
    }

    fn person(sub: &str, upstream: Option<Vec<u8>>) -> Identity {
        Identity {
            sub: sub.into(),
            provider: "corp".into(),
            email: None,
            name: None,
            scopes: None,
            upstream,
            updated_at: 1,
        }
    }

    #[tokio::test]
    async fn tokens_open_only_for_the_person_they_were_sealed_for() {
        let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
        let v = vault(store.clone());
        let t = UpstreamTokens {
            access_token: "at-alice".into(),
            refresh_token: None,
            expires_at: Some(1_000),
        };
        let sealed = v.seal("alice", &t).unwrap();
        assert!(
            !String::from_utf8_lossy(&sealed).contains("at-alice"),
            "sealed at rest"
        );
        store
            .put_identity(person("alice", Some(sealed.clone())))
            .unwrap();
        store.put_identity(person("mallory", Some(sealed))).unwrap();
        assert_eq!(
            v.access_token("alice", 100).await.as_deref(),
            Some("at-alice")
        );
        assert_eq!(
            v.access_token("mallory", 100).await,
            None,
            "moved to another row"
        );
        // Within a minute of expiry and nothing to refresh with: used while it lasts.
        v.forget_cached("alice");
        assert_eq!(
            v.access_token("alice", 990).await.as_deref(),
            Some("at-alice")
        );
        v.forget_cached("alice");
        assert_eq!(v.access_token("alice", 1_000).await, None);
    }

    #[tokio::test]
    async fn forgetting_drops_the_tokens_and_only_for_provider_people() {
        let store: Arc<dyn Store> = Arc::new(InMemoryStore::new());
        let v = vault(store.clone());
        let t = UpstreamTokens {
            access_token: "at".into(),
            refresh_token: None,
            expires_at: None,
        };
        store
            .put_identity(person("alice", v.seal("alice", &t)))
            .unwrap();
        assert!(!v.lost("alice"));
        v.forget("alice", 5);
        assert!(
            v.lost("alice"),
            "a provider person without tokens must sign in again"
        );
        assert_eq!(v.access_token("alice", 1).await, None);
        assert!(!v.lost("password-user"), "never had any");
        let off = Vault::new(
            false,
            store,
            Arc::new(Providers::default()),
            &KeyRing::from(SigningKey::generate(SigningAlg::ES256).unwrap()),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(
            off.seal("alice", &t),
            None,
            "nothing kept unless an upstream wants it"
        );
    }
}
