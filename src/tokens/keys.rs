//! Signing keys: generated on first start with aws-lc-rs, kept in the data dir as PKCS#8 PEM
//! (mode 0600), published as JWKs whose `kid` is the RFC 7638 thumbprint.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::config::SigningAlg;

/// File holding the current private key.
pub const KEY_FILE: &str = "signing-key.pem";
/// File holding the current key's `kid`, for operators and tests.
pub const KID_FILE: &str = "signing-key.kid";

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("signing key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but does not hold a key for the configured algorithm.
    #[error("signing key file {path} does not hold an {alg:?} key: {source}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// The configured algorithm.
        alg: SigningAlg,
        /// What the PEM parser or the JWK conversion said.
        source: jsonwebtoken::errors::Error,
    },
    /// Key generation failed.
    #[error("could not generate a signing key")]
    Generate,
}

/// The private key that signs access tokens, with its public half as a JWK.
pub struct SigningKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JWS algorithm.
    pub alg: Algorithm,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public key, with `kid`, `alg` and `use` set.
    pub jwk: Jwk,
    /// Public halves of retired keys that may still have signed live tokens: published in
    /// the JWKS until those tokens have expired.
    pub retired: Vec<Jwk>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Load the key from `dir`, or generate and store one if there is none.
    pub fn load_or_create(dir: &Path, alg: SigningAlg) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let pem = generate_pem(alg)?;
                write_private(&path, pem.as_bytes()).map_err(io)?;
                pem.into_bytes()
            }
            Err(e) => return Err(io(e)),
        };
        let key = Self::from_pem(&path, &pem, alg)?;
        // Rewritten only when it changed: the ring is re-read every minute.
        let kid_file = dir.join(KID_FILE);
        let kid_line = format!("{}\n", key.kid);
        if std::fs::read_to_string(&kid_file).ok().as_deref() != Some(kid_line.as_str()) {
            write_private(&kid_file, kid_line.as_bytes()).map_err(io)?;
        }
        Ok(key)
    }

    /// A fresh key that lives only in memory; for tests.
    pub fn generate(alg: SigningAlg) -> Result<Self, KeyError> {
        let pem = generate_pem(alg)?;
        // No file: the path would only be named by `Unusable`, which `Generate` replaces.
        Self::from_pem(Path::new(""), pem.as_bytes(), alg).map_err(|_| KeyError::Generate)
    }

    /// The key in `pem` (read from `path`, which the error names) for `configured`.
    fn from_pem(path: &Path, pem: &[u8], configured: SigningAlg) -> Result<Self, KeyError> {
        let unusable = |source| KeyError::Unusable {
            path: path.to_path_buf(),
            alg: configured,
            source,
        };
        let (encoding, alg) = match configured {
            SigningAlg::ES256 => (EncodingKey::from_ec_pem(pem), Algorithm::ES256),
            SigningAlg::RS256 => (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
        };
        let encoding = encoding.map_err(unusable)?;
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(unusable)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(unusable)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            kid,
            alg,
            encoding,
            jwk,
            retired: Vec::new(),
        })
    }

    /// The JWKS document that publishes this key.
    pub fn jwks(&self) -> JwkSet {
        let mut keys = vec![self.jwk.clone()];
        keys.extend(self.retired.iter().cloned());
        JwkSet { keys }
    }

    /// Load the current key and the retired keys still within `keep` seconds of their
    /// retirement (the access-token lifetime plus leeway); older retired keys are deleted.
    pub fn load_ring(dir: &Path, alg: SigningAlg, now: u64, keep: u64) -> Result<Self, KeyError> {
        let mut key = Self::load_or_create(dir, alg)?;
        let retired_dir = dir.join(RETIRED_DIR);
        let Ok(entries) = std::fs::read_dir(&retired_dir) else {
            return Ok(key);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            let retired_at = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            if now >= retired_at.saturating_add(keep) {
                // Every token it signed has expired: withdraw it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Ok(pem) = std::fs::read(&path) else {
                continue;
            };
            for candidate in [SigningAlg::ES256, SigningAlg::RS256] {
                if let Ok(old) = Self::from_pem(&path, &pem, candidate) {
                    key.retired.push(old.jwk);
                    break;
                }
            }
        }
        Ok(key)
    }

    /// Retire the current key (it stays published for `keep` seconds, see
    /// [`Self::load_ring`]) and make a new one. Returns the new key's kid. Running gateways
    /// pick the new key up within a minute ([`KeyRing::maintain`]).
    pub fn rotate(dir: &Path, alg: SigningAlg, now: u64) -> Result<String, KeyError> {
        let current = Self::load_or_create(dir, alg)?;
        let retired_dir = dir.join(RETIRED_DIR);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        std::fs::create_dir_all(&retired_dir).map_err(io(&retired_dir))?;
        let target = retired_dir.join(format!("{}.pem", current.kid));
        std::fs::rename(dir.join(KEY_FILE), &target).map_err(io(&target))?;
        // The file's modification time records when it was retired.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now);
        std::fs::File::options()
            .write(true)
            .open(&target)
            .and_then(|f| f.set_modified(when))
            .map_err(io(&target))?;
        let new = Self::load_or_create(dir, alg)?;
        // And the new key's records when it was made, for the rotation interval.
        let key_file = dir.join(KEY_FILE);
        std::fs::File::options()
            .write(true)
            .open(&key_file)
            .and_then(|f| f.set_modified(when))
            .map_err(io(&key_file))?;
        Ok(new.kid)
    }
}

/// Folder (in the data dir) of retired keys.
pub const RETIRED_DIR: &str = "retired-keys";

/// The keys a running gateway signs with and publishes: the current key and the retired
/// ones still published. Kept in the data dir, re-read by [`KeyRing::maintain`] so a
/// `keys rotate` run beside a live gateway takes effect without a restart.
pub struct KeyRing {
    current: std::sync::RwLock<std::sync::Arc<SigningKey>>,
    source: Option<RingSource>,
}

struct RingSource {
    dir: PathBuf,
    alg: SigningAlg,
    /// How long a retired key stays published: token lifetime plus leeway.
    keep: u64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.current().kid)
            .finish_non_exhaustive()
    }
}

impl From<SigningKey> for KeyRing {
    /// A ring of one key that never changes (tests, in-memory setups).
    fn from(key: SigningKey) -> Self {
        Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(key)),
            source: None,
        }
    }
}

impl KeyRing {
    /// The ring kept in `dir` (see [`SigningKey::load_ring`]).
    pub fn open(dir: &Path, alg: SigningAlg, now: u64, keep: u64) -> Result<Self, KeyError> {
        let key = SigningKey::load_ring(dir, alg, now, keep)?;
        Ok(Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(key)),
            source: Some(RingSource {
                dir: dir.to_path_buf(),
                alg,
                keep,
            }),
        })
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> std::sync::Arc<SigningKey> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The published key set.
    pub fn jwks(&self) -> JwkSet {
        self.current().jwks()
    }

    /// Rotate when the current key is `interval` seconds old (0: never), then re-read the
    /// ring from the data dir: a rotation made by the CLI is picked up and retired keys
    /// whose tokens have all expired are withdrawn. Returns the new current kid when it
    /// changed (rotated here or by the CLI). A ring without a data dir never changes.
    pub fn maintain(&self, now: u64, interval: u64) -> Result<Option<String>, KeyError> {
        let Some(src) = &self.source else {
            return Ok(None);
        };
        let created = std::fs::metadata(src.dir.join(KEY_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_secs());
        if interval > 0 && now >= created.saturating_add(interval) {
            SigningKey::rotate(&src.dir, src.alg, now)?;
        }
        let fresh = SigningKey::load_ring(&src.dir, src.alg, now, src.keep)?;
        let current = self.current();
        let new_kid = (current.kid != fresh.kid).then(|| fresh.kid.clone());
        if new_kid.is_some() || current.retired.len() != fresh.retired.len() {
            match self.current.write() {
                Ok(mut k) => *k = std::sync::Arc::new(fresh),
                Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(fresh),
            }
        }
        Ok(new_kid)
    }
}

fn generate_pem(alg: SigningAlg) -> Result<String, KeyError> {
    let der: Vec<u8> = match alg {
        SigningAlg::ES256 => {
            let rng = SystemRandom::new();
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?
                .as_ref()
                .to_vec()
        }
        SigningAlg::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| KeyError::Generate)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                pair.as_der().map_err(|_| KeyError::Generate)?;
            der.as_ref().to_vec()
        }
    };
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("mog-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = SigningKey::load_or_create(&dir, SigningAlg::ES256).unwrap();
        let second = SigningKey::load_or_create(&dir, SigningAlg::ES256).unwrap();
        assert_eq!(first.kid, second.kid);
        let kid_file = std::fs::read_to_string(dir.join(KID_FILE)).unwrap();
        assert_eq!(kid_file.trim(), first.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "private key must not be readable by others"
            );
        }
        // The same file is not an RS256 key: a clear error, not a silent new key.
        let err = SigningKey::load_or_create(&dir, SigningAlg::RS256).unwrap_err();
        assert!(matches!(err, KeyError::Unusable { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotation_keeps_the_old_key_published_until_its_tokens_expired() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKey::load_or_create(dir.path(), SigningAlg::ES256).unwrap();
        let now = 1_800_000_000;
        let new_kid = SigningKey::rotate(dir.path(), SigningAlg::ES256, now).unwrap();
        assert_ne!(new_kid, first.kid);
        let ring = SigningKey::load_ring(dir.path(), SigningAlg::ES256, now + 100, 3600).unwrap();
        assert_eq!(ring.kid, new_kid, "new tokens are signed with the new key");
        let kids: Vec<_> = ring
            .jwks()
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, [new_kid.clone(), first.kid.clone()]);
        let later = SigningKey::load_ring(dir.path(), SigningAlg::ES256, now + 3600, 3600).unwrap();
        assert_eq!(
            later.jwks().keys.len(),
            1,
            "withdrawn once its tokens have expired"
        );
        assert!(
            !dir.path()
                .join(RETIRED_DIR)
                .join(format!("{}.pem", first.kid))
                .exists()
        );
    }

    #[test]
    fn a_running_ring_picks_up_a_rotation_made_by_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let ring = KeyRing::open(dir.path(), SigningAlg::ES256, now, 3600).unwrap();
        let first = ring.current().kid.clone();
        let kid_file = dir.path().join(KID_FILE);
        let marked = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&kid_file)
            .unwrap()
            .set_modified(marked)
            .unwrap();
        assert_eq!(ring.maintain(now, 0).unwrap(), None, "nothing changed");
        let mtime = std::fs::metadata(&kid_file).unwrap().modified().unwrap();
        assert_eq!(mtime, marked, "an unchanged ring writes nothing");
        let new_kid = SigningKey::rotate(dir.path(), SigningAlg::ES256, now).unwrap();
        assert_eq!(ring.maintain(now + 1, 0).unwrap(), Some(new_kid.clone()));
        assert_eq!(ring.current().kid, new_kid);
        assert_eq!(ring.jwks().keys.len(), 2);
        assert_ne!(first, new_kid);
        // A ring of one fixed key never changes.
        let fixed = KeyRing::from(SigningKey::generate(SigningAlg::ES256).unwrap());
        assert_eq!(fixed.maintain(now + 10_000_000, 1).unwrap(), None);
    }

    #[test]
    fn jwk_carries_kid_use_and_alg() {
        let key = SigningKey::generate(SigningAlg::ES256).unwrap();
        let json = serde_json::to_value(key.jwks()).unwrap();
        let jwk = &json["keys"][0];
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid.as_str());
        assert!(
            jwk.get("d").is_none(),
            "the private part must never be published"
        );
    }

    #[test]
    fn rs256_keys_work() {
        let key = SigningKey::generate(SigningAlg::RS256).unwrap();
        let json = serde_json::to_value(key.jwks()).unwrap();
        assert_eq!(json["keys"][0]["kty"], "RSA");
        assert!(json["keys"][0].get("d").is_none());
    }
}
