//! The operator's page on the command line: `mcp-oauth-gateway admin clients|grants|revoke`,
//! on the store the configuration names (the SQLite database of the data dir, or the
//! PostgreSQL database), the gateway running or not.
//!
//! `clients` lists the clients pinned in the config and those registered, `grants` the live
//! grants, each as a table or (`--json`) an array of objects. `revoke` does what the page's
//! Revoke button does: a grant's refresh tokens stop working and its access tokens are
//! denied, the person's remembered approval and identity-provider tokens go; a client is
//! deleted (unless the config pins it) and all its grants revoked. It asks first, on a
//! terminal, naming what; without a terminal it needs `--yes`. A running gateway on the
//! same store refuses the revoked access tokens within about a second (it follows the
//! store's revocation log), and their refresh tokens at once.
//!
//! Exit codes: 0 done, 1 the operator said no, 2 an unknown id, a missing `--yes`, a store
//! that cannot be used.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, StoreKind};
use crate::idp::vault::forget_stored;
use crate::store::sqlite::DB_FILE;
use crate::store::{Client, Grant, Store, StoreError};

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// List the clients.
    Clients {
        /// As JSON.
        json: bool,
    },
    /// List the live grants.
    Grants {
        /// As JSON.
        json: bool,
    },
    /// Revoke a grant or a client.
    Revoke {
        /// Which.
        target: Target,
        /// Without asking.
        yes: bool,
    },
}

/// What `revoke` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A grant, by id.
    Grant(String),
    /// A client, by id.
    Client(String),
}

/// A client as `admin clients` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    /// Its id.
    pub client_id: String,
    /// Its name, if it gave one.
    pub client_name: Option<String>,
    /// How it authenticates at the token endpoint (`none` for a public client).
    pub auth_method: String,
    /// Whether the config pins it (`[[clients]]`).
    pub pinned: bool,
    /// When it registered (RFC 3339); none for a pinned client.
    pub created: Option<String>,
    /// When it last obtained a token (RFC 3339); none for a pinned client.
    pub last_used: Option<String>,
    /// How many live grants it holds.
    pub live_grants: usize,
}

/// A live grant as `admin grants` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRow {
    /// Its id (what `admin revoke --grant` takes).
    pub id: String,
    /// The person who approved it.
    pub person: String,
    /// The client's id.
    pub client_id: String,
    /// The client's name, if it gave one.
    pub client_name: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// When it was granted (RFC 3339), if recorded.
    pub created: Option<String>,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
}

/// Why a command did not do what it was asked.
#[derive(Debug)]
enum Failure {
    /// The operator answered no.
    Declined,
    /// Cannot be done as asked (an unknown id, no `--yes`): the message says why.
    Refused(String),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Whether the configured store is one these commands can work on: not the in-memory
/// store (a running gateway's own, out of reach), and for SQLite, a database that exists
/// (a wrong `--data-dir` must not make an empty one).
pub fn check_store(config: &Config) -> Result<(), String> {
    match config.store {
        StoreKind::Memory => Err(
            "store = \"memory\" keeps the state inside the running gateway; the admin commands \
             work on a SQLite data dir or a PostgreSQL database"
                .into(),
        ),
        StoreKind::Sqlite => {
            let db = config.data_dir.join(DB_FILE);
            if db.is_file() {
                Ok(())
            } else {
                Err(format!(
                    "no gateway database at {} (give the gateway's --data-dir or --config)",
                    db.display()
                ))
            }
        }
        StoreKind::Postgres => Ok(()),
    }
}

/// Run `action` on `store` (the one `config` names) at `now`: print what it says on
/// standard output, or why not on standard error, and the exit code.
pub fn run(store: &dyn Store, config: &Config, action: Action, now: u64) -> ExitCode {
    let result = match action {
        Action::Clients { json } => client_rows(store, config, now).and_then(|rows| {
            Ok(if json {
                to_json(&rows)?
            } else {
                clients_table(&rows)
            })
        }),
        Action::Grants { json } => grant_rows(store, config, now).and_then(|rows| {
            Ok(if json {
                to_json(&rows)?
            } else {
                grants_table(&rows)
            })
        }),
        Action::Revoke { target, yes } => revoke(store, config, &target, yes, now),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Declined) => {
            eprintln!("mcp-oauth-gateway: admin revoke: nothing revoked");
            ExitCode::FAILURE
        }
        Err(Failure::Refused(why)) => {
            eprintln!("mcp-oauth-gateway: admin: {why}");
            ExitCode::from(2)
        }
        Err(Failure::Store(e)) => {
            eprintln!("mcp-oauth-gateway: admin: the store failed: {e}");
            ExitCode::from(2)
        }
    }
}

fn to_json<T: Serialize>(rows: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(rows)
        .map_err(|e| Failure::Refused(format!("cannot write JSON: {e}")))
}

/// The clients the config pins, by id.
fn pinned(config: &Config) -> HashMap<String, Client> {
    config
        .clients
        .iter()
        .map(|c| (c.client_id.clone(), c.to_client(0)))
        .collect()
}

/// A client by id: pinned in the config, else registered.
fn client(
    store: &dyn Store,
    pinned: &HashMap<String, Client>,
    id: &str,
) -> Result<Option<Client>, StoreError> {
    match pinned.get(id) {
        Some(c) => Ok(Some(c.clone())),
        None => store.client(id),
    }
}

/// Every client, pinned ones first (by id), then the registered ones, as the page lists
/// them.
fn client_rows(store: &dyn Store, config: &Config, now: u64) -> Result<Vec<ClientRow>, Failure> {
    let mut per_client: HashMap<String, usize> = HashMap::new();
    for g in store.live_grants(now)? {
        *per_client.entry(g.client_id).or_default() += 1;
    }
    let mut clients: Vec<Client> = pinned(config).into_values().collect();
    clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    clients.extend(store.clients()?);
    Ok(clients
        .into_iter()
        .map(|c| ClientRow {
            live_grants: per_client.get(&c.client_id).copied().unwrap_or(0),
            created: (!c.pinned).then(|| super::rfc3339(c.created_at)).flatten(),
            last_used: (!c.pinned)
                .then(|| super::rfc3339(c.last_used_at))
                .flatten(),
            client_id: c.client_id,
            client_name: c.client_name,
            auth_method: c.token_endpoint_auth_method,
            pinned: c.pinned,
        })
        .collect())
}

/// Every live grant, by person, then oldest first.
fn grant_rows(store: &dyn Store, config: &Config, now: u64) -> Result<Vec<GrantRow>, Failure> {
    let pinned = pinned(config);
    let mut names: HashMap<String, Option<String>> = HashMap::new();
    let mut rows = Vec::new();
    for g in store.live_grants(now)? {
        let client_name = match names.get(&g.client_id) {
            Some(n) => n.clone(),
            None => {
                let n = client(store, &pinned, &g.client_id)?.and_then(|c| c.client_name);
                names.insert(g.client_id.clone(), n.clone());
                n
            }
        };
        rows.push(GrantRow {
            created: super::rfc3339(g.created_at),
            expires: super::rfc3339(g.expires_at),
            id: g.id,
            person: g.sub,
            client_id: g.client_id,
            client_name,
            scopes: g.scopes,
        });
    }
    Ok(rows)
}

/// Text for a terminal: control characters (a client chooses its own name) shown escaped,
/// so a name cannot move the cursor or recolour the screen.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A table with a header row, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                out.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(cell.chars().count()),
                ));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(&mut header.iter().copied())];
    out.extend(rows.iter().map(|r| line(&mut r.iter().map(String::as_str))));
    out.join("\n")
}

fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), printable)
}

fn clients_table(rows: &[ClientRow]) -> String {
    if rows.is_empty() {
        return "no clients".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                or_dash(c.client_name.as_deref()),
                printable(&c.client_id),
                printable(&c.auth_method),
                if c.pinned {
                    "config".into()
                } else {
                    or_dash(c.created.as_deref())
                },
                or_dash(c.last_used.as_deref()),
                c.live_grants.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "CLIENT ID",
            "AUTH",
            "CREATED",
            "LAST USED",
            "LIVE GRANTS",
        ],
        &cells,
    )
}

fn grants_table(rows: &[GrantRow]) -> String {
    if rows.is_empty() {
        return "no live grants".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|g| {
            vec![
                printable(&g.id),
                printable(&g.person),
                or_dash(g.client_name.as_deref()),
                printable(&g.client_id),
                printable(&g.scopes.join(" ")),
                or_dash(g.created.as_deref()),
                or_dash(g.expires.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "GRANT ID",
            "PERSON",
            "CLIENT",
            "CLIENT ID",
            "SCOPES",
            "CREATED",
            "EXPIRES",
        ],
        &cells,
    )
}

/// `"name" (id)`, or the id alone.
fn client_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("\"{}\" ({})", printable(n), printable(id)),
        None => printable(id),
    }
}

/// Go ahead with revoking `what` only if the operator says so: `--yes`, or "y" to
/// "Revoke `what`? [y/N]" on a terminal. Without a terminal and without `--yes`, refused.
fn confirm(what: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Refused(format!(
            "not revoking {what}: standard input is not a terminal to ask on; add --yes to \
             revoke without asking"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "Revoke {what}? [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return Err(Failure::Declined);
    }
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::Declined),
    }
}

/// `admin revoke`: what the page's Revoke buttons do, once confirmed.
fn revoke(
    store: &dyn Store,
    config: &Config,
    target: &Target,
    yes: bool,
    now: u64,
) -> Result<String, Failure> {
    let pinned = pinned(config);
    match target {
        Target::Grant(id) => {
            let Some(grant) = store.grant(id)? else {
                return Err(Failure::Refused(format!(
                    "no grant {} (`admin grants` lists the live ones)",
                    printable(id)
                )));
            };
            let name = client(store, &pinned, &grant.client_id)?.and_then(|c| c.client_name);
            let what = format!(
                "grant {} of {} to client {}, scopes {}",
                printable(&grant.id),
                printable(&grant.sub),
                client_label(&grant.client_id, name.as_deref()),
                printable(&grant.scopes.join(" ")),
            );
            if grant.revoked {
                return Ok(format!("{what}: already revoked, nothing to do"));
            }
            confirm(&what, yes)?;
            revoke_grant(store, &grant, now)?;
            Ok(format!(
                "revoked {what}; its refresh token is refused now, its access tokens within \
                 about a second by a running gateway"
            ))
        }
        Target::Client(id) => {
            let found = client(store, &pinned, id)?;
            let is_pinned = pinned.contains_key(id.as_str());
            let live: Vec<Grant> = store
                .live_grants(now)?
                .into_iter()
                .filter(|g| &g.client_id == id)
                .collect();
            if found.is_none() && live.is_empty() {
                return Err(Failure::Refused(format!(
                    "no client {}, and no live grants of it (`admin clients` lists them)",
                    printable(id)
                )));
            }
            let what = format!(
                "client {} and its {} live grant{}",
                client_label(id, found.as_ref().and_then(|c| c.client_name.as_deref())),
                live.len(),
                if live.len() == 1 { "" } else { "s" },
            );
            let stays = if is_pinned {
                " (the config pins it: it stays registered)"
            } else {
                " (its registration is deleted)"
            };
            confirm(&format!("{what}{stays}"), yes)?;
            let people: BTreeSet<&str> = live.iter().map(|g| g.sub.as_str()).collect();
            let revoked = store.revoke_client(id)?;
            for sub in people {
                forget_stored(store, sub, now);
            }
            let deleted = if revoked.deleted {
                "deleted its registration"
            } else if is_pinned {
                "kept its registration (the config pins it)"
            } else {
                "it had no registration left"
            };
            Ok(format!(
                "revoked client {}: {deleted}, revoked {} grant{}",
                client_label(id, found.as_ref().and_then(|c| c.client_name.as_deref())),
                revoked.grants,
                if revoked.grants == 1 { "" } else { "s" },
            ))
        }
    }
}

/// Revoke one grant as the page does: its tokens, the person's provider tokens and
/// browser sessions, and their remembered approval of the client (they are asked again).
fn revoke_grant(store: &dyn Store, grant: &Grant, now: u64) -> Result<(), StoreError> {
    store.revoke_grant(&grant.id)?;
    forget_stored(store, &grant.sub, now);
    store.forget_consent(&grant.sub, &grant.client_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::InMemoryStore;

    #[test]
    fn tables_pad_columns_and_escape_control_characters() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec![printable("e\u{1b}[31m"), "22".into()],
            ],
        );
        assert_eq!(t, "A            BB\nxyz          1\ne\\u{1b}[31m  22");
    }

    #[test]
    fn revoking_without_a_terminal_needs_yes_and_unknown_ids_are_refused() {
        let store = InMemoryStore::new();
        let config = Config::default();
        let r = revoke(&store, &config, &Target::Grant("nope".into()), true, 10);
        assert!(matches!(r, Err(Failure::Refused(m)) if m.contains("no grant nope")));
        let r = revoke(&store, &config, &Target::Client("nope".into()), true, 10);
        assert!(matches!(r, Err(Failure::Refused(m)) if m.contains("no client nope")));
    }
}
