//! A fixed-window counter per source address, for cheap endpoints that must not be
//! flooded (registration). Windows are keyed on the injected clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Allows `limit` events per `window` seconds per address.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: u64,
    counts: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl RateLimiter {
    /// A limiter; a `limit` of 0 disables it.
    pub fn new(limit: u32, window: u64) -> Self {
        Self {
            limit,
            window: window.max(1),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Count one event; `Err(retry_after_seconds)` when over the limit.
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let window_start = now - now % self.window;
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
            return Err(window_start + self.window - now);
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
}
