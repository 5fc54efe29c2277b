//! Static API keys beside OAuth during a migration (`[api_keys]`): a file of SHA-256
//! hashes, each with a name and scopes. With `deprecated = true` every key logs a warning
//! once a day, so operators can see who still has to move to OAuth.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::secret::sha256_b64;

/// One key as the keys file lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it; becomes the `sub`.
    pub name: String,
    /// base64url SHA-256 of the key, no padding.
    pub sha256: String,
    /// What it may do.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKey>,
}

/// The loaded keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<String, ApiKey>,
    deprecated: bool,
    warned_day: Mutex<HashMap<String, u64>>,
}

impl ApiKeys {
    /// Load the keys file.
    pub fn load(path: &Path, deprecated: bool) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            key: "api_keys.file",
            message: format!("{}: {message}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Ok(Self::new(file.keys, deprecated))
    }

    /// Keys from a list.
    pub fn new(keys: Vec<ApiKey>, deprecated: bool) -> Self {
        Self {
            by_hash: keys.into_iter().map(|k| (k.sha256.clone(), k)).collect(),
            deprecated,
            warned_day: Mutex::new(HashMap::new()),
        }
    }

    /// The key `presented` is, if any. Lookup is by hash, so the secret itself is never
    /// compared.
    pub fn find(&self, presented: &str, now: u64) -> Option<&ApiKey> {
        let key = self.by_hash.get(&sha256_b64(presented))?;
        if self.deprecated
            && let Ok(mut warned) = self.warned_day.lock()
        {
            let day = now / 86_400;
            if warned.insert(key.name.clone(), day) != Some(day) {
                tracing::warn!(key = %key.name, "API key used; API keys are deprecated here, move this client to OAuth");
            }
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_only() {
        let keys = ApiKeys::new(
            vec![ApiKey {
                name: "ci".into(),
                sha256: sha256_b64("k-1234567890"),
                scopes: vec!["mcp:read".into()],
            }],
            true,
        );
        assert_eq!(
            keys.find("k-1234567890", 0).map(|k| k.name.as_str()),
            Some("ci")
        );
        assert!(keys.find("k-123456789", 0).is_none());
        assert!(
            keys.find(&sha256_b64("k-1234567890"), 0).is_none(),
            "the hash is not the key"
        );
    }
}
