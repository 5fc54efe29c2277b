//! A fixed-window counter per source address, for endpoints that must not be flooded
//! (registration, sign-in, authorization, token). Windows are keyed on the injected clock.
//! On a store that replicas share the count is the fleet's (one row per address and
//! window); otherwise, and while that store cannot answer, it is this process's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::store::Store;

/// Allows `limit` events per `window` seconds per address.
pub struct RateLimiter {
    limit: u32,
    window: u64,
    counts: Mutex<HashMap<IpAddr, (u64, u32)>>,
    /// The store that counts for the fleet, and this limit's name in it.
    shared: Option<(Arc<dyn Store>, &'static str)>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter; a `limit` of 0 disables it.
    pub fn new(limit: u32, window: u64) -> Self {
        Self {
            limit,
            window: window.max(1),
            counts: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// A limiter that counts in `store` under `bucket` when the store counts for a fleet.
    pub fn counted_in(
        limit: u32,
        window: u64,
        store: Arc<dyn Store>,
        bucket: &'static str,
    ) -> Self {
        Self {
            shared: Some((store, bucket)),
            ..Self::new(limit, window)
        }
    }

    /// Count one event; `Err(retry_after_seconds)` when over the limit.
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let window_start = now - now % self.window;
        let retry = window_start + self.window - now;
        if let Some((store, bucket)) = &self.shared {
            match store.count_event(
                bucket,
                &ip.to_string(),
                window_start,
                window_start + self.window,
            ) {
                Ok(Some(n)) => {
                    return if n > u64::from(self.limit) {
                        Err(retry)
                    } else {
                        Ok(())
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "rate limit: the store cannot count; counting here")
                }
            }
        }
        let Ok(mut counts) = self.counts.lock() else {
            return Ok(());
        };
        if counts.len() > 10_000 {
            counts.retain(|_, (start, _)| *start == window_start);
        }
        let entry = counts.entry(ip).or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        if entry.1 >= self.limit {
            return Err(retry);
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_per_window() {
        let l = RateLimiter::new(2, 60);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.check(a, 120).is_ok());
        assert!(l.check(a, 121).is_ok());
        assert_eq!(l.check(a, 130), Err(50));
        assert!(l.check(b, 130).is_ok());
        assert!(l.check(a, 180).is_ok(), "a new window starts afresh");
    }

    /// A store that counts for the fleet: two replicas' limiters share one count.
    #[test]
    fn a_counting_store_limits_the_fleet() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::InMemoryStore::new());
        let one = RateLimiter::counted_in(3, 60, store.clone(), "register");
        let two = RateLimiter::counted_in(3, 60, store.clone(), "register");
        let other = RateLimiter::counted_in(3, 60, store, "token");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(one.check(a, 120).is_ok());
        assert!(two.check(a, 121).is_ok());
        assert!(one.check(a, 122).is_ok());
        assert_eq!(
            two.check(a, 130),
            Err(50),
            "the fourth, on either replica, is refused"
        );
        assert!(other.check(a, 130).is_ok(), "another limit counts apart");
        assert!(one.check(a, 180).is_ok(), "a new window starts afresh");
    }
}
