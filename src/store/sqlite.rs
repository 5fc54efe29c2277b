//! [`SqliteStore`]: the embedded default. One SQLite file in the data dir, WAL mode, the
//! schema versioned with `PRAGMA user_version`. Records are stored as JSON next to the
//! columns that queries need (keys, expiry, grant id). A crash loses at most the request
//! in flight: every change commits before its response is sent.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    Admission, AuthCode, Client, ClientRevocation, CodeExchange, CodeRedemption, Consent, Grant,
    Identity, LiveCounts, PendingAuthorization, PendingLimits, Records, RefreshRotation,
    RefreshToken, RevocationBatch, RotateOutcome, Store, StoreError, StoreResult, from_json, int,
    scopes_from_column, scopes_to_column, sort_clients, sort_grants, to_json,
};

/// Schema migrations, applied in order; `user_version` records how many ran.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE clients (client_id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE pending (id TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE TABLE codes (hash TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE TABLE used_codes (hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, until INTEGER NOT NULL);
    CREATE TABLE grants (id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE revoked_early (grant_id TEXT PRIMARY KEY);
    CREATE TABLE grant_tokens (grant_id TEXT NOT NULL, jti TEXT NOT NULL, exp INTEGER NOT NULL);
    CREATE INDEX grant_tokens_grant ON grant_tokens (grant_id);
    CREATE TABLE refresh (hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, data TEXT NOT NULL);
    CREATE INDEX refresh_grant ON refresh (grant_id);
    CREATE TABLE revoked_jti (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL);
"#,
    r#"
    ALTER TABLE clients ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clients ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX clients_last_used ON clients (last_used);
"#,
    r#"
    CREATE TABLE consents (sub TEXT NOT NULL, client_id TEXT NOT NULL, data TEXT NOT NULL,
                           expires_at INTEGER NOT NULL, PRIMARY KEY (sub, client_id));
"#,
    // The operator's page and the pending caps: grants by client and liveness (0 once
    // revoked, else the expiry), pending requests and codes by client.
    r#"
    ALTER TABLE grants ADD COLUMN client_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE grants ADD COLUMN live_until INTEGER NOT NULL DEFAULT 0;
    UPDATE grants SET
        client_id = coalesce(json_extract(data, '$.client_id'), ''),
        live_until = CASE WHEN json_extract(data, '$.revoked') THEN 0
                          ELSE coalesce(json_extract(data, '$.expires_at'), 0) END;
    CREATE INDEX grants_client ON grants (client_id);
    CREATE INDEX grants_live ON grants (live_until);
    ALTER TABLE pending ADD COLUMN client_id TEXT NOT NULL DEFAULT '';
    UPDATE pending SET client_id = coalesce(json_extract(data, '$.client_id'), '');
    CREATE INDEX pending_expiry ON pending (expires_at);
    CREATE INDEX pending_client ON pending (client_id, expires_at);
    ALTER TABLE codes ADD COLUMN client_id TEXT NOT NULL DEFAULT '';
    UPDATE codes SET client_id = coalesce(json_extract(data, '$.client_id'), '');
    CREATE INDEX codes_expiry ON codes (expires_at);
    CREATE INDEX codes_client ON codes (client_id, expires_at);
"#,
    // One row that /readyz rewrites, to learn that a write really reaches the file.
    r#"
    CREATE TABLE readiness (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
"#,
    // Closed by default: registrations made before client credentials needed an initial
    // access token lose that grant; configured clients are re-pinned from the config.
    r#"
    UPDATE clients SET data = json_set(data, '$.grant_types', json((
        SELECT json_group_array(value) FROM json_each(clients.data, '$.grant_types')
        WHERE value <> 'client_credentials')))
    WHERE pinned = 0 AND EXISTS (
        SELECT 1 FROM json_each(clients.data, '$.grant_types')
        WHERE value = 'client_credentials');
"#,
    // The revocation log every replica's in-memory view catches up from. AUTOINCREMENT:
    // a sequence number is never reused, even once the newest rows are purged, so a view
    // that saw it cannot skip a later revocation. Tokens already revoked are copied in, so
    // an upgraded database's view starts complete.
    r#"
    CREATE TABLE revocation_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL,
                                 exp INTEGER NOT NULL);
    CREATE INDEX revocation_log_exp ON revocation_log (exp);
    INSERT INTO revocation_log (jti, exp) SELECT jti, exp FROM revoked_jti ORDER BY exp, jti;
"#,
    // Browser sign-in sessions, by hash of the cookie value: they survive a restart.
    r#"
    CREATE TABLE sessions (hash TEXT PRIMARY KEY, sub TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE INDEX sessions_expiry ON sessions (expires_at);
"#,
    // People who signed in through an identity provider, with the provider's tokens for
    // them sealed (`upstream`); `scopes` is a JSON array, NULL for every offered scope.
    // Sessions by user, to sign someone out everywhere.
    r#"
    CREATE TABLE identities (sub TEXT PRIMARY KEY, provider TEXT NOT NULL, email TEXT, name TEXT,
                             scopes TEXT, upstream BLOB, updated_at INTEGER NOT NULL);
    CREATE INDEX sessions_sub ON sessions (sub);
"#,
];

/// Seconds between sweeps of expired rows.
const PURGE_EVERY: u64 = 60;

/// File name of the database in the data dir.
pub const DB_FILE: &str = "gateway.db";

/// The SQLite [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// When expired rows were last swept; sweeping is a scan, so it runs at most once a
    /// minute, and every read checks expiry itself.
    last_purge: std::sync::atomic::AtomicU64,
}

/// What a database error means for the caller. A taken unique key is a conflict (the
/// transaction rolled back); a damaged file or a column of the wrong type is corruption;
/// everything else (busy, locked, read-only, full, I/O) means the store cannot be used now.
/// SQLite's messages name tables and columns, never the values bound to a statement.
fn err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.extended_code,
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ) =>
        {
            StoreError::Conflict(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Corrupt(e.to_string())
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// A file system failure around the database file.
fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    ///
    /// The database holds client secret hashes, refresh token hashes and who granted what,
    /// so on Unix its directory is made 0700 and the file is created 0600 before SQLite
    /// opens it (an existing one is tightened to 0600); SQLite gives the `-wal` and `-shm`
    /// files the database file's mode.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let at = |e: StoreError| e.context(path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| at(io_err(e)))?;
            make_private_dir(dir);
        }
        make_private_file(path).map_err(|e| at(io_err(e)))?;
        let store = Connection::open(path)
            .map_err(err)
            .and_then(Self::init)
            .map_err(at)?;
        // Left behind 0644 by an older gateway: SQLite keeps an existing file's mode.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = std::path::PathBuf::from(side);
            if side.exists() {
                restrict(&side, 0o600).map_err(|e| at(io_err(e)))?;
            }
        }
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(mut conn: Connection) -> StoreResult<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Unavailable(format!(
                "the database schema (version {version}) is newer than this gateway understands"
            )));
        }
        let tx = conn.transaction().map_err(err)?;
        for migration in &MIGRATIONS[version..] {
            tx.execute_batch(migration).map_err(err)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            last_purge: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn purge_now_and_then(&self, tx: &Transaction<'_>, now: u64) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let last = self.last_purge.load(Ordering::Relaxed);
        if now >= last.saturating_add(PURGE_EVERY) || now < last {
            self.last_purge.store(now, Ordering::Relaxed);
            purge(tx, now)?;
        }
        Ok(())
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Unavailable("the store lock is poisoned".into()))
    }

    /// Run a single read; no transaction (each statement is atomic on its own), so the
    /// per-request revocation check costs one indexed lookup.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        blocking(|| {
            let conn = self.lock()?;
            f(&conn)
        })
    }

    /// Run `f` in one transaction.
    fn tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
        blocking(|| {
            let mut conn = self.lock()?;
            let tx = conn.transaction().map_err(err)?;
            let out = f(&tx)?;
            tx.commit().map_err(err)?;
            Ok(out)
        })
    }
}

/// Run `f`, which waits on the database file (and on the connection's lock), off the async
/// workers: on the gateway's multi-threaded runtime the worker hands its other tasks to
/// another thread for the duration ([`tokio::task::block_in_place`]), so a slow disk or a
/// busy lock never stalls requests that do not touch the store. Elsewhere (a test's
/// current-thread runtime, no runtime at all) it simply runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Set `path`'s permission bits (Unix; elsewhere nothing to do).
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Make the data dir 0700. A shared dir (sticky bit, like `/tmp`) is never narrowed, and
/// one we may write in but not chmod (a volume owned by another user) is left as it is; both
/// with a warning: the files in it are 0600 regardless.
fn make_private_dir(dir: &Path) {
    if dir.as_os_str().is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let sticky = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o1000 != 0);
        if sticky {
            tracing::warn!(dir = %dir.display(), "the data dir is a shared (sticky) directory; use a private one");
            return;
        }
    }
    if let Err(e) = restrict(dir, 0o700) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not make the data dir private (0700)");
    }
}

/// Create the database file with mode 0600 if it does not exist, else make it 0600.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    drop(options.open(path)?);
    restrict(path, 0o600)
}

fn purge(tx: &Transaction<'_>, now: u64) -> StoreResult<()> {
    tx.execute_batch(&format!(
        "DELETE FROM pending WHERE expires_at <= {now};
         DELETE FROM codes WHERE expires_at <= {now};
         DELETE FROM used_codes WHERE until <= {now};
         DELETE FROM revoked_jti WHERE exp <= {now};
         DELETE FROM revocation_log WHERE exp <= {now};
         DELETE FROM grant_tokens WHERE exp <= {now};
         DELETE FROM sessions WHERE expires_at <= {now};"
    ))
    .map_err(err)
}

fn get_grant(tx: &Connection, id: &str) -> StoreResult<Option<Grant>> {
    let data: Option<String> = tx
        .query_row("SELECT data FROM grants WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(err)?;
    data.map(|d| from_json(&d)).transpose()
}

fn get_refresh(tx: &Connection, hash: &str) -> StoreResult<Option<RefreshToken>> {
    let data: Option<String> = tx
        .query_row("SELECT data FROM refresh WHERE hash = ?1", [hash], |r| {
            r.get(0)
        })
        .optional()
        .map_err(err)?;
    data.map(|d| from_json(&d)).transpose()
}

fn put_refresh(tx: &Transaction<'_>, hash: &str, token: &RefreshToken) -> StoreResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO refresh (hash, grant_id, data) VALUES (?1, ?2, ?3)",
        params![hash, token.grant_id, to_json(token)?],
    )
    .map_err(err)?;
    Ok(())
}

/// Pending requests and unredeemed codes live at `now`: all, and `client_id`'s.
fn waiting(tx: &Transaction<'_>, client_id: &str, now: u64) -> StoreResult<(usize, usize)> {
    let (total, client): (i64, i64) = tx
        .query_row(
            "SELECT (SELECT count(*) FROM pending WHERE expires_at > ?1)
                  + (SELECT count(*) FROM codes WHERE expires_at > ?1),
                    (SELECT count(*) FROM pending WHERE client_id = ?2 AND expires_at > ?1)
                  + (SELECT count(*) FROM codes WHERE client_id = ?2 AND expires_at > ?1)",
            params![int(now), client_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok((count(total), count(client)))
}

/// Delete the oldest live pending request (of `only`, when given; arrival order breaks
/// ties), else the oldest live code; whether there was one.
fn evict_oldest(tx: &Transaction<'_>, only: Option<&str>, now: u64) -> StoreResult<bool> {
    for table in ["pending", "codes"] {
        let deleted = tx
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE rowid = (SELECT rowid FROM {table}
                     WHERE expires_at > ?1 AND (?2 IS NULL OR client_id = ?2)
                     ORDER BY expires_at, rowid LIMIT 1)"
                ),
                params![int(now), only],
            )
            .map_err(err)?;
        if deleted > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn put_pending(tx: &Transaction<'_>, pending: &PendingAuthorization) -> StoreResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO pending (id, data, expires_at, client_id) VALUES (?1, ?2, ?3, ?4)",
        params![
            pending.id,
            to_json(pending)?,
            int(pending.expires_at),
            pending.client_id
        ],
    )
    .map_err(err)?;
    Ok(())
}

fn put_code(tx: &Transaction<'_>, code_hash: &str, code: &AuthCode) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO codes (hash, data, expires_at, client_id) VALUES (?1, ?2, ?3, ?4)",
        params![
            code_hash,
            to_json(code)?,
            int(code.expires_at),
            code.client_id
        ],
    )
    .map_err(err)?;
    Ok(())
}

/// Deny an access token and log it for the replicas' views (in the caller's transaction).
/// Revoking a grant does the same for its tokens in bulk ([`revoke_grant`]).
fn revoke_jti(tx: &Transaction<'_>, jti: &str, exp: u64) -> StoreResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO revoked_jti (jti, exp) VALUES (?1, ?2)",
        params![jti, int(exp)],
    )
    .map_err(err)?;
    tx.execute(
        "INSERT INTO revocation_log (jti, exp) VALUES (?1, ?2)",
        params![jti, int(exp)],
    )
    .map_err(err)?;
    Ok(())
}

fn revoke_grant(tx: &Transaction<'_>, grant_id: &str) -> StoreResult<()> {
    match get_grant(tx, grant_id)? {
        Some(mut g) => {
            g.revoked = true;
            tx.execute(
                "UPDATE grants SET data = ?2, live_until = 0 WHERE id = ?1",
                params![grant_id, to_json(&g)?],
            )
            .map_err(err)?;
        }
        None => {
            tx.execute(
                "INSERT OR IGNORE INTO revoked_early (grant_id) VALUES (?1)",
                [grant_id],
            )
            .map_err(err)?;
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO revoked_jti (jti, exp) SELECT jti, exp FROM grant_tokens WHERE grant_id = ?1",
        [grant_id],
    )
    .map_err(err)?;
    tx.execute(
        "INSERT INTO revocation_log (jti, exp) SELECT jti, exp FROM grant_tokens WHERE grant_id = ?1",
        [grant_id],
    )
    .map_err(err)?;
    tx.execute("DELETE FROM grant_tokens WHERE grant_id = ?1", [grant_id])
        .map_err(err)?;
    tx.execute("DELETE FROM refresh WHERE grant_id = ?1", [grant_id])
        .map_err(err)?;
    Ok(())
}

impl Records for &Transaction<'_> {
    fn refresh(&mut self, hash: &str) -> StoreResult<Option<RefreshToken>> {
        get_refresh(self, hash)
    }

    fn grant(&mut self, id: &str) -> StoreResult<Option<Grant>> {
        get_grant(self, id)
    }

    fn put_refresh(&mut self, hash: &str, token: &RefreshToken) -> StoreResult<()> {
        put_refresh(self, hash, token)
    }

    fn revoke_grant(&mut self, id: &str) -> StoreResult<()> {
        revoke_grant(self, id)
    }

    fn insert_grant(&mut self, grant: &Grant) -> StoreResult<()> {
        let early = self
            .execute("DELETE FROM revoked_early WHERE grant_id = ?1", [&grant.id])
            .map_err(err)?;
        let revoked = grant.revoked || early > 0;
        let grant = &Grant {
            revoked,
            ..grant.clone()
        };
        let live_until = if revoked { 0 } else { grant.expires_at };
        self.execute(
            "INSERT INTO grants (id, data, client_id, live_until) VALUES (?1, ?2, ?3, ?4)",
            params![grant.id, to_json(grant)?, grant.client_id, int(live_until)],
        )
        .map_err(err)?;
        Ok(())
    }

    fn add_access_token(&mut self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        let live = get_grant(self, grant_id)?.is_some_and(|g| !g.revoked);
        if !live {
            // Issued from a grant revoked meanwhile: deny it straight away.
            return revoke_jti(self, jti, exp);
        }
        self.execute(
            "INSERT INTO grant_tokens (grant_id, jti, exp) VALUES (?1, ?2, ?3)",
            params![grant_id, jti, int(exp)],
        )
        .map_err(err)?;
        Ok(())
    }

    fn code(&mut self, hash: &str) -> StoreResult<Option<AuthCode>> {
        let data: Option<String> = self
            .query_row("SELECT data FROM codes WHERE hash = ?1", [hash], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        data.map(|d| from_json(&d)).transpose()
    }

    fn used_code(&mut self, hash: &str) -> StoreResult<Option<String>> {
        self.query_row(
            "SELECT grant_id FROM used_codes WHERE hash = ?1",
            [hash],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)
    }

    fn waiting(&mut self, client_id: &str, now: u64) -> StoreResult<(usize, usize)> {
        waiting(self, client_id, now)
    }

    fn evict_oldest(&mut self, only: Option<&str>, now: u64) -> StoreResult<bool> {
        evict_oldest(self, only, now)
    }

    fn use_code(&mut self, hash: &str, grant_id: &str, until: u64) -> StoreResult<()> {
        self.execute("DELETE FROM codes WHERE hash = ?1", [hash])
            .map_err(err)?;
        self.execute(
            "INSERT INTO used_codes (hash, grant_id, until) VALUES (?1, ?2, ?3)",
            params![hash, grant_id, int(until)],
        )
        .map_err(err)?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn insert_client(&self, client: Client) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO clients (client_id, data, last_used, pinned) VALUES (?1, ?2, ?3, ?4)",
                params![
                    client.client_id,
                    to_json(&client)?,
                    int(client.last_used_at.max(client.created_at)),
                    client.pinned
                ],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        self.read(|tx| {
            let row: Option<(String, i64)> = tx
                .query_row(
                    "SELECT data, last_used FROM clients WHERE client_id = ?1",
                    [client_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            row.map(|(data, last_used)| {
                let mut c: Client = from_json(&data)?;
                c.last_used_at = u64::try_from(last_used).unwrap_or(0);
                Ok(c)
            })
            .transpose()
        })
    }

    fn touch_client(&self, client_id: &str, now: u64) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE clients SET last_used = max(last_used, ?2) WHERE client_id = ?1",
                params![client_id, int(now)],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn purge_unused_clients(&self, unused_before: u64) -> StoreResult<usize> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM clients WHERE pinned = 0 AND last_used < ?1",
                [int(unused_before)],
            )
            .map_err(err)
        })
    }

    fn clients(&self) -> StoreResult<Vec<Client>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT data, last_used FROM clients")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (data, last_used) = row.map_err(err)?;
                let mut c: Client = from_json(&data)?;
                c.last_used_at = u64::try_from(last_used).unwrap_or(0);
                out.push(c);
            }
            sort_clients(&mut out);
            Ok(out)
        })
    }

    fn revoke_client(&self, client_id: &str) -> StoreResult<ClientRevocation> {
        self.tx(|tx| {
            let live: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT id FROM grants WHERE client_id = ?1 AND live_until > 0")
                    .map_err(err)?;
                let rows = stmt
                    .query_map([client_id], |r| r.get::<_, String>(0))
                    .map_err(err)?;
                rows.collect::<Result<_, _>>().map_err(err)?
            };
            for id in &live {
                revoke_grant(tx, id)?;
            }
            let deleted = tx
                .execute("DELETE FROM clients WHERE client_id = ?1", [client_id])
                .map_err(err)?
                > 0;
            for table in ["consents", "pending", "codes"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE client_id = ?1"),
                    [client_id],
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
        self.tx(|mut tx| {
            self.purge_now_and_then(tx, now)?;
            let admission = super::make_room(&mut tx, &pending.client_id, now, limits)?;
            put_pending(tx, &pending)?;
            Ok(admission)
        })
    }

    fn take_pending(&self, id: &str) -> StoreResult<Option<PendingAuthorization>> {
        self.tx(|tx| {
            let data: Option<String> = tx
                .query_row(
                    "DELETE FROM pending WHERE id = ?1 RETURNING data",
                    [id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            data.map(|d| from_json(&d)).transpose()
        })
    }

    fn remember_consent(&self, consent: Consent) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO consents (sub, client_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![consent.sub, consent.client_id, to_json(&consent)?, int(consent.expires_at)],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    fn consent(&self, sub: &str, client_id: &str, now: u64) -> StoreResult<Option<Consent>> {
        self.read(|tx| {
            let data: Option<String> = tx
                .query_row(
                    "SELECT data FROM consents WHERE sub = ?1 AND client_id = ?2 AND expires_at > ?3",
                    params![sub, client_id, int(now)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            data.map(|d| from_json(&d)).transpose()
        })
    }

    fn consents(&self, sub: &str, now: u64) -> StoreResult<Vec<Consent>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare("SELECT data FROM consents WHERE sub = ?1 AND expires_at > ?2 ORDER BY client_id")
                .map_err(err)?;
            let rows = stmt
                .query_map(params![sub, int(now)], |r| r.get::<_, String>(0))
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(from_json(&row.map_err(err)?)?);
            }
            Ok(out)
        })
    }

    fn forget_consent(&self, sub: &str, client_id: &str) -> StoreResult<bool> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM consents WHERE sub = ?1 AND client_id = ?2",
                params![sub, client_id],
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
        self.tx(|mut tx| {
            self.purge_now_and_then(tx, now)?;
            // Checked first: making room could evict the code whose hash is taken.
            let taken = tx
                .query_row("SELECT 1 FROM codes WHERE hash = ?1", [&code_hash], |_| {
                    Ok(())
                })
                .optional()
                .map_err(err)?;
            if taken.is_some() {
                return Err(StoreError::Conflict("a code with this hash exists".into()));
            }
            let admission = super::make_room(&mut tx, &code.client_id, now, limits)?;
            put_code(tx, &code_hash, &code)?;
            Ok(admission)
        })
    }

    fn redeem_code(&self, exchange: CodeExchange<'_>) -> StoreResult<CodeRedemption> {
        self.tx(|mut tx| {
            self.purge_now_and_then(tx, exchange.now)?;
            super::redeem(&mut tx, exchange)
        })
    }

    fn insert_grant(&self, grant: Grant) -> StoreResult<()> {
        self.tx(|mut tx| tx.insert_grant(&grant))
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        self.read(|tx| get_grant(tx, grant_id))
    }

    fn add_access_token(&self, grant_id: &str, jti: &str, exp: u64) -> StoreResult<()> {
        self.tx(|mut tx| tx.add_access_token(grant_id, jti, exp))
    }

    fn revoke_grant(&self, grant_id: &str) -> StoreResult<()> {
        self.tx(|tx| revoke_grant(tx, grant_id))
    }

    fn live_grants(&self, now: u64) -> StoreResult<Vec<Grant>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare("SELECT data FROM grants WHERE live_until > ?1")
                .map_err(err)?;
            let rows = stmt
                .query_map([int(now)], |r| r.get::<_, String>(0))
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(from_json::<Grant>(&row.map_err(err)?)?);
            }
            sort_grants(&mut out);
            Ok(out)
        })
    }

    fn probe_write(&self, now: u64) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO readiness (id, at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [int(now)],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn live_counts(&self, now: u64) -> StoreResult<LiveCounts> {
        self.read(|conn| {
            let (clients, grants): (i64, i64) = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM clients),
                            (SELECT count(*) FROM grants WHERE live_until > ?1)",
                    [int(now)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?;
            let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
            Ok(LiveCounts {
                clients: count(clients),
                grants: count(grants),
            })
        })
    }

    fn insert_refresh(&self, token_hash: String, token: RefreshToken) -> StoreResult<()> {
        self.tx(|tx| put_refresh(tx, &token_hash, &token))
    }

    fn refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        self.read(|tx| get_refresh(tx, token_hash))
    }

    fn rotate_refresh(&self, rotation: RefreshRotation<'_>) -> StoreResult<RotateOutcome> {
        self.tx(|mut tx| super::rotate(&mut tx, rotation))
    }

    fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<()> {
        self.tx(|tx| revoke_jti(tx, jti, exp))
    }

    fn is_access_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        // Runs on every MCP request: keep the statement prepared.
        self.read(|conn| {
            conn.prepare_cached("SELECT 1 FROM revoked_jti WHERE jti = ?1")
                .map_err(err)?
                .query_row([jti], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(err)
        })
    }

    fn revocations_since(&self, after: u64, now: u64) -> StoreResult<RevocationBatch> {
        self.read(|conn| {
            // The newest number first, then the rows up to it: a revocation committed in
            // between is left for the next call rather than skipped.
            let last: i64 = conn
                .prepare_cached(
                    "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'revocation_log'), 0)",
                )
                .map_err(err)?
                .query_row([], |r| r.get(0))
                .map_err(err)?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT jti, exp FROM revocation_log
                     WHERE seq > ?1 AND seq <= ?2 AND exp > ?3 ORDER BY seq",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![int(after), last, int(now)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(err)?;
            let mut revoked = Vec::new();
            for row in rows {
                let (jti, exp) = row.map_err(err)?;
                revoked.push((jti, u64::try_from(exp).unwrap_or(0)));
            }
            Ok(RevocationBatch {
                revoked,
                last: u64::try_from(last).unwrap_or(0),
            })
        })
    }

    fn snapshot(&self) -> StoreResult<super::Snapshot> {
        self.read(|conn| {
            fn rows<T>(
                conn: &Connection,
                sql: &str,
                map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
            ) -> StoreResult<Vec<T>> {
                let mut stmt = conn.prepare(sql).map_err(err)?;
                let out = stmt
                    .query_map([], map)
                    .map_err(err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                Ok(out)
            }
            let uint = |v: i64| u64::try_from(v).unwrap_or(0);
            let mut clients = Vec::new();
            for (data, last_used) in rows(conn, "SELECT data, last_used FROM clients", |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })? {
                let mut c: Client = from_json(&data)?;
                c.last_used_at = uint(last_used);
                clients.push(c);
            }
            let json_rows = |sql: &str| rows(conn, sql, |r| r.get::<_, String>(0));
            let consents = json_rows("SELECT data FROM consents")?
                .iter()
                .map(|d| from_json(d))
                .collect::<StoreResult<_>>()?;
            let grants = json_rows("SELECT data FROM grants")?
                .iter()
                .map(|d| from_json(d))
                .collect::<StoreResult<_>>()?;
            let refresh = rows(conn, "SELECT hash, data FROM refresh", |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .into_iter()
            .map(|(h, d)| Ok((h, from_json(&d)?)))
            .collect::<StoreResult<_>>()?;
            let triple = |sql: &str| -> StoreResult<Vec<(String, String, u64)>> {
                Ok(rows(conn, sql, |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .into_iter()
                .map(|(a, b, n)| (a, b, uint(n)))
                .collect())
            };
            Ok(super::Snapshot {
                clients,
                consents,
                grants,
                refresh,
                grant_tokens: triple("SELECT grant_id, jti, exp FROM grant_tokens")?,
                revoked: rows(conn, "SELECT jti, exp FROM revoked_jti", |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?
                .into_iter()
                .map(|(j, n)| (j, uint(n)))
                .collect(),
                used_codes: triple("SELECT hash, grant_id, until FROM used_codes")?,
                sessions: triple("SELECT hash, sub, expires_at FROM sessions")?,
            })
        })
    }

    fn insert_session(&self, hash: &str, sub: &str, expires_at: u64) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO sessions (hash, sub, expires_at) VALUES (?1, ?2, ?3)",
                params![hash, sub, int(expires_at)],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn session(&self, hash: &str, now: u64) -> StoreResult<Option<String>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT sub FROM sessions WHERE hash = ?1 AND expires_at > ?2")
                .map_err(err)?
                .query_row(params![hash, int(now)], |r| r.get(0))
                .optional()
                .map_err(err)
        })
    }

    fn end_session(&self, hash: &str) -> StoreResult<()> {
        self.tx(|tx| {
            tx.execute("DELETE FROM sessions WHERE hash = ?1", [hash])
                .map(|_| ())
                .map_err(err)
        })
    }

    fn end_sessions_of(&self, sub: &str) -> StoreResult<usize> {
        self.tx(|tx| {
            tx.execute("DELETE FROM sessions WHERE sub = ?1", [sub])
                .map_err(err)
        })
    }

    fn put_identity(&self, identity: Identity) -> StoreResult<()> {
        let scopes = scopes_to_column(identity.scopes.as_deref())?;
        self.tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO identities
                 (sub, provider, email, name, scopes, upstream, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    identity.sub,
                    identity.provider,
                    identity.email,
                    identity.name,
                    scopes,
                    identity.upstream,
                    int(identity.updated_at)
                ],
            )
            .map(|_| ())
            .map_err(err)
        })
    }

    fn identity(&self, sub: &str) -> StoreResult<Option<Identity>> {
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            i64,
        );
        let row: Option<Row> = self.read(|conn| {
            conn.query_row(
                "SELECT sub, provider, email, name, scopes, upstream, updated_at
                 FROM identities WHERE sub = ?1",
                [sub],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(err)
        })?;
        row.map(
            |(sub, provider, email, name, scopes, upstream, updated_at)| {
                Ok(Identity {
                    sub,
                    provider,
                    email,
                    name,
                    scopes: scopes_from_column(scopes.as_deref())?,
                    upstream,
                    updated_at: u64::try_from(updated_at).unwrap_or(0),
                })
            },
        )
        .transpose()
    }

    fn swap_upstream(&self, sub: &str, old: &[u8], new: Vec<u8>, now: u64) -> StoreResult<bool> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE identities SET upstream = ?3, updated_at = ?4
                 WHERE sub = ?1 AND upstream = ?2",
                params![sub, old, new, int(now)],
            )
            .map(|n| n > 0)
            .map_err(err)
        })
    }

    fn drop_upstream(&self, sub: &str) -> StoreResult<bool> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE identities SET upstream = NULL WHERE sub = ?1 AND upstream IS NOT NULL",
                [sub],
            )
            .map(|n| n > 0)
            .map_err(err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn database_errors_say_what_failed() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
        ] {
            assert!(
                matches!(err(failure(code)), StoreError::Conflict(_)),
                "{code}"
            );
        }
        for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
            assert!(
                matches!(err(failure(code)), StoreError::Corrupt(_)),
                "{code}"
            );
        }
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_CONSTRAINT_NOTNULL,
        ] {
            assert!(
                matches!(err(failure(code)), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        assert!(matches!(
            err(rusqlite::Error::InvalidColumnType(
                0,
                "data".into(),
                rusqlite::types::Type::Integer
            )),
            StoreError::Corrupt(_)
        ));
    }
}
