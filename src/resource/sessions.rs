//! Who owns each MCP session. A session id is bound to the (subject, client) whose token
//! opened it, when the response to that request carries a new `Mcp-Session-Id`; any later
//! request naming the session with another identity is answered as for an unknown session
//! (404), for the built-in server and upstreams alike, so a leaked or guessed session id is
//! worth nothing without its owner's token. Memory is bounded: bindings idle for
//! [`IDLE_TTL`] are forgotten, each owner keeps at most [`PER_OWNER`] (its least recently
//! used goes first), and at [`MAX_SESSIONS`] the least recently used binding of anyone goes.

use std::collections::HashMap;
use std::sync::Mutex;

/// A binding not used for this long is forgotten (seconds). Longer than any backend keeps
/// an idle session, so a binding outlives its session rather than the other way round.
pub const IDLE_TTL: u64 = 24 * 3600;
/// Sessions remembered at most, for everyone together.
pub const MAX_SESSIONS: usize = 20_000;
/// Sessions remembered at most per (subject, client): a tenth of the table, so one token
/// cannot push everyone else's sessions out, while a service that multiplexes many
/// sessions over one client-credentials token (a thousand in the soak test) keeps them all.
pub const PER_OWNER: usize = 2_000;

/// The identity a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The token's subject.
    pub sub: String,
    /// The token's client, if it names one (API keys do not).
    pub client_id: Option<String>,
}

#[derive(Debug)]
struct Binding {
    owner: Owner,
    last_used: u64,
    /// Tie-breaker for "least recently used" within one second.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    bindings: HashMap<String, Binding>,
    /// How many bindings each owner has, so the per-owner bound costs no scan.
    owned: HashMap<Owner, usize>,
    seq: u64,
}

/// Session id -> owner.
#[derive(Debug, Default)]
pub struct SessionOwners {
    inner: Mutex<Inner>,
}

impl SessionOwners {
    /// Whether `session` exists and belongs to `owner`; if so it counts as used at `now`.
    /// Unknown, expired and foreign sessions are all just `false`.
    pub fn check(&self, session: &str, owner: &Owner, now: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        inner.seq += 1;
        let seq = inner.seq;
        let Some(b) = inner.bindings.get_mut(session) else {
            return false;
        };
        if now >= b.last_used.saturating_add(IDLE_TTL) {
            inner.remove(session);
            return false;
        }
        if b.owner != *owner {
            return false;
        }
        b.last_used = now;
        b.seq = seq;
        true
    }

    /// Bind a session the backend just created to `owner`. A session id already bound to
    /// someone else keeps its owner (`false`).
    pub fn bind(&self, session: &str, owner: &Owner, now: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(b) = inner.bindings.get_mut(session)
            && now < b.last_used.saturating_add(IDLE_TTL)
        {
            if b.owner != *owner {
                return false;
            }
            b.last_used = now;
            b.seq = seq;
            return true;
        }
        inner.remove(session);
        if inner.owned.get(owner).copied().unwrap_or(0) >= PER_OWNER {
            inner.evict_oldest(Some(owner));
        }
        if inner.bindings.len() >= MAX_SESSIONS {
            let expired: Vec<String> = inner
                .bindings
                .iter()
                .filter(|(_, b)| now >= b.last_used.saturating_add(IDLE_TTL))
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                inner.remove(&k);
            }
            if inner.bindings.len() >= MAX_SESSIONS {
                inner.evict_oldest(None);
            }
        }
        *inner.owned.entry(owner.clone()).or_default() += 1;
        inner.bindings.insert(
            session.to_string(),
            Binding {
                owner: owner.clone(),
                last_used: now,
                seq,
            },
        );
        true
    }

    /// Forget a session (after it was deleted).
    pub fn forget(&self, session: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(session);
        }
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.bindings.len()).unwrap_or(0)
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drop one binding, keeping the per-owner counts true.
    fn remove(&mut self, session: &str) {
        let Some(b) = self.bindings.remove(session) else {
            return;
        };
        if let Some(n) = self.owned.get_mut(&b.owner) {
            *n -= 1;
            if *n == 0 {
                self.owned.remove(&b.owner);
            }
        }
    }

    /// Drop the least recently used binding (of `owner`, when given).
    fn evict_oldest(&mut self, owner: Option<&Owner>) {
        let oldest = self
            .bindings
            .iter()
            .filter(|(_, b)| owner.is_none_or(|o| b.owner == *o))
            .min_by_key(|(_, b)| (b.last_used, b.seq))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(sub: &str, client: &str) -> Owner {
        Owner {
            sub: sub.into(),
            client_id: Some(client.into()),
        }
    }

    #[test]
    fn a_session_belongs_to_its_subject_and_client() {
        let s = SessionOwners::default();
        let alice = owner("alice", "c1");
        assert!(!s.check("s1", &alice, 0), "unknown");
        assert!(s.bind("s1", &alice, 0));
        assert!(s.check("s1", &alice, 1));
        assert!(!s.check("s1", &owner("bob", "c1"), 1), "another subject");
        assert!(!s.check("s1", &owner("alice", "c2"), 1), "another client");
        let key = Owner {
            sub: "alice".into(),
            client_id: None,
        };
        assert!(!s.check("s1", &key, 1), "an API key of the same name");
        assert!(
            !s.bind("s1", &owner("bob", "c1"), 2),
            "cannot be taken over"
        );
        assert!(s.check("s1", &alice, 2));
        s.forget("s1");
        assert!(!s.check("s1", &alice, 3));
    }

    #[test]
    fn idle_bindings_expire() {
        let s = SessionOwners::default();
        let alice = owner("alice", "c1");
        s.bind("s1", &alice, 0);
        assert!(s.check("s1", &alice, IDLE_TTL - 1));
        assert!(
            s.check("s1", &alice, 2 * IDLE_TTL - 2),
            "use keeps it alive"
        );
        assert!(!s.check("s1", &alice, 3 * IDLE_TTL));
        assert!(s.is_empty());
    }

    #[test]
    fn memory_is_bounded_per_owner_and_overall() {
        let s = SessionOwners::default();
        let alice = owner("alice", "c1");
        for i in 0..PER_OWNER + 5 {
            s.bind(&format!("a{i}"), &alice, i as u64);
        }
        assert_eq!(s.len(), PER_OWNER);
        assert!(!s.check("a0", &alice, 1000), "the oldest of alice's went");
        assert!(s.check(&format!("a{}", PER_OWNER + 4), &alice, 1000));
        for i in 0..MAX_SESSIONS + 10 {
            s.bind(&format!("x{i}"), &owner(&format!("u{i}"), "c"), 2000);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(
            s.bind("b0", &owner("bob", "c"), 3000),
            "a full table still takes new owners"
        );
        s.forget("b0");
        assert_eq!(s.len(), MAX_SESSIONS - 1);
    }
}
