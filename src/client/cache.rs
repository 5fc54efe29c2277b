//! The token cache: one JSON file per (issuer, client) under `$XDG_CACHE_HOME` or
//! `~/.cache/mcp-oauth-gateway/`, holding the authorization server metadata, the client
//! registration and the tokens per MCP server. Credentials are keyed by issuer and never
//! reused with another one. The directory is 0700 and every file 0600,
//! written whole and renamed into place.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClientError;
use super::discovery::AsMetadata;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

/// Where the client identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSource {
    /// `--client-id`.
    Configured,
    /// A client ID metadata document URL (`--client-metadata-url`).
    MetadataDocument,
    /// Dynamic client registration (RFC 7591).
    Registered,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: AuthMethod,
    pub source: ClientSource,
    /// The redirect URI it was registered with (its port is tried first next time).
    pub redirect_uri: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Seconds since the epoch, when the server said.
    pub expires_at: Option<u64>,
    /// The scope granted (or requested, when the server did not say).
    pub scope: Option<String>,
    /// The `resource` the tokens were requested for.
    pub resource: String,
    pub obtained_at: u64,
}

/// One cache file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    pub issuer: String,
    pub metadata: AsMetadata,
    pub client: StoredClient,
    /// Tokens per canonical MCP server URL.
    #[serde(default)]
    pub tokens: BTreeMap<String, StoredTokens>,
}

/// The cache directory.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// `dir`, or the default: `$XDG_CACHE_HOME/mcp-oauth-gateway`, else
    /// `$HOME/.cache/mcp-oauth-gateway`.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, ClientError> {
        let dir = match dir {
            Some(d) => d,
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .ok_or_else(|| {
                        ClientError::Usage(
                            "no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir"
                                .into(),
                        )
                    })?;
                base.join("mcp-oauth-gateway")
            }
        };
        Ok(Self { dir })
    }

    /// The file for (issuer, client key).
    pub fn path_for(&self, issuer: &str, client_key: &str) -> PathBuf {
        let name = crate::secret::sha256_b64(&format!("{issuer}\n{client_key}"));
        self.dir.join(format!("{name}.json"))
    }

    /// Read a cache file; `None` if it is missing or unreadable (a stale or corrupt cache
    /// only costs a new authorization).
    pub fn load(&self, path: &Path) -> Option<CacheEntry> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The newest cache entry holding tokens for `server` whose client `accept`s.
    pub fn find(
        &self,
        server: &str,
        accept: impl Fn(&StoredClient) -> bool,
    ) -> Option<(PathBuf, CacheEntry)> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| self.load(&p).map(|e| (p, e)))
            .filter(|(_, e)| accept(&e.client))
            .filter_map(|(p, e)| {
                let at = e.tokens.get(server)?.obtained_at;
                Some((at, p, e))
            })
            .max_by_key(|(at, _, _)| *at)
            .map(|(_, p, e)| (p, e))
    }

    /// Write `entry` to `path` with mode 0600 (directory 0700), atomically.
    pub fn save(&self, path: &Path, entry: &CacheEntry) -> Result<(), ClientError> {
        let io = |e: std::io::Error| ClientError::Cache(format!("{}: {e}", self.dir.display()));
        create_private_dir(&self.dir).map_err(io)?;
        let text = serde_json::to_vec_pretty(entry)
            .map_err(|e| ClientError::Cache(format!("serializing the cache: {e}")))?;
        let tmp = path.with_extension(format!(
            "tmp{}",
            crate::secret::random_token(6).unwrap_or_default()
        ));
        let mut file = open_private(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Drop the tokens for `server` from every cache file but `keep` (after new tokens were
    /// stored there), so a lookup never finds stale ones first.
    pub fn forget_elsewhere(&self, server: &str, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path == keep || path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Some(mut entry) = self.load(&path)
                && entry.tokens.remove(server).is_some()
            {
                let _ = self.save(&path, &entry);
            }
        }
    }

    /// Drop the tokens for `server` from every cache file, removing files left with no
    /// tokens at all (their registration goes too: a later sign-in registers again);
    /// the number of files changed or removed.
    pub fn forget(&self, server: &str) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut changed = 0;
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(mut entry) = self.load(&path) else {
                continue;
            };
            if entry.tokens.remove(server).is_none() {
                continue;
            }
            let done = if entry.tokens.is_empty() {
                std::fs::remove_file(&path).is_ok()
            } else {
                self.save(&path, &entry).is_ok()
            };
            if done {
                changed += 1;
            } else {
                eprintln!("warning: could not update {}", path.display());
            }
        }
        changed
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(issuer: &str, server: &str, at: u64) -> CacheEntry {
        let mut tokens = BTreeMap::new();
        tokens.insert(
            server.to_string(),
            StoredTokens {
                access_token: "at".into(),
                refresh_token: None,
                expires_at: None,
                scope: None,
                resource: server.into(),
                obtained_at: at,
            },
        );
        CacheEntry {
            issuer: issuer.into(),
            metadata: AsMetadata::default(),
            client: StoredClient {
                client_id: "c".into(),
                client_secret: None,
                auth_method: AuthMethod::None,
                source: ClientSource::Registered,
                redirect_uri: None,
            },
            tokens,
        }
    }

    #[test]
    fn c3_files_are_private_and_keyed_by_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Some(dir.path().join("c"))).unwrap();
        let a = cache.path_for("https://a", "dcr");
        let b = cache.path_for("https://b", "dcr");
        assert_ne!(a, b);
        cache
            .save(&a, &entry("https://a", "http://s/mcp", 1))
            .unwrap();
        cache
            .save(&b, &entry("https://b", "http://s/mcp", 2))
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = std::fs::metadata(dir.path().join("c"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let (path, found) = cache.find("http://s/mcp", |_| true).unwrap();
        assert_eq!((path, found.issuer.as_str()), (b.clone(), "https://b"));
        cache.forget_elsewhere("http://s/mcp", &a);
        assert_eq!(cache.find("http://s/mcp", |_| true).unwrap().0, a);
        assert!(cache.find("http://other/mcp", |_| true).is_none());
    }

    #[test]
    fn forget_drops_the_server_and_files_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(Some(dir.path().to_path_buf())).unwrap();
        let a = cache.path_for("https://a", "dcr");
        let b = cache.path_for("https://b", "dcr");
        cache
            .save(&a, &entry("https://a", "http://s/mcp", 1))
            .unwrap();
        let mut two = entry("https://b", "http://s/mcp", 2);
        let other = entry("https://b", "http://t/mcp", 2).tokens;
        two.tokens.extend(other);
        cache.save(&b, &two).unwrap();
        assert_eq!(cache.forget("http://s/mcp"), 2);
        assert!(!a.exists(), "a file with no tokens left is removed");
        let kept = cache.load(&b).unwrap();
        assert_eq!(kept.tokens.keys().collect::<Vec<_>>(), ["http://t/mcp"]);
        assert!(cache.find("http://s/mcp", |_| true).is_none());
        assert_eq!(cache.forget("http://s/mcp"), 0);
    }
}
