//! [`PostgresStore`]: the store several replicas share. Same records and rules as the
//! SQLite store (records as JSON beside the columns queries need), on a pooled connection
//! per call.
//!
//! Concurrency: transactions run at READ COMMITTED, and every rule that reads before it
//! writes first takes a transaction-scoped advisory lock on what it is about (a code, a
//! grant's family, the pending caps). Two replicas redeeming one code, or rotating one
//! family, therefore run one after the other, and the second sees what the first wrote.
//! Writers to the revocation log also serialize on one lock, so sequence numbers become
//! visible in order and a reader that saw number `n` never later finds a smaller one.
//!
//! The driver is the synchronous `postgres` crate (over tokio-postgres): calls run inside
//! `block_in_place`, as the SQLite store's do, so a slow database never holds an async
//! worker. The pool waits at most [`CHECKOUT_TIMEOUT`] for a connection and statements at
//! most [`STATEMENT_TIMEOUT`], so a database that is down costs a request a few seconds,
//! never a hang; when it returns, the pool reconnects by itself.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use serde::de::DeserializeOwned;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Admission, AuthCode, Client, ClientRevocation, CodeExchange, CodeRedemption, Consent, Grant,
    Identity, LiveCounts, PendingAuthorization, PendingLimits, Records, RefreshRotation,
    RefreshToken, RevocationBatch, RotateOutcome, SealedKey, Store, StoreError, StoreResult,
    StoredEvent, from_json, int, scopes_from_column, scopes_to_column, sort_clients, sort_grants,
    to_json,
};

/// Schema migrations, applied in order under an advisory lock; `mcp_gateway_schema`
/// records how many ran. Replicas that start together apply each exactly once.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE clients (client_id TEXT PRIMARY KEY, data TEXT NOT NULL,
                          last_used BIGINT NOT NULL DEFAULT 0,
                          pinned BOOLEAN NOT NULL DEFAULT FALSE);
    CREATE INDEX clients_last_used ON clients (last_used);
    CREATE TABLE pending (id TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at BIGINT NOT NULL,
                          client_id TEXT NOT NULL, arrival BIGSERIAL NOT NULL);
    CREATE INDEX pending_expiry ON pending (expires_at);
    CREATE INDEX pending_client ON pending (client_id, expires_at);
    CREATE TABLE codes (hash TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at BIGINT NOT NULL,
                        client_id TEXT NOT NULL, arrival BIGSERIAL NOT NULL);
    CREATE INDEX codes_expiry ON codes (expires_at);
    CREATE INDEX codes_client ON codes (client_id, expires_at);
    CREATE TABLE used_codes (hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL,
                             until BIGINT NOT NULL);
    CREATE TABLE grants (id TEXT PRIMARY KEY, data TEXT NOT NULL, client_id TEXT NOT NULL,
                         live_until BIGINT NOT NULL);
    CREATE INDEX grants_client ON grants (client_id);
    CREATE INDEX grants_live ON grants (live_until);
    CREATE TABLE revoked_early (grant_id TEXT PRIMARY KEY);
    CREATE TABLE grant_tokens (grant_id TEXT NOT NULL, jti TEXT NOT NULL, exp BIGINT NOT NULL);
    CREATE INDEX grant_tokens_grant ON grant_tokens (grant_id);
    CREATE TABLE refresh (hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX refresh_grant ON refresh (grant_id);
    CREATE TABLE revoked_jti (jti TEXT PRIMARY KEY, exp BIGINT NOT NULL);
    CREATE TABLE revocation_log (seq BIGSERIAL PRIMARY KEY, jti TEXT NOT NULL,
                                 exp BIGINT NOT NULL);
    CREATE INDEX revocation_log_exp ON revocation_log (exp);
    CREATE TABLE consents (sub TEXT NOT NULL, client_id TEXT NOT NULL, data TEXT NOT NULL,
                           expires_at BIGINT NOT NULL, PRIMARY KEY (sub, client_id));
    CREATE TABLE readiness (id INTEGER PRIMARY KEY CHECK (id = 1), at BIGINT NOT NULL);
    CREATE TABLE signing_keys (kid TEXT PRIMARY KEY, alg TEXT NOT NULL, sealed BYTEA NOT NULL,
                               created_at BIGINT NOT NULL, active_from BIGINT NOT NULL,
                               position BIGSERIAL NOT NULL);
    CREATE TABLE rate_counts (bucket TEXT NOT NULL, key TEXT NOT NULL, window_start BIGINT NOT NULL,
                              until BIGINT NOT NULL, count BIGINT NOT NULL,
                              PRIMARY KEY (bucket, key, window_start));
    CREATE INDEX rate_counts_until ON rate_counts (until);
    CREATE TABLE security_events (seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL,
                                  event TEXT NOT NULL, client_id TEXT, sub TEXT, source TEXT,
                                  request_id TEXT);
    CREATE TABLE sessions (hash TEXT PRIMARY KEY, sub TEXT NOT NULL, expires_at BIGINT NOT NULL);
    CREATE INDEX sessions_expiry ON sessions (expires_at);
"#,
    // People who signed in through an identity provider, with the provider's tokens for
    // them sealed (`upstream`); `scopes` is a JSON array, NULL for every offered scope.
    // Sessions by user, to sign someone out everywhere.
    r#"
    CREATE TABLE identities (sub TEXT PRIMARY KEY, provider TEXT NOT NULL, email TEXT, name TEXT,
                             scopes TEXT, upstream BYTEA, updated_at BIGINT NOT NULL);
    CREATE INDEX sessions_sub ON sessions (sub);
"#,
];

/// Advisory lock keys of this schema (the first argument of the two-key form).
const LOCK_SPACE: i32 = 0x4d43_5047; // "MCPG"
/// Held while migrating.
const MIGRATION_LOCK: i32 = 1;
/// Held by every writer of the revocation log until it commits.
const REVOCATION_LOCK: i32 = 2;
/// Held while counting and evicting under the pending caps.
const ADMISSION_LOCK: i32 = 3;
/// Held while adding a signing key: the fleet rotates once.
const KEYS_LOCK: i32 = 4;

/// How long a call waits for a pooled connection before it reports the store unavailable.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one statement may run (lock waits included).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per replica.
const POOL_SIZE: u32 = 16;
/// Seconds between sweeps of expired rows (by any replica that writes).
const PURGE_EVERY: u64 = 60;

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// The PostgreSQL [`Store`].
pub struct PostgresStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    pool: Option<Pool>,
    /// Where to connect, for the connection that listens for revocations.
    config: postgres::Config,
    /// How, likewise.
    tls: MakeRustlsConnect,
    last_purge: AtomicU64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// What a database error means for the caller. Messages carry PostgreSQL's message and
/// code, never its DETAIL line (which quotes the values of a violated key).
fn err(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let what = format!("{} ({})", db.message(), db.code().code());
        return match *db.code() {
            SqlState::UNIQUE_VIOLATION => StoreError::Conflict(what),
            SqlState::DATA_CORRUPTED | SqlState::INDEX_CORRUPTED => StoreError::Corrupt(what),
            _ => StoreError::Unavailable(what),
        };
    }
    let text = e.to_string();
    // A column of an unexpected type: the schema is not ours.
    if text.starts_with("error deserializing column") {
        StoreError::Corrupt(text)
    } else {
        StoreError::Unavailable(text)
    }
}

fn pool_err(e: r2d2::Error) -> StoreError {
    let text = e.to_string();
    let hint = if text.contains("TLS handshake") {
        " (does database_ca_file, or the system's roots, hold the CA of the server's certificate?)"
    } else {
        ""
    };
    StoreError::Unavailable(format!("no database connection: {text}{hint}"))
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx).map_err(err)
}

/// The record in column 0 of `row`.
fn record<T: DeserializeOwned>(row: Option<Row>) -> StoreResult<Option<T>> {
    row.map(|r| from_json(get::<&str>(&r, 0)?)).transpose()
}

/// Run `f` where it may block: off the async workers on the multi-threaded runtime. The
/// driver runs its own small runtime per connection, which cannot be entered from a
/// current-thread runtime's worker; that is refused rather than panicking.
fn blocking<T>(f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => Err(StoreError::Unavailable(
            "the PostgreSQL store needs the multi-threaded runtime".into(),
        )),
        Err(_) => f(),
    }
}

/// TLS to the database when the URL asks for it (`sslmode=require`; `prefer`, the default,
/// uses it when the server offers it), verified against `ca_file` (PEM) when given, else
/// against the system's roots.
fn tls(ca_file: Option<&std::path::Path>) -> StoreResult<MakeRustlsConnect> {
    crate::roots::client_config(ca_file, None)
        .map(MakeRustlsConnect::new)
        .map_err(|e| StoreError::Unavailable(format!("database TLS: {e}")))
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/db?sslmode=...`), verifying the
    /// server's certificate against `ca_file` when given (else the system's roots), migrate
    /// the schema once for the whole fleet, and keep a pool of connections.
    pub fn open(url: &str, ca_file: Option<&std::path::Path>) -> StoreResult<Self> {
        blocking(|| Self::connect(url, ca_file))
    }

    fn connect(url: &str, ca_file: Option<&std::path::Path>) -> StoreResult<Self> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database_url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CHECKOUT_TIMEOUT);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("mcp-oauth-gateway");
        }
        let timeouts = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis() * 2
        );
        let options = match config.get_options() {
            Some(given) => format!("{timeouts} {given}"),
            None => timeouts,
        };
        config.options(&options);
        let tls = tls(ca_file)?;
        let manager = PostgresConnectionManager::new(config.clone(), tls.clone());
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CHECKOUT_TIMEOUT)
            .error_handler(Box::new(QuietErrors))
            .build(manager)
            .map_err(pool_err)?;
        let store = Self {
            pool: Some(pool),
            config,
            tls,
            last_purge: AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    fn connection(
        &self,
    ) -> StoreResult<r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?
            .get()
            .map_err(pool_err)
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.connection()?;
        conn.execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&LOCK_SPACE, &MIGRATION_LOCK],
        )
        .map_err(err)?;
        let outcome = (|| {
            conn.batch_execute(
                "CREATE TABLE IF NOT EXISTS mcp_gateway_schema (version INTEGER NOT NULL);",
            )
            .map_err(err)?;
            let mut tx = conn.transaction().map_err(err)?;
            let version: Option<i32> = tx
                .query_opt("SELECT version FROM mcp_gateway_schema", &[])
                .map_err(err)?
                .map(|r| get(&r, 0))
                .transpose()?;
            let version = version.map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX));
            if version > MIGRATIONS.len() {
                return Err(StoreError::Unavailable(format!(
                    "the database schema (version {version}) is newer than this gateway understands"
                )));
            }
            if version == MIGRATIONS.len() {
                return Ok(());
            }
            for migration in &MIGRATIONS[version..] {
                tx.batch_execute(migration).map_err(err)?;
            }
            let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
            tx.execute("DELETE FROM mcp_gateway_schema", &[])
                .map_err(err)?;
            tx.execute(
                "INSERT INTO mcp_gateway_schema (version) VALUES ($1)",
                &[&latest],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::info!(
                from = version,
                to = latest,
                "migrated the PostgreSQL schema"
            );
            Ok(())
        })();
        let unlocked = conn
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LOCK_SPACE, &MIGRATION_LOCK],
            )
            .map_err(err);
        outcome.and(unlocked.map(|_| ()))
    }

    fn read<T>(&self, f: impl FnOnce(&mut postgres::Client) -> StoreResult<T>) -> StoreResult<T> {
        blocking(|| {
            let mut conn = self.connection()?;
            f(&mut conn)
        })
    }

    fn tx<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
        blocking(|| {
            let mut conn = self.connection()?;
            let mut tx = conn.transaction().map_err(err)?;
            let out = f(&mut tx)?;
            tx.commit().map_err(err)?;
            Ok(out)
        })
    }

    fn purge_now_and_then(&self, tx: &mut Transaction<'_>, now: u64) -> StoreResult<()> {
        let last = self.last_purge.load(Ordering::Relaxed);
        if now >= last.saturating_add(PURGE_EVERY) || now < last {
            self.last_purge.store(now, Ordering::Relaxed);
            let now = int(now);
            for sql in [
                "DELETE FROM pending WHERE expires_at <= $1",
                "DELETE FROM codes WHERE expires_at <= $1",
                "DELETE FROM used_codes WHERE until <= $1",
                "DELETE FROM revoked_jti WHERE exp <= $1",
                "DELETE FROM revocation_log WHERE exp <= $1",
                "DELETE FROM grant_tokens WHERE exp <= $1",
                "DELETE FROM sessions WHERE expires_at <= $1",
                "DELETE FROM rate_counts WHERE until <= $1",
            ] {
                tx.execute(sql, &[&now]).map_err(err)?;
            }
        }
        Ok(())
    }
}

/// The driver closes a connection by blocking on its own runtime, which panics inside an
/// async worker: the pool is dropped where blocking is allowed.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let Some(pool) = self.pool.take() else {
            return;
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(move || drop(pool));
            }
            Ok(_) => {
                let _ = std::thread::Builder::new()
                    .name("pg-close".into())
                    .spawn(move || drop(pool));
            }
            Err(_) => drop(pool),
        }
    }
}

/// Connection failures are reported by the call that needed the connection.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::debug!(error = %error, "PostgreSQL connection attempt failed");
    }
}

/// Wait for the transaction-scoped advisory lock on `key` (within [`LOCK_SPACE`]'s keys,
/// hashed from a string).
fn lock(tx: &mut Transaction<'_>, key: &str) -> StoreResult<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&key],
    )
    .map_err(err)?;
    Ok(())
}

fn lock_fixed(tx: &mut Transaction<'_>, key: i32) -> StoreResult<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_SPACE, &key])
        .map_err(err)?;
    Ok(())
}

fn grant_key(id: &str) -> String {
    format!("grant:{id}")
}

fn get_grant(c: &mut impl postgres::GenericClient, id: &str) -> StoreResult<Option<Grant>> {
    record(
        c.query_opt("SELECT data FROM grants WHERE id = $1", &[&id])
            .map_err(err)?,
    )
}

fn get_refresh(
    c: &mut impl postgres::GenericClient,
    hash: &str,
) -> StoreResult<Option<RefreshToken>> {
    record(
        c.query_opt("SELECT data FROM refresh WHERE hash = $1", &[&hash])
            .map_err(err)?,
    )
}

fn put_pending(tx: &mut Transaction<'_>, p: &PendingAuthorization) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO pending (id, data, expires_at, client_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at,
                                        client_id = excluded.client_id",
        &[&p.id, &to_json(p)?, &int(p.expires_at), &p.client_id],
    )
    .map_err(err)?;
    Ok(())
}

fn put_code(tx: &mut Transaction<'_>, hash: &str, code: &AuthCode) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO codes (hash, data, expires_at, client_id) VALUES ($1, $2, $3, $4)",
        &[
            &hash,
            &to_json(code)?,
            &int(code.expires_at),
            &code.client_id,
        ],
    )
    .map_err(err)?;
    Ok(())
}

/// Append to the revocation log (under its lock, see the module docs) and wake the
/// replicas that listen.
fn log_revocations(
    tx: &mut Transaction<'_>,
    sql: &str,
    args: &[&(dyn ToSql + Sync)],
) -> StoreResult<()> {
    lock_fixed(tx, REVOCATION_LOCK)?;
    tx.execute(sql, args).map_err(err)?;
    tx.execute("SELECT pg_notify($1, '')", &[&REVOCATION_CHANNEL])
        .map_err(err)?;
    Ok(())
}

/// The channel a revocation is announced on (after its transaction commits).
pub const REVOCATION_CHANNEL: &str = "mcp_gateway_revocations";

fn revoke_jti(tx: &mut Transaction<'_>, jti: &str, exp: u64) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO revoked_jti (jti, exp) VALUES ($1, $2)
         ON CONFLICT (jti) DO UPDATE SET exp = excluded.exp",
        &[&jti, &int(exp)],
    )
    .map_err(err)?;
    log_revocations(
        tx,
        "INSERT INTO revocation_log (jti, exp) VALUES ($1, $2)",
        &[&jti, &int(exp)],
    )
}

fn revoke_grant(tx: &mut Transaction<'_>, grant_id: &str) -> StoreResult<()> {
    lock(tx, &grant_key(grant_id))?;
    match get_grant(tx, grant_id)? {
        Some(mut g) => {
            g.revoked = true;
            tx.execute(
                "UPDATE grants SET data = $2, live_until = 0 WHERE id = $1",
                &[&grant_id, &to_json(&g)?],
            )
            .map_err(err)?;
        }
        None => {
            tx.execute(
                "INSERT INTO revoked_early (grant_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&grant_id],
            )
            .map_err(err)?;
        }
    }
    tx.execute(
        "INSERT INTO revoked_jti (jti, exp) SELECT jti, exp FROM grant_tokens WHERE grant_id = $1
         ON CONFLICT (jti) DO UPDATE SET exp = excluded.exp",
        &[&grant_id],
    )
    .map_err(err)?;
    log_revocations(
        tx,
        "INSERT INTO revocation_log (jti, exp)
         SELECT jti, exp FROM grant_tokens WHERE grant_id = $1 ORDER BY jti",
        &[&grant_id],
    )?;
    tx.execute("DELETE FROM grant_tokens WHERE grant_id = $1", &[&grant_id])
        .map_err(err)?;
    tx.execute("DELETE FROM refresh WHERE grant_id = $1", &[&grant_id])
        .map_err(err)?;
    Ok(())
}

impl Records for Transaction<'_> {
    fn refresh(&mut self, hash: &str) -> StoreResult<Option<RefreshToken>> {
        get_refresh(self, hash)
    }

    fn grant(&mut self, id: &str) -> StoreResult<Option<Grant>> {
        get_grant(self, id)
    }

    fn put_refresh(&mut self, hash: &str, token: &RefreshToken) -> StoreResult<()> {
        self.execute(
            "INSERT INTO refresh (hash, grant_id, data) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO UPDATE SET grant_id = excluded.grant_id, data = excluded.data",
            &[&hash, &token.grant_id, &to_json(token)?],
        )
        .map_err(err)?;
        Ok(())
    }

    fn revoke_grant(&mut self, id: &str) -> StoreResult<()> {
        revoke_grant(self, id)
    }

    fn insert_grant(&mut self, grant: &Grant) -> StoreResult<()> {
        lock(self, &grant_key(&grant.id))?;
        let early = self
            .execute(
                "DELETE FROM revoked_early WHERE grant_id = $1",
                &[&grant.id],
            )
            .map_err(err)?;
        let revoked = grant.revoked || early > 0;
        let grant = &Grant {
            revoked,
            ..grant.clone()
        };
        let live_until = if revoked { 0 } else { int(grant.expires_at) };
        self.execute(
            "INSERT INTO grants (id, data, client_id, live_until) VALUES ($1, $2, $3, $4)",
            &[&grant.id, &to_json(grant)?, &grant.client_id, &live_until],
        )
        .map_err(err)?;
        Ok(())
    }

    fn add_access_token(&mut self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        lock(self, &grant_key(grant_id))?;
        let live = get_grant(self, grant_id)?.is_some_and(|g| !g.revoked);
        if !live {
            return revoke_jti(self, jti, exp);
        }
        self.execute(
            "INSERT INTO grant_tokens (grant_id, jti, exp) VALUES ($1, $2, $3)",
            &[&grant_id, &jti, &int(exp)],
        )
        .map_err(err)?;
        Ok(())
    }

    fn code(&mut self, hash: &str) -> StoreResult<Option<AuthCode>> {
        record(
            self.query_opt("SELECT data FROM codes WHERE hash = $1", &[&hash])
                .map_err(err)?,
        )
    }

    fn used_code(&mut self, hash: &str) -> StoreResult<Option<String>> {
        self.query_opt("SELECT grant_id FROM used_codes WHERE hash = $1", &[&hash])
            .map_err(err)?
            .map(|r| get(&r, 0))
            .transpose()
    }

    fn use_code(&mut self, hash: &str, grant_id: &str, until: u64) -> StoreResult<()> {
        self.execute("DELETE FROM codes WHERE hash = $1", &[&hash])
            .map_err(err)?;
        self.execute(
            "INSERT INTO used_codes (hash, grant_id, until) VALUES ($1, $2, $3)",
            &[&hash, &grant_id, &int(until)],
        )
        .map_err(err)?;
        Ok(())
    }

    fn waiting(&mut self, client_id: &str, now: u64) -> StoreResult<(usize, usize)> {
        let row = self
            .query_one(
                "SELECT (SELECT count(*) FROM pending WHERE expires_at > $1)
                      + (SELECT count(*) FROM codes WHERE expires_at > $1),
                        (SELECT count(*) FROM pending WHERE client_id = $2 AND expires_at > $1)
                      + (SELECT count(*) FROM codes WHERE client_id = $2 AND expires_at > $1)",
                &[&int(now), &client_id],
            )
            .map_err(err)?;
        Ok((count(get(&row, 0)?), count(get(&row, 1)?)))
    }

    fn evict_oldest(&mut self, only: Option<&str>, now: u64) -> StoreResult<bool> {
        for table in ["pending", "codes"] {
            let key = if table == "pending" { "id" } else { "hash" };
            let deleted = self
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE {key} = (SELECT {key} FROM {table}
                         WHERE expires_at > $1 AND ($2::TEXT IS NULL OR client_id = $2)
                         ORDER BY expires_at, arrival LIMIT 1)"
                    ),
                    &[&int(now), &only],
                )
                .map_err(err)?;
            if deleted > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Store for PostgresStore {
    fn insert_client(&self, client: Client) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO clients (client_id, data, last_used, pinned) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (client_id) DO UPDATE SET data = excluded.data,
                     last_used = excluded.last_used, pinned = excluded.pinned",
                &[
                    &client.client_id,
                    &to_json(&client)?,
                    &int(client.last_used_at.max(client.created_at)),
                    &client.pinned,
                ],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        self.read(|c| {
            let row = c
                .query_opt(
                    "SELECT data, last_used FROM clients WHERE client_id = $1",
                    &[&client_id],
                )
                .map_err(err)?;
            row.map(|r| client_row(&r)).transpose()
        })
    }

    fn touch_client(&self, client_id: &str, now: u64) -> StoreResult<()> {
        self.read(|c| {
            c.execute(
                "UPDATE clients SET last_used = GREATEST(last_used, $2) WHERE client_id = $1",
                &[&client_id, &int(now)],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn purge_unused_clients(&self, unused_before: u64) -> StoreResult<usize> {
        self.read(|c| {
            c.execute(
                "DELETE FROM clients WHERE NOT pinned AND last_used < $1",
                &[&int(unused_before)],
            )
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .map_err(err)
        })
    }

    fn clients(&self) -> StoreResult<Vec<Client>> {
        self.read(|c| {
            let mut out = c
                .query("SELECT data, last_used FROM clients", &[])
                .map_err(err)?
                .iter()
                .map(client_row)
                .collect::<StoreResult<Vec<_>>>()?;
            sort_clients(&mut out);
            Ok(out)
        })
    }

    fn revoke_client(&self, client_id: &str) -> StoreResult<ClientRevocation> {
        self.tx(|tx| {
            let mut live = tx
                .query(
                    "SELECT id FROM grants WHERE client_id = $1 AND live_until > 0",
                    &[&client_id],
                )
                .map_err(err)?
                .iter()
                .map(|r| get::<String>(r, 0))
                .collect::<StoreResult<Vec<_>>>()?;
            // Grant locks in one order before the log's lock: two revocations that share
            // grants wait for each other instead of deadlocking.
            live.sort();
            for id in &live {
                lock(tx, &grant_key(id))?;
            }
            for id in &live {
                revoke_grant(tx, id)?;
            }
            let deleted = tx
                .execute("DELETE FROM clients WHERE client_id = $1", &[&client_id])
                .map_err(err)?
                > 0;
            for table in ["consents", "pending", "codes"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE client_id = $1"),
                    &[&client_id],
                )
                .map_err(err)?;
            }
            Ok(ClientRevocation {
                deleted,
                grants: live.len(),
            })
        })
    }

    fn insert_pending(&self, pending: PendingAuthorization, now: u64) -> StoreResult<()> {
        self.tx(|tx| {
            self.purge_now_and_then(tx, now)?;
            put_pending(tx, &pending)
        })
    }

    fn admit_pending(
        &self,
        pending: PendingAuthorization,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission> {
        self.tx(|tx| {
            self.purge_now_and_then(tx, now)?;
            lock_fixed(tx, ADMISSION_LOCK)?;
            let admission = super::make_room(tx, &pending.client_id, now, limits)?;
            put_pending(tx, &pending)?;
            Ok(admission)
        })
    }

    fn take_pending(&self, id: &str) -> StoreResult<Option<PendingAuthorization>> {
        self.read(|c| {
            record(
                c.query_opt("DELETE FROM pending WHERE id = $1 RETURNING data", &[&id])
                    .map_err(err)?,
            )
        })
    }

    fn remember_consent(&self, consent: Consent) -> StoreResult<()> {
        self.read(|c| {
            c.execute(
                "INSERT INTO consents (sub, client_id, data, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sub, client_id) DO UPDATE SET data = excluded.data,
                     expires_at = excluded.expires_at",
                &[
                    &consent.sub,
                    &consent.client_id,
                    &to_json(&consent)?,
                    &int(consent.expires_at),
                ],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn consent(&self, sub: &str, client_id: &str, now: u64) -> StoreResult<Option<Consent>> {
        self.read(|c| {
            record(
                c.query_opt(
                    "SELECT data FROM consents WHERE sub = $1 AND client_id = $2 AND expires_at > $3",
                    &[&sub, &client_id, &int(now)],
                )
                .map_err(err)?,
            )
        })
    }

    fn consents(&self, sub: &str, now: u64) -> StoreResult<Vec<Consent>> {
        self.read(|c| {
            c.query(
                "SELECT data FROM consents WHERE sub = $1 AND expires_at > $2 ORDER BY client_id",
                &[&sub, &int(now)],
            )
            .map_err(err)?
            .iter()
            .map(|r| from_json(get::<&str>(r, 0)?))
            .collect()
        })
    }

    fn forget_consent(&self, sub: &str, client_id: &str) -> StoreResult<bool> {
        self.read(|c| {
            c.execute(
                "DELETE FROM consents WHERE sub = $1 AND client_id = $2",
                &[&sub, &client_id],
            )
            .map(|n| n > 0)
            .map_err(err)
        })
    }

    fn insert_code(&self, code_hash: String, code: AuthCode) -> StoreResult<()> {
        self.tx(|tx| put_code(tx, &code_hash, &code))
    }

    fn admit_code(
        &self,
        code_hash: String,
        code: AuthCode,
        now: u64,
        limits: PendingLimits,
    ) -> StoreResult<Admission> {
        self.tx(|tx| {
            self.purge_now_and_then(tx, now)?;
            lock_fixed(tx, ADMISSION_LOCK)?;
            // Checked first: making room could evict the code whose hash is taken.
            let taken = tx
                .query_opt("SELECT 1 FROM codes WHERE hash = $1", &[&code_hash])
                .map_err(err)?;
            if taken.is_some() {
                return Err(StoreError::Conflict("a code with this hash exists".into()));
            }
            let admission = super::make_room(tx, &code.client_id, now, limits)?;
            put_code(tx, &code_hash, &code)?;
            Ok(admission)
        })
    }

    fn redeem_code(&self, exchange: CodeExchange<'_>) -> StoreResult<CodeRedemption> {
        self.tx(|tx| {
            self.purge_now_and_then(tx, exchange.now)?;
            lock(tx, &format!("code:{}", exchange.code_hash))?;
            super::redeem(tx, exchange)
        })
    }

    fn insert_grant(&self, grant: Grant) -> StoreResult<()> {
        self.tx(|tx| tx.insert_grant(&grant))
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        self.read(|c| get_grant(c, grant_id))
    }

    fn add_access_token(&self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        self.tx(|tx| tx.add_access_token(grant_id, jti, exp))
    }

    fn revoke_grant(&self, grant_id: &str) -> StoreResult<()> {
        self.tx(|tx| revoke_grant(tx, grant_id))
    }

    fn live_grants(&self, now: u64) -> StoreResult<Vec<Grant>> {
        self.read(|c| {
            let mut out = c
                .query(
                    "SELECT data FROM grants WHERE live_until > $1",
                    &[&int(now)],
                )
                .map_err(err)?
                .iter()
                .map(|r| from_json::<Grant>(get::<&str>(r, 0)?))
                .collect::<StoreResult<Vec<_>>>()?;
            sort_grants(&mut out);
            Ok(out)
        })
    }

    fn live_counts(&self, now: u64) -> StoreResult<LiveCounts> {
        self.read(|c| {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM clients),
                            (SELECT count(*) FROM grants WHERE live_until > $1)",
                    &[&int(now)],
                )
                .map_err(err)?;
            Ok(LiveCounts {
                clients: count(get(&row, 0)?),
                grants: count(get(&row, 1)?),
            })
        })
    }

    fn probe_write(&self, now: u64) -> StoreResult<()> {
        self.read(|c| {
            c.execute(
                "INSERT INTO readiness (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                &[&int(now)],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn insert_refresh(&self, token_hash: String, token: RefreshToken) -> StoreResult<()> {
        self.tx(|tx| tx.put_refresh(&token_hash, &token))
    }

    fn refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        self.read(|c| get_refresh(c, token_hash))
    }

    fn rotate_refresh(&self, rotation: RefreshRotation<'_>) -> StoreResult<RotateOutcome> {
        self.tx(|tx| {
            // One family rotates at a time: every token of it names the same grant.
            let family: Option<String> = tx
                .query_opt(
                    "SELECT grant_id FROM refresh WHERE hash = $1",
                    &[&rotation.old_hash],
                )
                .map_err(err)?
                .map(|r| get(&r, 0))
                .transpose()?;
            if let Some(grant_id) = family {
                lock(tx, &grant_key(&grant_id))?;
            }
            super::rotate(tx, rotation)
        })
    }

    fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<()> {
        self.tx(|tx| revoke_jti(tx, jti, exp))
    }

    fn is_access_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        self.read(|c| {
            c.query_opt("SELECT 1 FROM revoked_jti WHERE jti = $1", &[&jti])
                .map(|r| r.is_some())
                .map_err(err)
        })
    }

    fn revocations_since(&self, after: u64, now: u64) -> StoreResult<RevocationBatch> {
        self.read(|c| {
            // One statement, one snapshot: the newest number (the view compares it with
            // its own to tell that the log started over) and the rows after `after`.
            // Writers commit in sequence order (they hold the log's lock until they
            // commit), so every number above the newest visible one is still to come.
            let rows = c
                .query(
                    "WITH newest AS (SELECT coalesce(max(seq), 0) AS n FROM revocation_log)
                     SELECT newest.n, log.jti, log.exp FROM newest
                     LEFT JOIN revocation_log log ON log.seq > $1
                     ORDER BY log.seq",
                    &[&int(after)],
                )
                .map_err(err)?;
            let mut last = 0;
            let mut revoked = Vec::new();
            for row in &rows {
                last = uint(get(row, 0)?);
                if let (Some(jti), Some(exp)) =
                    (get::<Option<String>>(row, 1)?, get::<Option<i64>>(row, 2)?)
                    && uint(exp) > now
                {
                    revoked.push((jti, uint(exp)));
                }
            }
            Ok(RevocationBatch { revoked, last })
        })
    }

    fn insert_session(&self, hash: &str, sub: &str, expires_at: u64) -> StoreResult<()> {
        self.read(|c| {
            c.execute(
                "INSERT INTO sessions (hash, sub, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (hash) DO UPDATE SET sub = excluded.sub, expires_at = excluded.expires_at",
                &[&hash, &sub, &int(expires_at)],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn session(&self, hash: &str, now: u64) -> StoreResult<Option<String>> {
        self.read(|c| {
            c.query_opt(
                "SELECT sub FROM sessions WHERE hash = $1 AND expires_at > $2",
                &[&hash, &int(now)],
            )
            .map_err(err)?
            .map(|r| get(&r, 0))
            .transpose()
        })
    }

    fn end_session(&self, hash: &str) -> StoreResult<()> {
        self.read(|c| {
            c.execute("DELETE FROM sessions WHERE hash = $1", &[&hash])
                .map(|_| ())
                .map_err(err)
        })
    }

    fn end_sessions_of(&self, sub: &str) -> StoreResult<usize> {
        self.read(|c| {
            c.execute("DELETE FROM sessions WHERE sub = $1", &[&sub])
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .map_err(err)
        })
    }

    fn put_identity(&self, identity: Identity) -> StoreResult<()> {
        let scopes = scopes_to_column(identity.scopes.as_deref())?;
        self.read(|c| {
            c.execute(
                "INSERT INTO identities (sub, provider, email, name, scopes, upstream, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (sub) DO UPDATE SET provider = excluded.provider,
                     email = excluded.email, name = excluded.name, scopes = excluded.scopes,
                     upstream = excluded.upstream, updated_at = excluded.updated_at",
                &[
                    &identity.sub,
                    &identity.provider,
                    &identity.email,
                    &identity.name,
                    &scopes,
                    &identity.upstream,
                    &int(identity.updated_at),
                ],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn identity(&self, sub: &str) -> StoreResult<Option<Identity>> {
        self.read(|c| {
            c.query_opt(
                "SELECT sub, provider, email, name, scopes, upstream, updated_at
                 FROM identities WHERE sub = $1",
                &[&sub],
            )
            .map_err(err)?
            .map(|r| {
                Ok(Identity {
                    sub: get(&r, 0)?,
                    provider: get(&r, 1)?,
                    email: get(&r, 2)?,
                    name: get(&r, 3)?,
                    scopes: scopes_from_column(get(&r, 4)?)?,
                    upstream: get(&r, 5)?,
                    updated_at: uint(get(&r, 6)?),
                })
            })
            .transpose()
        })
    }

    fn swap_upstream(&self, sub: &str, old: &[u8], new: Vec<u8>, now: u64) -> StoreResult<bool> {
        // One statement: a concurrent swap waits for the row, then finds `old` gone.
        self.read(|c| {
            c.execute(
                "UPDATE identities SET upstream = $3, updated_at = $4
                 WHERE sub = $1 AND upstream = $2",
                &[&sub, &old, &new, &int(now)],
            )
            .map(|n| n > 0)
            .map_err(err)
        })
    }

    fn drop_upstream(&self, sub: &str) -> StoreResult<bool> {
        self.read(|c| {
            c.execute(
                "UPDATE identities SET upstream = NULL WHERE sub = $1 AND upstream IS NOT NULL",
                &[&sub],
            )
            .map(|n| n > 0)
            .map_err(err)
        })
    }

    fn restore(&self, snap: &super::Snapshot) -> StoreResult<()> {
        self.tx(|tx| {
            let row = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM clients) + (SELECT count(*) FROM grants)",
                    &[],
                )
                .map_err(err)?;
            if get::<i64>(&row, 0)? > 0 {
                return Err(StoreError::Conflict(
                    "the database already holds clients or grants; copy into an empty one".into(),
                ));
            }
            for c in &snap.clients {
                tx.execute(
                    "INSERT INTO clients (client_id, data, last_used, pinned) VALUES ($1, $2, $3, $4)",
                    &[&c.client_id, &to_json(c)?, &int(c.last_used_at.max(c.created_at)), &c.pinned],
                )
                .map_err(err)?;
            }
            for c in &snap.consents {
                tx.execute(
                    "INSERT INTO consents (sub, client_id, data, expires_at) VALUES ($1, $2, $3, $4)",
                    &[&c.sub, &c.client_id, &to_json(c)?, &int(c.expires_at)],
                )
                .map_err(err)?;
            }
            for g in &snap.grants {
                let live_until = if g.revoked { 0 } else { int(g.expires_at) };
                tx.execute(
                    "INSERT INTO grants (id, data, client_id, live_until) VALUES ($1, $2, $3, $4)",
                    &[&g.id, &to_json(g)?, &g.client_id, &live_until],
                )
                .map_err(err)?;
            }
            for (hash, token) in &snap.refresh {
                tx.put_refresh(hash, token)?;
            }
            for (grant_id, jti, exp) in &snap.grant_tokens {
                tx.execute(
                    "INSERT INTO grant_tokens (grant_id, jti, exp) VALUES ($1, $2, $3)",
                    &[grant_id, jti, &int(*exp)],
                )
                .map_err(err)?;
            }
            for (jti, exp) in &snap.revoked {
                revoke_jti(tx, jti, *exp)?;
            }
            for (hash, grant_id, until) in &snap.used_codes {
                tx.execute(
                    "INSERT INTO used_codes (hash, grant_id, until) VALUES ($1, $2, $3)",
                    &[hash, grant_id, &int(*until)],
                )
                .map_err(err)?;
            }
            for (hash, sub, exp) in &snap.sessions {
                tx.execute(
                    "INSERT INTO sessions (hash, sub, expires_at) VALUES ($1, $2, $3)",
                    &[hash, sub, &int(*exp)],
                )
                .map_err(err)?;
            }
            Ok(())
        })
    }

    fn record_event(&self, e: &StoredEvent, keep: usize) -> StoreResult<bool> {
        self.read(|c| {
            let row = c
                .query_one(
                    "INSERT INTO security_events (at, event, client_id, sub, source, request_id)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                    &[
                        &int(e.at),
                        &e.event,
                        &e.client_id,
                        &e.sub,
                        &e.source,
                        &e.request_id,
                    ],
                )
                .map_err(err)?;
            let seq: i64 = get(&row, 0)?;
            // Trim now and then, not on every event.
            if seq % 64 == 0 {
                let keep = i64::try_from(keep).unwrap_or(i64::MAX);
                c.execute(
                    "DELETE FROM security_events WHERE seq <= $1",
                    &[&seq.saturating_sub(keep)],
                )
                .map_err(err)?;
            }
            Ok(true)
        })
    }

    fn recent_events(&self, limit: usize) -> StoreResult<Option<Vec<StoredEvent>>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            c.query(
                "SELECT at, event, client_id, sub, source, request_id FROM security_events
                 ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )
            .map_err(err)?
            .iter()
            .map(|r| {
                Ok(StoredEvent {
                    at: uint(get(r, 0)?),
                    event: get(r, 1)?,
                    client_id: get(r, 2)?,
                    sub: get(r, 3)?,
                    source: get(r, 4)?,
                    request_id: get(r, 5)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
        })
    }

    fn count_event(
        &self,
        bucket: &str,
        key: &str,
        window: u64,
        until: u64,
    ) -> StoreResult<Option<u64>> {
        // The endpoints counted here may be all a flood touches: sweep expired windows
        // (and the rest) from here too, not only from the authorization paths.
        self.tx(|c| {
            self.purge_now_and_then(c, window)?;
            let row = c
                .query_one(
                    "INSERT INTO rate_counts (bucket, key, window_start, until, count)
                     VALUES ($1, $2, $3, $4, 1)
                     ON CONFLICT (bucket, key, window_start)
                     DO UPDATE SET count = rate_counts.count + 1
                     RETURNING count",
                    &[&bucket, &key, &int(window), &int(until)],
                )
                .map_err(err)?;
            Ok(Some(uint(get(&row, 0)?)))
        })
    }

    fn watch_revocations(&self, wake: std::sync::Weak<tokio::sync::Notify>) {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let spawned = std::thread::Builder::new()
            .name("pg-revocations".into())
            .spawn(move || listen_for_revocations(&config, &tls, &wake));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot listen for revocations; polling only");
        }
    }

    fn signing_keys(&self) -> StoreResult<Vec<SealedKey>> {
        self.read(|c| {
            c.query(
                "SELECT kid, alg, sealed, created_at, active_from FROM signing_keys
                 ORDER BY position",
                &[],
            )
            .map_err(err)?
            .iter()
            .map(|r| {
                Ok(SealedKey {
                    kid: get(r, 0)?,
                    alg: get(r, 1)?,
                    sealed: get(r, 2)?,
                    created_at: uint(get(r, 3)?),
                    active_from: uint(get(r, 4)?),
                })
            })
            .collect()
        })
    }

    fn add_signing_key(&self, key: SealedKey, newest: Option<&str>) -> StoreResult<bool> {
        self.tx(|tx| {
            lock_fixed(tx, KEYS_LOCK)?;
            let current: Option<String> = tx
                .query_opt(
                    "SELECT kid FROM signing_keys ORDER BY position DESC LIMIT 1",
                    &[],
                )
                .map_err(err)?
                .map(|r| get(&r, 0))
                .transpose()?;
            if current.as_deref() != newest {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, alg, sealed, created_at, active_from)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key.kid,
                    &key.alg,
                    &key.sealed,
                    &int(key.created_at),
                    &int(key.active_from),
                ],
            )
            .map_err(err)?;
            Ok(true)
        })
    }

    fn forget_signing_keys(&self, kids: &[String]) -> StoreResult<()> {
        self.read(|c| {
            c.execute("DELETE FROM signing_keys WHERE kid = ANY($1)", &[&kids])
                .map(|_| ())
                .map_err(err)
        })
    }
}

/// Hold a connection that listens on [`REVOCATION_CHANNEL`] and wake the view on each
/// notification, until the view is gone. A lost connection is retried every second;
/// after reconnecting the view is woken once, to catch up from its sequence number on
/// whatever was announced meanwhile (its one-second polling goes on regardless).
fn listen_for_revocations(
    config: &postgres::Config,
    tls: &MakeRustlsConnect,
    wake: &std::sync::Weak<tokio::sync::Notify>,
) {
    let wake_up = || match wake.upgrade() {
        Some(n) => {
            n.notify_one();
            true
        }
        None => false,
    };
    let mut lost = false;
    loop {
        let connected = config
            .connect(tls.clone())
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))
                    .map(|()| c)
                    .map_err(|e| e.to_string())
            });
        match connected {
            Ok(mut client) => {
                if lost {
                    tracing::info!("listening for revocations again");
                }
                if !wake_up() {
                    return;
                }
                use postgres::fallible_iterator::FallibleIterator as _;
                loop {
                    // A fresh iterator each round: its timer does not re-arm once it has
                    // fired, and a spent one would return at once, spinning this thread.
                    let next = client
                        .notifications()
                        .timeout_iter(Duration::from_secs(1))
                        .next();
                    match next {
                        Ok(Some(_)) => {
                            if !wake_up() {
                                return;
                            }
                        }
                        Ok(None) if client.is_closed() => {
                            tracing::warn!(
                                "lost the revocation notifications; polling until they return"
                            );
                            lost = true;
                            break;
                        }
                        Ok(None) => {
                            if wake.strong_count() == 0 {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lost the revocation notifications; polling until they return");
                            lost = true;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !lost {
                    tracing::warn!(error = %e, "cannot listen for revocations; polling until it can");
                    lost = true;
                }
            }
        }
        if wake.strong_count() == 0 {
            return;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "a back-off between reconnection attempts, not a wait for readiness"
        )]
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn client_row(row: &Row) -> StoreResult<Client> {
    let mut c: Client = from_json(get::<&str>(row, 0)?)?;
    c.last_used_at = uint(get(row, 1)?);
    Ok(c)
}
