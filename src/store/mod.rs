//! Storage: the [`Store`] trait and the records it keeps. [`sqlite::SqliteStore`] (an
//! embedded database in the data dir) is the default; [`memory::InMemoryStore`] keeps
//! everything in maps, for tests and throwaway runs; [`postgres::PostgresStore`] is the one
//! that several replicas share.
//!
//! Methods are synchronous and short: implementations hold a lock for one map operation
//! and never across an `.await`. Each method that must be atomic (taking a code, rotating
//! a refresh token) is one call, so two concurrent requests cannot both win.

#[cfg(test)]
mod contract;
pub mod memory;
pub mod postgres;
pub mod sqlite;
pub mod view;

use serde::{Deserialize, Serialize};

/// A registered client (RFC 7591).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// The identifier we issued.
    pub client_id: String,
    /// Human-readable name, shown on the consent page.
    pub client_name: Option<String>,
    /// Registered redirect URIs, exactly as registered.
    pub redirect_uris: Vec<String>,
    /// Grant types the client may use.
    pub grant_types: Vec<String>,
    /// `none` for public clients; `client_secret_basic` or `client_secret_post`.
    pub token_endpoint_auth_method: String,
    /// Scopes the client asked to be limited to, if any.
    pub scope: Option<String>,
    /// When it registered.
    pub created_at: u64,
    /// SHA-256 (base64url) of the client secret of a confidential client. Secrets are
    /// 256-bit random values, so a fast hash is enough; the secret itself is never stored.
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// When it last obtained a token (or registered); unused clients expire.
    #[serde(default)]
    pub last_used_at: u64,
    /// Configured by the operator: never expires, never replaced by registration.
    #[serde(default)]
    pub pinned: bool,
}

impl Client {
    /// Whether the client authenticates with a secret.
    pub fn is_confidential(&self) -> bool {
        self.token_endpoint_auth_method != "none"
    }
}

/// An authorization request waiting for the user's decision on the consent page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    /// Identifies the request in the consent form.
    pub id: String,
    /// The CSRF token the consent form must echo.
    pub csrf_token: String,
    /// The client.
    pub client_id: String,
    /// The validated redirect URI, as the client sent it.
    pub redirect_uri: String,
    /// The client's `state`, returned untouched.
    pub state: Option<String>,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// The resource (audience) the tokens will be bound to.
    pub resource: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// When the consent page stops being answerable.
    pub expires_at: u64,
    /// The user, once known (after login, or the only user).
    #[serde(default)]
    pub sub: Option<String>,
}

/// A remembered consent: `sub` let `client_id` have `scopes` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The user.
    pub sub: String,
    /// The client.
    pub client_id: String,
    /// What was approved.
    pub scopes: Vec<String>,
    /// When it stops counting.
    pub expires_at: u64,
}

/// An authorization code, stored under the hash of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthCode {
    /// The grant the code starts; known in advance so a replay can revoke it.
    pub grant_id: String,
    /// The client the code was issued to.
    pub client_id: String,
    /// The redirect URI the code was issued for.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Bound resource.
    pub resource: String,
    /// The user who approved.
    pub sub: String,
    /// Expiry.
    pub expires_at: u64,
}

/// What a code is exchanged for, stored in the same atomic step that uses the code up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeIssue {
    /// The grant the code starts (with the code's `grant_id`).
    pub grant: Grant,
    /// Hash of the refresh token issued from the grant.
    pub refresh_hash: String,
    /// The refresh token.
    pub refresh: RefreshToken,
    /// The access token's `jti`, recorded under the grant so revoking the grant revokes it.
    pub access_jti: String,
    /// The access token's expiry.
    pub access_exp: u64,
}

/// The token endpoint's check of an unused, unexpired code: what to issue for it, or
/// `None` to refuse it (another client, a wrong verifier or redirect URI). It runs inside
/// the store's atomic step (under its lock), so it must be quick and must not use the store.
pub type CodeCheck<'a> = dyn FnMut(&AuthCode) -> Option<CodeIssue> + 'a;

/// A code presented for exchange, and the check that decides what it is exchanged for.
pub struct CodeExchange<'a> {
    /// Hash of the code.
    pub code_hash: &'a str,
    /// Now.
    pub now: u64,
    /// The token endpoint's check of the code.
    pub check: &'a mut CodeCheck<'a>,
}

/// What presenting a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    /// The code was valid and is now used up; what the check issued for it is stored.
    Issued(Box<CodeIssue>),
    /// The check refused the code; nothing changed, and the code is still redeemable.
    Refused,
    /// The code was already redeemed: the grant it started should be revoked.
    Replayed {
        /// The grant started by the first redemption.
        grant_id: String,
    },
    /// No such code (or it expired).
    Unknown,
}

/// A grant: what one consent gave one client, shared by the access and refresh tokens
/// issued from it (the refresh-token family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Family id.
    pub id: String,
    /// The client.
    pub client_id: String,
    /// The user.
    pub sub: String,
    /// Scopes granted at consent; refreshes may only narrow them.
    pub scopes: Vec<String>,
    /// The bound resource.
    pub resource: String,
    /// When the whole family expires.
    pub expires_at: u64,
    /// Revoked grants issue nothing and their tokens are refused.
    pub revoked: bool,
    /// When the code that started it was redeemed (0 for grants stored before this was
    /// recorded).
    #[serde(default)]
    pub created_at: u64,
}

/// A refresh token, stored under the hash of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// The family.
    pub grant_id: String,
    /// Scopes this token may obtain (a subset of the grant's).
    pub scopes: Vec<String>,
    /// Set once the token has been exchanged.
    pub rotated: Option<Rotation>,
}

/// When a refresh token was first exchanged, and the hash of the token that replaced it; or,
/// for a successor superseded before it was used, when that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// First exchange time (for a superseded token: when it was superseded).
    pub at: u64,
    /// Hash of the current successor (empty for a superseded token).
    pub successor: String,
    /// The token was an unused successor replaced by a retry of its predecessor: it is dead,
    /// and presenting it is a replay (whoever holds it lost the race to someone else using
    /// the predecessor, so one of the two chains is not the legitimate client's).
    #[serde(default)]
    pub superseded: bool,
}

impl Rotation {
    /// The mark left on an unused successor that a retry of its predecessor replaced.
    pub fn superseded(at: u64) -> Self {
        Self {
            at,
            successor: String::new(),
            superseded: true,
        }
    }
}

/// The outcome of presenting a refresh token for rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The new token is stored; the old one is now rotated.
    Rotated(Grant),
    /// A replay: the family has been revoked.
    Replay,
    /// Unknown, expired or revoked.
    Invalid,
}

/// What to do with a presented refresh token; the rule every store implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationDecision {
    /// First use: rotate.
    Rotate,
    /// A retry within the grace period whose successor was never used: mark the unused
    /// successor superseded (dead: any later use of it is a replay) and rotate again, so at
    /// most one chain of the family is ever live.
    Retry {
        /// Hash of the successor to mark superseded.
        drop_successor: String,
    },
    /// Too late, the successor was used, or the token itself was superseded: revoke the
    /// family.
    Replay,
}

/// The rotation rule (refresh tokens for public clients rotate on every use): a rotated
/// token keeps working until its successor is first used or `grace` seconds pass (a grace
/// of 0 turns retries off); any use after that is a replay. A retry supersedes the unused
/// successor, and presenting a superseded token is a replay too: whichever of the two
/// holders comes second revokes the family, so two chains can never both live on.
pub fn decide_rotation(
    token: &RefreshToken,
    successor_used: bool,
    now: u64,
    grace: u64,
) -> RotationDecision {
    match &token.rotated {
        None => RotationDecision::Rotate,
        Some(r) if r.superseded => RotationDecision::Replay,
        Some(r) if !successor_used && now < r.at.saturating_add(grace) => RotationDecision::Retry {
            drop_successor: r.successor.clone(),
        },
        Some(_) => RotationDecision::Replay,
    }
}

/// A refresh token presented for rotation, and the successor to store if the rule allows.
#[derive(Debug, Clone)]
pub struct RefreshRotation<'a> {
    /// Hash of the presented token.
    pub old_hash: &'a str,
    /// Hash of the successor.
    pub new_hash: String,
    /// The successor.
    pub new_token: RefreshToken,
    /// Now.
    pub now: u64,
    /// How long a rotated token may be retried (see [`decide_rotation`]).
    pub grace: u64,
}

/// The records the rules below read and write. Each store implements it over what it holds
/// while it holds its lock (or inside one transaction), and runs a rule in one go, so every
/// rule is one atomic step and is written once for all stores.
pub(crate) trait Records {
    /// A refresh token.
    fn refresh(&mut self, hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// A grant.
    fn grant(&mut self, id: &str) -> StoreResult<Option<Grant>>;
    /// Store a refresh token, replacing the one under the same hash.
    fn put_refresh(&mut self, hash: &str, token: &RefreshToken) -> StoreResult<()>;
    /// [`Store::revoke_grant`].
    fn revoke_grant(&mut self, id: &str) -> StoreResult<()>;
    /// [`Store::insert_grant`].
    fn insert_grant(&mut self, grant: &Grant) -> StoreResult<()>;
    /// [`Store::add_access_token`].
    fn add_access_token(&mut self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()>;
    /// An unredeemed code (expired or not).
    fn code(&mut self, hash: &str) -> StoreResult<Option<AuthCode>>;
    /// The grant a redeemed code started, while the code is remembered.
    fn used_code(&mut self, hash: &str) -> StoreResult<Option<String>>;
    /// Use a code up: forget it, and remember until `until` that it started `grant_id`.
    fn use_code(&mut self, hash: &str, grant_id: &str, until: u64) -> StoreResult<()>;
    /// Pending requests and unredeemed codes live at `now`: all, and `client_id`'s.
    fn waiting(&mut self, client_id: &str, now: u64) -> StoreResult<(usize, usize)>;
    /// Drop the oldest live pending request (of `only`, when given; arrival order breaks
    /// ties), else the oldest live code; whether there was one.
    fn evict_oldest(&mut self, only: Option<&str>, now: u64) -> StoreResult<bool>;
}

/// Count what waits and, while a cap is reached, evict the oldest live pending request (of
/// `client_id` when its cap is the one reached), else the oldest live code. Returns the
/// first verdict: whether anything had to give way.
pub(crate) fn make_room<R: Records>(
    records: &mut R,
    client_id: &str,
    now: u64,
    limits: PendingLimits,
) -> StoreResult<Admission> {
    let verdict = |records: &mut R| -> StoreResult<Admission> {
        let (total, client) = records.waiting(client_id, now)?;
        Ok(limits.admit(total, client))
    };
    let first = verdict(records)?;
    let mut current = first;
    while current != Admission::Admitted {
        let only = (current == Admission::EvictedForClient).then_some(client_id);
        if !records.evict_oldest(only, now)? {
            break;
        }
        current = verdict(records)?;
    }
    Ok(first)
}

/// [`Store::redeem_code`]: report a replay or an unknown code; else let the check decide, and
/// when it issues, use the code up and store the grant, its refresh token and the access
/// token's record.
pub(crate) fn redeem(
    records: &mut impl Records,
    exchange: CodeExchange<'_>,
) -> StoreResult<CodeRedemption> {
    let CodeExchange {
        code_hash,
        now,
        check,
    } = exchange;
    if let Some(grant_id) = records.used_code(code_hash)? {
        return Ok(CodeRedemption::Replayed { grant_id });
    }
    let Some(code) = records.code(code_hash)?.filter(|c| c.expires_at > now) else {
        return Ok(CodeRedemption::Unknown);
    };
    let Some(issue) = check(&code) else {
        return Ok(CodeRedemption::Refused);
    };
    // Every conflict is found before the first write: the in-memory store cannot roll a
    // write back (SQLite would, with the transaction).
    if records.grant(&issue.grant.id)?.is_some() {
        return Err(StoreError::Conflict("a grant with this id exists".into()));
    }
    if records.refresh(&issue.refresh_hash)?.is_some() {
        return Err(StoreError::Conflict(
            "a refresh token with this hash exists".into(),
        ));
    }
    records.use_code(code_hash, &issue.grant.id, code.expires_at)?;
    records.insert_grant(&issue.grant)?;
    records.put_refresh(&issue.refresh_hash, &issue.refresh)?;
    records.add_access_token(&issue.grant.id, &issue.access_jti, issue.access_exp)?;
    Ok(CodeRedemption::Issued(Box::new(issue)))
}

/// [`Store::rotate_refresh`]: apply [`decide_rotation`] and, when it allows, store the
/// successor and mark the presented token rotated; on a replay, revoke the family.
pub(crate) fn rotate(
    records: &mut impl Records,
    r: RefreshRotation<'_>,
) -> StoreResult<RotateOutcome> {
    let Some(old) = records.refresh(r.old_hash)? else {
        return Ok(RotateOutcome::Invalid);
    };
    let grant = match records.grant(&old.grant_id)? {
        Some(g) if !g.revoked && g.expires_at > r.now => g,
        _ => return Ok(RotateOutcome::Invalid),
    };
    let successor_used = match &old.rotated {
        Some(rot) => records
            .refresh(&rot.successor)?
            .is_none_or(|s| s.rotated.is_some()),
        None => false,
    };
    let first_at = old.rotated.as_ref().map_or(r.now, |rot| rot.at);
    match decide_rotation(&old, successor_used, r.now, r.grace) {
        RotationDecision::Replay => {
            records.revoke_grant(&grant.id)?;
            return Ok(RotateOutcome::Replay);
        }
        RotationDecision::Retry { drop_successor } => {
            if let Some(dead) = records.refresh(&drop_successor)? {
                let dead = RefreshToken {
                    rotated: Some(Rotation::superseded(r.now)),
                    ..dead
                };
                records.put_refresh(&drop_successor, &dead)?;
            }
        }
        RotationDecision::Rotate => {}
    }
    let rotated = RefreshToken {
        rotated: Some(Rotation {
            at: first_at,
            successor: r.new_hash.clone(),
            superseded: false,
        }),
        ..old
    };
    records.put_refresh(r.old_hash, &rotated)?;
    records.put_refresh(&r.new_hash, &r.new_token)?;
    Ok(RotateOutcome::Rotated(grant))
}

/// Caps on what waits for someone: authorization requests awaiting the user's decision plus
/// codes awaiting redemption, counted together. 0 means no cap. A cap bounds memory but never
/// refuses a new request: the oldest waiting one gives way (so strangers sending abandoned
/// requests cannot lock a client out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingLimits {
    /// For all clients together.
    pub total: usize,
    /// For one client.
    pub per_client: usize,
}

impl PendingLimits {
    /// Whether one more fits when `total` and `client` already wait, or which cap makes the
    /// oldest waiting request give way. The client's cap comes first: evicting one of the
    /// client's own requests makes room under the total too.
    pub fn admit(&self, total: usize, client: usize) -> Admission {
        if self.per_client > 0 && client >= self.per_client {
            Admission::EvictedForClient
        } else if self.total > 0 && total >= self.total {
            Admission::EvictedForTotal
        } else {
            Admission::Admitted
        }
    }
}

/// How a new authorization request (or code) was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored; there was room.
    Admitted,
    /// Stored after evicting this client's oldest waiting request (a pending one if it has
    /// any, else its oldest unredeemed code): it had `per_client` waiting.
    EvictedForClient,
    /// Stored after evicting the oldest waiting request of any client (pending ones first):
    /// `total` waited altogether.
    EvictedForTotal,
}

/// How much live state the store holds, for the operator's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    /// Registered clients (pinned ones live in the config, not here).
    pub clients: usize,
    /// Grants neither revoked nor expired.
    pub grants: usize,
}

/// What revoking a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientRevocation {
    /// Whether a registered client was deleted.
    pub deleted: bool,
    /// How many of its grants were revoked (not counting those revoked before).
    pub grants: usize,
}

/// What [`Store::revocations_since`] found: the access tokens revoked after a sequence
/// number that have not expired, and the newest sequence number the store has assigned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationBatch {
    /// Revoked access tokens, `(jti, exp)`, oldest revocation first.
    pub revoked: Vec<(String, u64)>,
    /// The newest sequence number in the log (0 when nothing was ever revoked). Ask for
    /// revocations since this one next time. Lower than the one asked about only when the
    /// log started over (another database): then ask again from 0.
    pub last: u64,
}

/// The order [`Store::live_grants`] returns: by subject, then oldest first.
pub(crate) fn sort_grants(grants: &mut [Grant]) {
    grants.sort_by(|a, b| (&a.sub, a.created_at, &a.id).cmp(&(&b.sub, b.created_at, &b.id)));
}

/// The order [`Store::clients`] returns: newest first.
pub(crate) fn sort_clients(clients: &mut [Client]) {
    clients.sort_by(|a, b| (b.created_at, &a.client_id).cmp(&(a.created_at, &b.client_id)));
}

/// Everything that lets clients and people carry on after a move to another store
/// (`store copy`): not the authorization requests and codes in flight, which live minutes,
/// nor the [`Identity`] records of people who signed in through a provider (written again
/// at their next sign-in there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Registered clients.
    pub clients: Vec<Client>,
    /// Remembered consents.
    pub consents: Vec<Consent>,
    /// Grants, live and revoked.
    pub grants: Vec<Grant>,
    /// Refresh tokens by hash.
    pub refresh: Vec<(String, RefreshToken)>,
    /// Access tokens issued under grants: (grant id, jti, exp).
    pub grant_tokens: Vec<(String, String, u64)>,
    /// Revoked access tokens: (jti, exp).
    pub revoked: Vec<(String, u64)>,
    /// Redeemed codes, remembered to catch replays: (hash, grant id, until).
    pub used_codes: Vec<(String, String, u64)>,
    /// Browser sign-in sessions: (hash, user, expiry).
    pub sessions: Vec<(String, String, u64)>,
}

/// A security event as a shared store keeps it, for the operator's page of any replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// When (seconds since the epoch).
    pub at: u64,
    /// What happened.
    pub event: String,
    /// The client concerned.
    pub client_id: Option<String>,
    /// The user concerned.
    pub sub: Option<String>,
    /// Where the request came from.
    pub source: Option<String>,
    /// The request that caused it.
    pub request_id: Option<String>,
}

/// A signing key as a shared store keeps it: its PKCS#8 PEM sealed under the fleet's
/// key-encryption key (see `tokens::keys`), never in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JWS algorithm (`ES256`, `RS256`).
    pub alg: String,
    /// Nonce and AES-256-GCM ciphertext of the private key.
    pub sealed: Vec<u8>,
    /// When it was made.
    pub created_at: u64,
    /// When it starts signing: published in the JWKS before then, so every replica knows
    /// it before any token it signs reaches them.
    pub active_from: u64,
}

/// A person who signed in through an identity provider (`[[identity_providers]]`): who
/// they are, what they may grant, and the provider's tokens for them, sealed.
///
/// Kept until replaced: an identity does not expire on its own (its upstream tokens go
/// with [`Store::drop_upstream`]). Identities are not part of a [`Snapshot`], so `store
/// copy` leaves them behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The gateway's subject for the person: the provider's issuer and subject, stable.
    pub sub: String,
    /// The provider's id in the config.
    pub provider: String,
    /// The person's verified email, when the provider gave one.
    pub email: Option<String>,
    /// The person's display name.
    pub name: Option<String>,
    /// Scopes the person may grant; `None`: every offered scope.
    pub scopes: Option<Vec<String>>,
    /// The provider's access and refresh tokens, sealed by the gateway (opaque bytes here).
    pub upstream: Option<Vec<u8>>,
    /// When this record was last written (unix seconds).
    pub updated_at: u64,
}

const NO_SHARED_KEYS: &str = "this store keeps no signing keys (they are in the data dir)";

/// A storage failure (never the client's fault). Messages say what failed, never a stored
/// value: keys are hashes of secrets, and records say who granted what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record that must be new exists already (its unique key is taken), or a concurrent
    /// change won; nothing was written, and a retry with fresh values can succeed.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// A stored record does not decode (a damaged row, or one an incompatible gateway
    /// wrote), or the database file itself is damaged. Retrying does not help.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// The store cannot be used now: the database is busy, locked, read-only, full or
    /// unreachable, its I/O failed, its schema is newer than ours, or its lock is poisoned.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The same failure, its message prefixed with where (a file, say).
    pub fn context(self, at: impl std::fmt::Display) -> Self {
        match self {
            Self::Conflict(m) => Self::Conflict(format!("{at}: {m}")),
            Self::Corrupt(m) => Self::Corrupt(format!("{at}: {m}")),
            Self::Unavailable(m) => Self::Unavailable(format!("{at}: {m}")),
        }
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A number for a signed 64-bit database column (saturating).
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A record that does not decode: its kind and where the decoder stopped, never its text.
fn json_err<T>(e: &serde_json::Error) -> StoreError {
    let kind = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("record");
    StoreError::Corrupt(format!(
        "a {kind} record: {:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    ))
}

/// A record as the databases keep it: JSON beside the columns queries need.
pub(crate) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| json_err::<T>(&e))
}

/// A record back from its JSON.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| json_err::<T>(&e))
}

/// An [`Identity`]'s scopes, so a column that does not decode is named as such.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct IdentityScopes(Vec<String>);

/// An [`Identity`]'s scopes as the databases keep them: a JSON array, `NULL` (`None`) for
/// every offered scope.
pub(crate) fn scopes_to_column(scopes: Option<&[String]>) -> StoreResult<Option<String>> {
    scopes
        .map(|s| to_json(&IdentityScopes(s.to_vec())))
        .transpose()
}

/// An [`Identity`]'s scopes back from their column.
pub(crate) fn scopes_from_column(text: Option<&str>) -> StoreResult<Option<Vec<String>>> {
    text.map(|t| from_json::<IdentityScopes>(t).map(|s| s.0))
        .transpose()
}

/// Everything the authorization and resource servers keep.
pub trait Store: Send + Sync + 'static {
    /// Save a new client.
    fn insert_client(&self, client: Client) -> StoreResult<()>;
    /// Look a client up.
    fn client(&self, client_id: &str) -> StoreResult<Option<Client>>;
    /// Record that a client obtained a token.
    fn touch_client(&self, client_id: &str, now: u64) -> StoreResult<()>;
    /// Forget clients (not pinned) unused since `unused_before`; returns how many.
    fn purge_unused_clients(&self, unused_before: u64) -> StoreResult<usize>;
    /// Every registered client, newest first.
    fn clients(&self) -> StoreResult<Vec<Client>>;
    /// Delete a client and revoke every grant it holds (their refresh tokens stop working
    /// and their access tokens are denied); its remembered consents, pending requests and
    /// unredeemed codes go too. Grants are revoked even when no such client is stored (a
    /// pinned or metadata-document client).
    fn revoke_client(&self, client_id: &str) -> StoreResult<ClientRevocation>;

    /// Save a request awaiting consent.
    fn insert_pending(&self, pending: PendingAuthorization, now: u64) -> StoreResult<()>;
    /// Save a new request awaiting consent; when `limits` are reached, first evict the
    /// oldest waiting request (see [`Admission`]). Counting, evicting and inserting are one
    /// atomic step.
    fn admit_pending(
        &self,
        pending: PendingAuthorization,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission>;
    /// Remove and return a pending request (each consent form works once).
    fn take_pending(&self, id: &str) -> StoreResult<Option<PendingAuthorization>>;

    /// Remember (or replace) a user's consent for a client.
    fn remember_consent(&self, consent: Consent) -> StoreResult<()>;
    /// A user's remembered consent for a client, if it has not expired.
    fn consent(&self, sub: &str, client_id: &str, now: u64) -> StoreResult<Option<Consent>>;
    /// A user's remembered consents that have not expired.
    fn consents(&self, sub: &str, now: u64) -> StoreResult<Vec<Consent>>;
    /// Forget a user's consent for a client; whether there was one.
    fn forget_consent(&self, sub: &str, client_id: &str) -> StoreResult<bool>;

    /// Save a code under the hash of its value ([`StoreError::Conflict`] if it is taken).
    fn insert_code(&self, code_hash: String, code: AuthCode) -> StoreResult<()>;
    /// Save a code for a new authorization request, evicting the oldest waiting request
    /// when `limits` are reached (counted with pending requests, as [`Store::admit_pending`]).
    fn admit_code(
        &self,
        code_hash: String,
        code: AuthCode,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission>;
    /// Redeem a code in one atomic step. An unused, unexpired code is shown to the check;
    /// when it answers with what to issue, the code is used up and the grant, its refresh
    /// token and the access token's record are stored with it. When it refuses, or any of
    /// those writes fails (a [`StoreError::Conflict`] on a taken key, say), nothing is
    /// written and the code stays redeemable. Used codes are remembered until they would
    /// have expired, so presenting one again is reported as a replay.
    fn redeem_code(&self, exchange: CodeExchange<'_>) -> StoreResult<CodeRedemption>;

    /// Save a new grant ([`StoreError::Conflict`] if its id is taken).
    fn insert_grant(&self, grant: Grant) -> StoreResult<()>;
    /// Look a grant up.
    fn grant(&self, grant_id: &str) -> StoreResult<Option<Grant>>;
    /// Remember an access token issued from a grant, so revoking the grant revokes it.
    fn add_access_token(&self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()>;
    /// Revoke a grant: its refresh tokens stop working and its access tokens are denied.
    fn revoke_grant(&self, grant_id: &str) -> StoreResult<()>;
    /// Grants neither revoked nor expired at `now`, by subject, then oldest first.
    fn live_grants(&self, now: u64) -> StoreResult<Vec<Grant>>;
    /// Registered clients and live grants, counted.
    fn live_counts(&self, now: u64) -> StoreResult<LiveCounts>;
    /// Write something small and commit it: whether writes reach storage (`/readyz`).
    fn probe_write(&self, _now: u64) -> StoreResult<()> {
        Ok(())
    }

    /// Save a refresh token under the hash of its value.
    fn insert_refresh(&self, token_hash: String, token: RefreshToken) -> StoreResult<()>;
    /// Look a refresh token up.
    fn refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Atomically apply [`decide_rotation`] to the presented token and, when it allows,
    /// store its successor.
    fn rotate_refresh(&self, rotation: RefreshRotation<'_>) -> StoreResult<RotateOutcome>;

    /// Deny an access token until it expires anyway.
    fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<()>;
    /// Whether an access token was revoked.
    fn is_access_token_revoked(&self, jti: &str) -> StoreResult<bool>;
    /// The revocation log: access tokens revoked (by any path: a token, a grant, a client, a
    /// replay) after sequence number `after` and not expired at `now`, so a replica's
    /// in-memory view ([`view::RevocationView`]) catches up with what others revoked. Every
    /// write that revokes an access token appends to the log in the same atomic step, with
    /// a sequence number that only grows and is never reused; a write that commits is
    /// visible together with every lower number.
    fn revocations_since(&self, after: u64, now: u64) -> StoreResult<RevocationBatch>;

    /// Everything in a [`Snapshot`], for moving to another store.
    fn snapshot(&self) -> StoreResult<Snapshot> {
        Err(StoreError::Unavailable(
            "this store cannot be copied from".into(),
        ))
    }

    /// Load `snapshot` into this store, which must hold no clients or grants yet.
    fn restore(&self, snapshot: &Snapshot) -> StoreResult<()> {
        let _ = snapshot;
        Err(StoreError::Unavailable(
            "this store cannot be copied to".into(),
        ))
    }

    /// Wake `wake` soon after any replica revokes a token, until `wake` is dropped. A
    /// store without other writers needs nothing: every revocation here syncs at once.
    fn watch_revocations(&self, wake: std::sync::Weak<tokio::sync::Notify>) {
        let _ = wake;
    }

    /// Keep a security event, keeping at most `keep` of the newest; whether it was kept
    /// (a store not shared by replicas answers `false`, and the events stay in memory).
    fn record_event(&self, event: &StoredEvent, keep: usize) -> StoreResult<bool> {
        let _ = (event, keep);
        Ok(false)
    }

    /// The newest `limit` security events, newest first; `None` from a store that keeps
    /// none.
    fn recent_events(&self, limit: usize) -> StoreResult<Option<Vec<StoredEvent>>> {
        let _ = limit;
        Ok(None)
    }

    /// Count one event of `bucket` (an endpoint's rate limit) from `key` (a client address)
    /// in the window that starts at `window` and ends at `until`; the count so far, this one
    /// included. A store shared by replicas counts for the whole fleet; the others answer
    /// `None`, and the limiter counts in memory.
    fn count_event(
        &self,
        bucket: &str,
        key: &str,
        window: u64,
        until: u64,
    ) -> StoreResult<Option<u64>> {
        let _ = (bucket, key, window, until);
        Ok(None)
    }

    /// The signing keys of the fleet, oldest first (stores shared by replicas keep them;
    /// the others refuse, and the keys live in the data dir instead).
    fn signing_keys(&self) -> StoreResult<Vec<SealedKey>> {
        Err(StoreError::Unavailable(NO_SHARED_KEYS.into()))
    }

    /// Add `key` as the newest signing key, provided the newest one is still `newest`
    /// (`None`: there is none). Returns whether it was added: when several replicas
    /// rotate at once, one wins and the others adopt its key.
    fn add_signing_key(&self, key: SealedKey, newest: Option<&str>) -> StoreResult<bool> {
        let _ = (key, newest);
        Err(StoreError::Unavailable(NO_SHARED_KEYS.into()))
    }

    /// Delete the signing keys `kids` (retired, and every token they signed has expired).
    fn forget_signing_keys(&self, kids: &[String]) -> StoreResult<()> {
        let _ = kids;
        Err(StoreError::Unavailable(NO_SHARED_KEYS.into()))
    }

    /// Start a browser sign-in session: `hash` is the SHA-256 of the cookie value.
    fn insert_session(&self, hash: &str, sub: &str, expires_at: u64) -> StoreResult<()>;

    /// The user of the live session `hash`.
    fn session(&self, hash: &str, now: u64) -> StoreResult<Option<String>>;

    /// End the session `hash` (signing out).
    fn end_session(&self, hash: &str) -> StoreResult<()>;

    /// End every browser session of `sub` (they must sign in again). Returns how many.
    fn end_sessions_of(&self, sub: &str) -> StoreResult<usize>;

    /// Record a person who signed in, replacing what was known of them.
    fn put_identity(&self, identity: Identity) -> StoreResult<()>;

    /// The person `sub`, if they ever signed in through a provider.
    fn identity(&self, sub: &str) -> StoreResult<Option<Identity>>;

    /// Replace the person's sealed upstream tokens with `new`, provided they are still
    /// `old` (a refresh by another replica may have come first). Returns whether replaced.
    /// The comparison and the write are one atomic step; `updated_at` becomes `now`.
    fn swap_upstream(&self, sub: &str, old: &[u8], new: Vec<u8>, now: u64) -> StoreResult<bool>;

    /// Drop the person's upstream tokens (a grant revoked, a sign-out). Returns whether
    /// there were any. The rest of the record stays, `updated_at` included.
    fn drop_upstream(&self, sub: &str) -> StoreResult<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rotated: Option<u64>) -> RefreshToken {
        RefreshToken {
            grant_id: "g".into(),
            scopes: vec![],
            rotated: rotated.map(|at| Rotation {
                at,
                successor: "s".into(),
                superseded: false,
            }),
        }
    }

    #[test]
    fn first_use_rotates() {
        assert_eq!(
            decide_rotation(&token(None), false, 100, 30),
            RotationDecision::Rotate
        );
    }

    #[test]
    fn retry_within_grace_with_unused_successor_is_allowed() {
        assert_eq!(
            decide_rotation(&token(Some(100)), false, 129, 30),
            RotationDecision::Retry {
                drop_successor: "s".into()
            }
        );
    }

    #[test]
    fn reuse_after_grace_or_after_successor_use_is_replay() {
        assert_eq!(
            decide_rotation(&token(Some(100)), false, 130, 30),
            RotationDecision::Replay
        );
        assert_eq!(
            decide_rotation(&token(Some(100)), true, 100, 30),
            RotationDecision::Replay
        );
        assert_eq!(
            decide_rotation(&token(Some(100)), false, 100, 0),
            RotationDecision::Replay,
            "a grace of 0 turns retries off"
        );
    }

    #[test]
    fn a_superseded_token_is_always_a_replay() {
        let dead = RefreshToken {
            rotated: Some(Rotation::superseded(100)),
            ..token(None)
        };
        assert_eq!(
            decide_rotation(&dead, false, 100, 30),
            RotationDecision::Replay
        );
    }
}
