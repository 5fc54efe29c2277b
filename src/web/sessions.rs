//! Browser sessions and cookies: a session is a random cookie value whose hash maps to a
//! user and an expiry. In memory: a restart asks users to sign in again, nothing else.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, header};

use crate::secret::{random_token, sha256_b64};

/// Browser sessions: hash of the cookie value -> (user, expiry).
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, (String, u64)>>,
}

impl Sessions {
    /// Start a session for `sub`; returns the cookie value.
    pub fn create(&self, sub: &str, now: u64, ttl: u64) -> Option<String> {
        let token = random_token(32)?;
        let mut map = self.inner.lock().ok()?;
        map.retain(|_, (_, exp)| *exp > now);
        map.insert(sha256_b64(&token), (sub.to_string(), now + ttl));
        Some(token)
    }

    /// End a session (signing out).
    pub fn end(&self, token: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&sha256_b64(token));
        }
    }

    /// The user of a live session.
    pub fn user(&self, token: &str, now: u64) -> Option<String> {
        let map = self.inner.lock().ok()?;
        map.get(&sha256_b64(token))
            .filter(|(_, exp)| *exp > now)
            .map(|(sub, _)| sub.clone())
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
        let s = Sessions::default();
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
