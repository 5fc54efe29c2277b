//! [`RevocationView`]: the revoked access tokens, in memory, so the MCP hot path checks a
//! token without asking the store. The view catches up from the store's revocation log
//! ([`Store::revocations_since`]) by sequence number: the gateway syncs it every second and
//! right after each revocation it writes itself, and another replica's revocations arrive
//! with the next sync. A view that has not heard from the store for longer than
//! [`TRUST_WITHOUT_STORE`] stops answering "not revoked" ([`Stale`]).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use super::{Store, StoreResult};

/// How often, in seconds, the gateway syncs the view with the store: another replica's
/// revocation is refused here within about this long.
pub const SYNC_EVERY: u64 = 1;

/// The longest, in seconds, the gateway trusts its memory of revocations without hearing
/// from the store: after that, a token not known to be revoked is refused as unverifiable
/// (503) until a sync succeeds. Syncs run every second, so this rides out a few failed
/// rounds without letting a replica cut off from the store serve revoked tokens for long.
pub const TRUST_WITHOUT_STORE: u64 = 10;

/// The view has not synced within [`TRUST_WITHOUT_STORE`] seconds: whether a token was
/// revoked is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "revocations not synced with the store since {last_sync:?} (trusted for {TRUST_WITHOUT_STORE} s)"
)]
pub struct Stale {
    /// When the last successful sync ran; `None` if none ever did.
    pub last_sync: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Revoked jti -> its exp (dropped once expired: the token is refused as expired anyway).
    revoked: HashMap<String, u64>,
    /// The newest log sequence number seen.
    last_seq: u64,
    /// When a sync last succeeded.
    synced_at: Option<u64>,
    /// When a catch-up on the request path last failed, so a store that is down is asked at
    /// most once a second from there.
    failed_at: Option<u64>,
}

/// Revoked access tokens, in memory, caught up from the store's revocation log.
#[derive(Debug, Default)]
pub struct RevocationView {
    inner: RwLock<Inner>,
}

impl RevocationView {
    /// An empty view that has never synced (so [`Self::check`] answers [`Stale`] until a
    /// sync succeeds).
    pub fn new() -> Self {
        Self::default()
    }

    /// Pull the revocations logged since the last one seen and drop the expired ones;
    /// returns how many were new. On failure the view keeps what it had (and its sync time,
    /// so it goes stale after [`TRUST_WITHOUT_STORE`]). Concurrent syncs are harmless: the
    /// set only grows by what the log holds and the sequence number only moves forward.
    pub fn sync(&self, store: &dyn Store, now: u64) -> StoreResult<usize> {
        let after = self.read().last_seq;
        let mut batch = store.revocations_since(after, now)?;
        let restarted = batch.last < after;
        if restarted {
            // The log started over (the store was replaced): read all of it again.
            batch = store.revocations_since(0, now)?;
        }
        let mut inner = self.write();
        inner.revoked.retain(|_, exp| *exp > now);
        let kept = inner.revoked.len();
        inner.revoked.extend(batch.revoked);
        inner.last_seq = if restarted {
            batch.last
        } else {
            inner.last_seq.max(batch.last)
        };
        inner.synced_at = Some(inner.synced_at.map_or(now, |at| at.max(now)));
        inner.failed_at = None;
        Ok(inner.revoked.len() - kept)
    }

    /// Whether the access token `jti` is revoked, from memory. A token known to be revoked
    /// is revoked whenever the view last synced; "not revoked" is only trusted for
    /// [`TRUST_WITHOUT_STORE`] seconds after the last successful sync.
    pub fn check(&self, jti: &str, now: u64) -> Result<bool, Stale> {
        let inner = self.read();
        if inner.revoked.contains_key(jti) {
            return Ok(true);
        }
        match inner.synced_at {
            Some(at) if now.saturating_sub(at) <= TRUST_WITHOUT_STORE => Ok(false),
            last_sync => Err(Stale { last_sync }),
        }
    }

    /// [`Self::check`], and when the view is stale (the background sync has not run or has
    /// been failing), one sync first, from the request path. A failed catch-up is not
    /// retried within the same second, so a store that is down is not asked by every
    /// request; while it stays down the answer is [`Stale`].
    pub fn check_or_catch_up(&self, store: &dyn Store, jti: &str, now: u64) -> Result<bool, Stale> {
        let stale = match self.check(jti, now) {
            Err(stale) => stale,
            fresh => return fresh,
        };
        if self.read().failed_at == Some(now) {
            return Err(stale);
        }
        if let Err(e) = self.sync(store, now) {
            tracing::warn!(error = %e, "revocations: catching up with the store failed");
            self.write().failed_at = Some(now);
            return Err(stale);
        }
        self.check(jti, now)
    }

    /// The last successful sync, if any.
    pub fn synced_at(&self) -> Option<u64> {
        self.read().synced_at
    }

    /// How many revoked, unexpired tokens the view holds.
    pub fn len(&self) -> usize {
        self.read().revoked.len()
    }

    /// Whether the view holds no revoked tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock leaves the maps whole (every update is a plain insert
    // or retain), so a poisoned lock is used as it is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::store::memory::InMemoryStore;
    use crate::store::{RevocationBatch, StoreError};

    /// A store whose revocation log can be cut off, as a replica losing its connection.
    struct Flaky {
        store: InMemoryStore,
        down: AtomicBool,
    }

    impl Flaky {
        fn new() -> Self {
            Self {
                store: InMemoryStore::new(),
                down: AtomicBool::new(false),
            }
        }

        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }
    }

    /// Forwards to the in-memory store, except that the log fails while `down`.
    macro_rules! forward {
        ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
            $(fn $name(&self, $($arg: $ty),*) -> StoreResult<$out> { self.store.$name($($arg),*) })*
        };
    }

    impl Store for Flaky {
        forward! {
            insert_client(c: crate::store::Client) -> ();
            client(id: &str) -> Option<crate::store::Client>;
            touch_client(id: &str, now: u64) -> ();
            purge_unused_clients(before: u64) -> usize;
            clients() -> Vec<crate::store::Client>;
            revoke_client(id: &str) -> crate::store::ClientRevocation;
            insert_pending(p: crate::store::PendingAuthorization, now: u64) -> ();
            admit_pending(p: crate::store::PendingAuthorization, now: u64, l: crate::store::PendingLimits) -> crate::store::Admission;
            take_pending(id: &str) -> Option<crate::store::PendingAuthorization>;
            remember_consent(c: crate::store::Consent) -> ();
            consent(sub: &str, id: &str, now: u64) -> Option<crate::store::Consent>;
            consents(sub: &str, now: u64) -> Vec<crate::store::Consent>;
            forget_consent(sub: &str, id: &str) -> bool;
            insert_code(h: String, c: crate::store::AuthCode) -> ();
            admit_code(h: String, c: crate::store::AuthCode, now: u64, l: crate::store::PendingLimits) -> crate::store::Admission;
            redeem_code(e: crate::store::CodeExchange<'_>) -> crate::store::CodeRedemption;
            insert_grant(g: crate::store::Grant) -> ();
            grant(id: &str) -> Option<crate::store::Grant>;
            add_access_token(g: &str, jti: &str, exp: u64) -> ();
            insert_session(h: &str, sub: &str, exp: u64) -> ();
            session(h: &str, now: u64) -> Option<String>;
            end_session(h: &str) -> ();
            end_sessions_of(sub: &str) -> usize;
            put_identity(i: crate::store::Identity) -> ();
            identity(sub: &str) -> Option<crate::store::Identity>;
            swap_upstream(sub: &str, old: &[u8], new: Vec<u8>, now: u64) -> bool;
            drop_upstream(sub: &str) -> bool;
            revoke_grant(id: &str) -> ();
            live_grants(now: u64) -> Vec<crate::store::Grant>;
            live_counts(now: u64) -> crate::store::LiveCounts;
            insert_refresh(h: String, t: crate::store::RefreshToken) -> ();
            refresh(h: &str) -> Option<crate::store::RefreshToken>;
            rotate_refresh(r: crate::store::RefreshRotation<'_>) -> crate::store::RotateOutcome;
            revoke_access_token(jti: &str, exp: u64) -> ();
            is_access_token_revoked(jti: &str) -> bool;
        }

        fn revocations_since(&self, after: u64, now: u64) -> StoreResult<RevocationBatch> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("connection lost".into()));
            }
            self.store.revocations_since(after, now)
        }
    }

    #[test]
    fn a_view_that_never_synced_is_stale() {
        let view = RevocationView::new();
        assert_eq!(view.check("a", 100), Err(Stale { last_sync: None }));
    }

    #[test]
    fn sync_picks_up_new_revocations() {
        let store = InMemoryStore::new();
        let view = RevocationView::new();
        assert_eq!(view.sync(&store, 100).unwrap(), 0);
        assert_eq!(view.check("a", 100), Ok(false));
        store.revoke_access_token("a", 500).unwrap();
        assert_eq!(
            view.check("a", 100),
            Ok(false),
            "memory until the next sync"
        );
        assert_eq!(view.sync(&store, 101).unwrap(), 1);
        assert_eq!(view.check("a", 101), Ok(true));
        store.revoke_access_token("b", 500).unwrap();
        assert_eq!(view.sync(&store, 102).unwrap(), 1, "only the new one");
        assert_eq!(
            (view.check("a", 102), view.check("b", 102)),
            (Ok(true), Ok(true))
        );
        assert_eq!(view.sync(&store, 103).unwrap(), 0);
    }

    #[test]
    fn expired_revocations_leave() {
        let store = InMemoryStore::new();
        let view = RevocationView::new();
        store.revoke_access_token("short", 200).unwrap();
        store.revoke_access_token("long", 900).unwrap();
        view.sync(&store, 100).unwrap();
        assert_eq!(view.len(), 2);
        view.sync(&store, 200).unwrap();
        assert_eq!(view.len(), 1, "the expired one is dropped");
        assert_eq!(view.check("short", 200), Ok(false));
        assert_eq!(view.check("long", 200), Ok(true));
        // One that expired before the view ever saw it is never taken in.
        store.revoke_access_token("gone", 250).unwrap();
        view.sync(&store, 300).unwrap();
        assert_eq!(view.len(), 1);
    }

    #[test]
    fn a_failing_store_keeps_the_set_until_the_bound_then_stale() {
        let store = Flaky::new();
        let view = RevocationView::new();
        store.revoke_access_token("a", 10_000).unwrap();
        view.sync(&store, 100).unwrap();
        store.set_down(true);
        store.revoke_access_token("b", 10_000).unwrap();
        assert!(view.sync(&store, 101).is_err());
        let bound = 100 + TRUST_WITHOUT_STORE;
        assert_eq!(view.check("a", bound), Ok(true), "the old set stays");
        assert_eq!(view.check("b", bound), Ok(false), "trusted up to the bound");
        let stale = Err(Stale {
            last_sync: Some(100),
        });
        assert_eq!(view.check("b", bound + 1), stale);
        assert_eq!(
            view.check("a", bound + 1),
            Ok(true),
            "known revoked stays revoked"
        );
        assert_eq!(view.check_or_catch_up(&store, "b", bound + 1), stale);
        assert_eq!(view.synced_at(), Some(100));
    }

    #[test]
    fn recovery_after_the_store_returns() {
        let store = Flaky::new();
        let view = RevocationView::new();
        view.sync(&store, 100).unwrap();
        store.set_down(true);
        store.revoke_access_token("b", 10_000).unwrap();
        let later = 100 + TRUST_WITHOUT_STORE + 5;
        assert!(view.sync(&store, later).is_err());
        assert!(view.check("b", later).is_err());
        store.set_down(false);
        assert_eq!(
            view.sync(&store, later).unwrap(),
            1,
            "caught up from the sequence"
        );
        assert_eq!(view.check("b", later), Ok(true));
        assert_eq!(view.check("c", later), Ok(false));
    }

    #[test]
    fn a_stale_check_catches_up_once_a_second() {
        let store = Flaky::new();
        let view = RevocationView::new();
        store.revoke_access_token("a", 10_000).unwrap();
        assert_eq!(view.check_or_catch_up(&store, "a", 100), Ok(true));
        assert_eq!(view.check_or_catch_up(&store, "x", 100), Ok(false));
        let later = 100 + TRUST_WITHOUT_STORE + 1;
        store.set_down(true);
        assert!(view.check_or_catch_up(&store, "x", later).is_err());
        store.set_down(false);
        assert!(
            view.check_or_catch_up(&store, "x", later).is_err(),
            "not asked again within the second it failed"
        );
        assert_eq!(view.check_or_catch_up(&store, "x", later + 1), Ok(false));
    }

    #[test]
    fn a_log_that_started_over_is_read_again() {
        let old = InMemoryStore::new();
        for jti in ["a", "b", "c"] {
            old.revoke_access_token(jti, 10_000).unwrap();
        }
        let view = RevocationView::new();
        view.sync(&old, 100).unwrap();
        let new = InMemoryStore::new();
        new.revoke_access_token("d", 10_000).unwrap();
        assert_eq!(view.sync(&new, 101).unwrap(), 1);
        assert_eq!(view.check("d", 101), Ok(true));
    }
}
