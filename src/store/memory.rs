//! [`InMemoryStore`]: every record in maps behind one mutex. State is lost on restart.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    Admission, AuthCode, Client, ClientRevocation, CodeExchange, CodeRedemption, Grant, Identity,
    LiveCounts, PendingAuthorization, PendingLimits, Records, RefreshRotation, RefreshToken,
    RevocationBatch, RotateOutcome, Store, StoreError, StoreResult, sort_clients, sort_grants,
};

#[derive(Default)]
struct Inner {
    clients: HashMap<String, Client>,
    /// Request id -> (arrival order, request).
    pending: HashMap<String, (u64, PendingAuthorization)>,
    /// The next arrival number: the oldest request is evicted first.
    next_seq: u64,
    codes: HashMap<String, AuthCode>,
    /// Used code hash -> (grant id, when to forget it).
    used_codes: HashMap<String, (String, u64)>,
    grants: HashMap<String, Grant>,
    /// Grant id -> access tokens issued from it (jti, exp).
    grant_tokens: HashMap<String, Vec<(String, u64)>>,
    refresh: HashMap<String, RefreshToken>,
    /// (sub, client_id) -> remembered consent.
    consents: HashMap<(String, String), super::Consent>,
    /// Revoked access token jti -> its exp.
    revoked_jti: HashMap<String, u64>,
    /// The revocation log, `(sequence, jti, exp)` in sequence order.
    revocation_log: Vec<(u64, String, u64)>,
    /// The last sequence number given out.
    revocation_seq: u64,
    /// When expired entries were last swept.
    last_purge: u64,
    /// Rate-limit counts: (bucket, key, window start) -> (count, window end).
    rate_counts: HashMap<(String, String, u64), (u64, u64)>,
    /// Signing keys, oldest first.
    signing_keys: Vec<super::SealedKey>,
    /// Browser sessions: cookie hash -> (user, expiry).
    sessions: HashMap<String, (String, u64)>,
    /// People who signed in through a provider, by subject; never swept.
    identities: HashMap<String, Identity>,
    /// Grants revoked before they were stored (a code replay racing its first redemption).
    revoked_early: std::collections::HashSet<String>,
}

/// The in-memory [`Store`].
#[derive(Default)]
pub struct InMemoryStore {
    inner: Mutex<Inner>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("the store lock is poisoned".into()))
    }
}

impl Inner {
    /// Sweep at most once a minute: a sweep scans every map, and reads check expiry
    /// themselves.
    fn purge_now_and_then(&mut self, now: u64) {
        if now >= self.last_purge.saturating_add(60) || now < self.last_purge {
            self.last_purge = now;
            self.purge(now);
        }
    }

    /// Forget what can no longer matter, so the maps stay bounded by what is live.
    fn purge(&mut self, now: u64) {
        self.pending.retain(|_, (_, p)| p.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
        self.used_codes.retain(|_, (_, until)| *until > now);
        self.revoked_jti.retain(|_, exp| *exp > now);
        self.revocation_log.retain(|(_, _, exp)| *exp > now);
        for tokens in self.grant_tokens.values_mut() {
            tokens.retain(|(_, exp)| *exp > now);
        }
        self.grant_tokens.retain(|_, tokens| !tokens.is_empty());
        self.sessions.retain(|_, (_, exp)| *exp > now);
        self.rate_counts.retain(|_, (_, until)| *until > now);
    }

    /// Codes are stored once: a taken hash is a conflict, as a unique key is in SQLite.
    fn check_new_code(&self, code_hash: &str) -> StoreResult<()> {
        if self.codes.contains_key(code_hash) {
            return Err(StoreError::Conflict("a code with this hash exists".into()));
        }
        Ok(())
    }

    /// Deny an access token and log it for the replicas' views: every revocation comes here.
    fn revoke_jti(&mut self, jti: String, exp: u64) {
        self.revocation_seq += 1;
        self.revocation_log
            .push((self.revocation_seq, jti.clone(), exp));
        self.revoked_jti.insert(jti, exp);
    }

    fn insert_pending(&mut self, pending: PendingAuthorization) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(pending.id.clone(), (seq, pending));
    }
}

impl Records for Inner {
    fn refresh(&mut self, hash: &str) -> StoreResult<Option<RefreshToken>> {
        Ok(self.refresh.get(hash).cloned())
    }

    fn grant(&mut self, id: &str) -> StoreResult<Option<Grant>> {
        Ok(self.grants.get(id).cloned())
    }

    fn put_refresh(&mut self, hash: &str, token: &RefreshToken) -> StoreResult<()> {
        self.refresh.insert(hash.to_string(), token.clone());
        Ok(())
    }

    fn revoke_grant(&mut self, grant_id: &str) -> StoreResult<()> {
        match self.grants.get_mut(grant_id) {
            Some(g) => g.revoked = true,
            None => {
                self.revoked_early.insert(grant_id.to_string());
            }
        }
        for (jti, exp) in self.grant_tokens.remove(grant_id).unwrap_or_default() {
            self.revoke_jti(jti, exp);
        }
        self.refresh.retain(|_, t| t.grant_id != grant_id);
        Ok(())
    }

    fn insert_grant(&mut self, grant: &Grant) -> StoreResult<()> {
        if self.grants.contains_key(&grant.id) {
            return Err(StoreError::Conflict("a grant with this id exists".into()));
        }
        let mut grant = grant.clone();
        grant.revoked |= self.revoked_early.remove(&grant.id);
        self.grants.insert(grant.id.clone(), grant);
        Ok(())
    }

    fn add_access_token(&mut self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        if self.grants.get(grant_id).is_none_or(|g| g.revoked) {
            // Issued from a grant revoked meanwhile: deny it straight away.
            self.revoke_jti(jti.to_string(), exp);
            return Ok(());
        }
        let tokens = self.grant_tokens.entry(grant_id.to_string()).or_default();
        tokens.push((jti.to_string(), exp));
        Ok(())
    }

    fn code(&mut self, hash: &str) -> StoreResult<Option<AuthCode>> {
        Ok(self.codes.get(hash).cloned())
    }

    fn used_code(&mut self, hash: &str) -> StoreResult<Option<String>> {
        Ok(self
            .used_codes
            .get(hash)
            .map(|(grant_id, _)| grant_id.clone()))
    }

    fn use_code(&mut self, hash: &str, grant_id: &str, until: u64) -> StoreResult<()> {
        self.codes.remove(hash);
        self.used_codes
            .insert(hash.to_string(), (grant_id.to_string(), until));
        Ok(())
    }

    fn waiting(&mut self, client_id: &str, now: u64) -> StoreResult<(usize, usize)> {
        let live_pending = self
            .pending
            .values()
            .map(|(_, p)| p)
            .filter(|p| p.expires_at > now);
        let live_codes = self.codes.values().filter(|c| c.expires_at > now);
        let (mut total, mut client) = (0, 0);
        for id in live_pending
            .map(|p| &p.client_id)
            .chain(live_codes.map(|c| &c.client_id))
        {
            total += 1;
            client += usize::from(id == client_id);
        }
        Ok((total, client))
    }

    fn evict_oldest(&mut self, only: Option<&str>, now: u64) -> StoreResult<bool> {
        let ours = |c: &str| only.is_none_or(|o| o == c);
        let oldest = self
            .pending
            .iter()
            .filter(|(_, (_, p))| p.expires_at > now && ours(&p.client_id))
            .min_by_key(|(_, (seq, p))| (p.expires_at, *seq))
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.pending.remove(&id);
            return Ok(true);
        }
        let oldest = self
            .codes
            .iter()
            .filter(|(_, c)| c.expires_at > now && ours(&c.client_id))
            .min_by(|a, b| (a.1.expires_at, a.0).cmp(&(b.1.expires_at, b.0)))
            .map(|(hash, _)| hash.clone());
        Ok(oldest.is_some_and(|hash| self.codes.remove(&hash).is_some()))
    }
}

impl Store for InMemoryStore {
    fn insert_client(&self, mut client: Client) -> StoreResult<()> {
        client.last_used_at = client.last_used_at.max(client.created_at);
        self.lock()?
            .clients
            .insert(client.client_id.clone(), client);
        Ok(())
    }

    fn client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        Ok(self.lock()?.clients.get(client_id).cloned())
    }

    fn touch_client(&self, client_id: &str, now: u64) -> StoreResult<()> {
        if let Some(c) = self.lock()?.clients.get_mut(client_id) {
            c.last_used_at = c.last_used_at.max(now);
        }
        Ok(())
    }

    fn purge_unused_clients(&self, unused_before: u64) -> StoreResult<usize> {
        let mut inner = self.lock()?;
        let before = inner.clients.len();
        inner
            .clients
            .retain(|_, c| c.pinned || c.last_used_at.max(c.created_at) >= unused_before);
        Ok(before - inner.clients.len())
    }

    fn clients(&self) -> StoreResult<Vec<Client>> {
        let mut out: Vec<Client> = self.lock()?.clients.values().cloned().collect();
        sort_clients(&mut out);
        Ok(out)
    }

    fn revoke_client(&self, client_id: &str) -> StoreResult<ClientRevocation> {
        let mut inner = self.lock()?;
        let live: Vec<String> = inner
            .grants
            .values()
            .filter(|g| g.client_id == client_id && !g.revoked)
            .map(|g| g.id.clone())
            .collect();
        for id in &live {
            inner.revoke_grant(id)?;
        }
        let deleted = inner.clients.remove(client_id).is_some();
        inner.consents.retain(|(_, c), _| c != client_id);
        inner.pending.retain(|_, (_, p)| p.client_id != client_id);
        inner.codes.retain(|_, c| c.client_id != client_id);
        Ok(ClientRevocation {
            deleted,
            grants: live.len(),
        })
    }

    fn admit_pending(
        &self,
        pending: PendingAuthorization,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(now);
        let admission = super::make_room(&mut *inner, &pending.client_id, now, limits)?;
        inner.insert_pending(pending);
        Ok(admission)
    }

    fn insert_pending(&self, pending: PendingAuthorization, now: u64) -> StoreResult<()> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(now);
        inner.insert_pending(pending);
        Ok(())
    }

    fn take_pending(&self, id: &str) -> StoreResult<Option<PendingAuthorization>> {
        Ok(self.lock()?.pending.remove(id).map(|(_, p)| p))
    }

    fn remember_consent(&self, consent: super::Consent) -> StoreResult<()> {
        let key = (consent.sub.clone(), consent.client_id.clone());
        self.lock()?.consents.insert(key, consent);
        Ok(())
    }

    fn consent(&self, sub: &str, client_id: &str, now: u64) -> StoreResult<Option<super::Consent>> {
        let inner = self.lock()?;
        Ok(inner
            .consents
            .get(&(sub.to_string(), client_id.to_string()))
            .filter(|c| c.expires_at > now)
            .cloned())
    }

    fn consents(&self, sub: &str, now: u64) -> StoreResult<Vec<super::Consent>> {
        let inner = self.lock()?;
        let mut out: Vec<_> = inner
            .consents
            .values()
            .filter(|c| c.sub == sub && c.expires_at > now)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(out)
    }

    fn forget_consent(&self, sub: &str, client_id: &str) -> StoreResult<bool> {
        let key = (sub.to_string(), client_id.to_string());
        Ok(self.lock()?.consents.remove(&key).is_some())
    }

    fn insert_code(&self, code_hash: String, code: AuthCode) -> StoreResult<()> {
        let mut inner = self.lock()?;
        inner.check_new_code(&code_hash)?;
        inner.codes.insert(code_hash, code);
        Ok(())
    }

    fn admit_code(
        &self,
        code_hash: String,
        code: AuthCode,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(now);
        inner.check_new_code(&code_hash)?;
        let admission = super::make_room(&mut *inner, &code.client_id, now, limits)?;
        inner.codes.insert(code_hash, code);
        Ok(admission)
    }

    fn redeem_code(&self, exchange: CodeExchange<'_>) -> StoreResult<CodeRedemption> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(exchange.now);
        super::redeem(&mut *inner, exchange)
    }

    fn insert_grant(&self, grant: Grant) -> StoreResult<()> {
        self.lock()?.insert_grant(&grant)
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        Ok(self.lock()?.grants.get(grant_id).cloned())
    }

    fn add_access_token(&self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        self.lock()?.add_access_token(grant_id, jti, exp)
    }

    fn revoke_grant(&self, grant_id: &str) -> StoreResult<()> {
        self.lock()?.revoke_grant(grant_id)
    }

    fn live_grants(&self, now: u64) -> StoreResult<Vec<Grant>> {
        let mut out: Vec<Grant> = self
            .lock()?
            .grants
            .values()
            .filter(|g| !g.revoked && g.expires_at > now)
            .cloned()
            .collect();
        sort_grants(&mut out);
        Ok(out)
    }

    fn live_counts(&self, now: u64) -> StoreResult<LiveCounts> {
        let inner = self.lock()?;
        Ok(LiveCounts {
            clients: inner.clients.len(),
            grants: inner
                .grants
                .values()
                .filter(|g| !g.revoked && g.expires_at > now)
                .count(),
        })
    }

    fn insert_refresh(&self, token_hash: String, token: RefreshToken) -> StoreResult<()> {
        self.lock()?.refresh.insert(token_hash, token);
        Ok(())
    }

    fn refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        Ok(self.lock()?.refresh.get(token_hash).cloned())
    }

    fn rotate_refresh(&self, rotation: RefreshRotation<'_>) -> StoreResult<RotateOutcome> {
        super::rotate(&mut *self.lock()?, rotation)
    }

    fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<()> {
        self.lock()?.revoke_jti(jti.to_string(), exp);
        Ok(())
    }

    fn is_access_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        Ok(self.lock()?.revoked_jti.contains_key(jti))
    }

    fn revocations_since(&self, after: u64, now: u64) -> StoreResult<RevocationBatch> {
        let inner = self.lock()?;
        // The log is in sequence order: skip to the first entry after `after`.
        let start = inner
            .revocation_log
            .partition_point(|(seq, _, _)| *seq <= after);
        let revoked = inner.revocation_log[start..]
            .iter()
            .filter(|(_, _, exp)| *exp > now)
            .map(|(_, jti, exp)| (jti.clone(), *exp))
            .collect();
        Ok(RevocationBatch {
            revoked,
            last: inner.revocation_seq,
        })
    }

    fn insert_session(&self, hash: &str, sub: &str, expires_at: u64) -> StoreResult<()> {
        let mut inner = self.lock()?;
        inner
            .sessions
            .insert(hash.to_string(), (sub.to_string(), expires_at));
        Ok(())
    }

    fn session(&self, hash: &str, now: u64) -> StoreResult<Option<String>> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(now);
        Ok(inner
            .sessions
            .get(hash)
            .filter(|(_, exp)| *exp > now)
            .map(|(sub, _)| sub.clone()))
    }

    fn end_session(&self, hash: &str) -> StoreResult<()> {
        self.lock()?.sessions.remove(hash);
        Ok(())
    }

    fn end_sessions_of(&self, sub: &str) -> StoreResult<usize> {
        let mut inner = self.lock()?;
        let before = inner.sessions.len();
        inner.sessions.retain(|_, (s, _)| s != sub);
        Ok(before - inner.sessions.len())
    }

    fn put_identity(&self, identity: Identity) -> StoreResult<()> {
        self.lock()?
            .identities
            .insert(identity.sub.clone(), identity);
        Ok(())
    }

    fn identity(&self, sub: &str) -> StoreResult<Option<Identity>> {
        Ok(self.lock()?.identities.get(sub).cloned())
    }

    fn swap_upstream(&self, sub: &str, old: &[u8], new: Vec<u8>, now: u64) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        match inner.identities.get_mut(sub) {
            Some(i) if i.upstream.as_deref() == Some(old) => {
                i.upstream = Some(new);
                i.updated_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn drop_upstream(&self, sub: &str) -> StoreResult<bool> {
        Ok(self
            .lock()?
            .identities
            .get_mut(sub)
            .is_some_and(|i| i.upstream.take().is_some()))
    }

    fn count_event(
        &self,
        bucket: &str,
        key: &str,
        window: u64,
        until: u64,
    ) -> StoreResult<Option<u64>> {
        let mut inner = self.lock()?;
        inner.purge_now_and_then(window);
        let entry = inner
            .rate_counts
            .entry((bucket.to_string(), key.to_string(), window))
            .or_insert((0, until));
        entry.0 += 1;
        Ok(Some(entry.0))
    }

    fn signing_keys(&self) -> StoreResult<Vec<super::SealedKey>> {
        Ok(self.lock()?.signing_keys.clone())
    }

    fn add_signing_key(&self, key: super::SealedKey, newest: Option<&str>) -> StoreResult<bool> {
        let mut inner = self.lock()?;
        if inner.signing_keys.last().map(|k| k.kid.as_str()) != newest {
            return Ok(false);
        }
        inner.signing_keys.push(key);
        Ok(true)
    }

    fn forget_signing_keys(&self, kids: &[String]) -> StoreResult<()> {
        self.lock()?.signing_keys.retain(|k| !kids.contains(&k.kid));
        Ok(())
    }
}
