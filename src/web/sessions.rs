//! Browser sessions and cookies: a session is a random cookie value whose hash the store
//! maps to a user and an expiry, so every replica on a shared store knows it.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::secret::{random_token, sha256_b64};
use crate::store::Store;

/// Browser sign-in sessions, kept in the store by hash of the cookie value.
pub struct Sessions {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Start a session for `sub`; returns the cookie value, or `None` when the random
    /// source or the store failed (logged).
    pub fn create(&self, sub: &str, now: u64, ttl: u64) -> Option<String> {
        let token = random_token(32)?;
        match self
            .store
            .insert_session(&sha256_b64(&token), sub, now.saturating_add(ttl))
        {
            Ok(()) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "storing a sign-in session failed");
                None
            }
        }
    }

    /// End a session (signing out).
    pub fn end(&self, token: &str) {
        if let Err(e) = self.store.end_session(&sha256_b64(token)) {
            tracing::error!(error = %e, "ending a sign-in session failed");
        }
    }

    /// The user of a live session; `None` also when the store cannot say (logged), so the
    /// person is asked to sign in rather than let through.
    pub fn user(&self, token: &str, now: u64) -> Option<String> {
        self.store
            .session(&sha256_b64(token), now)
            .inspect_err(|e| tracing::error!(error = %e, "looking up a sign-in session failed"))
            .ok()
            .flatten()
    }
}

/// The value of the cookie `name`, if the request carries it.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire() {
        let s = Sessions::new(Arc::new(crate::store::memory::InMemoryStore::new()));
        let t = s.create("alice", 100, 10).unwrap();
        assert_eq!(s.user(&t, 105).as_deref(), Some("alice"));
        assert_eq!(s.user(&t, 110), None);
        assert_eq!(s.user("forged", 105), None);
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mog_session=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, "mog_session"), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
