//! Signing keys: generated on first start with aws-lc-rs, published as JWKs whose `kid` is
//! the RFC 7638 thumbprint. One machine keeps them in the data dir as PKCS#8 PEM (mode
//! 0600). A fleet on a shared store keeps them in the store, sealed with AES-256-GCM under
//! the key-encryption key every replica is given ([`KeyEncryptionKey`]): one replica makes
//! each key (the store adds a key only on top of the newest one it was shown), and a new
//! key is published [`ANNOUNCE_AHEAD`] seconds before it signs, so every replica has it in
//! its JWKS before a token it signed can reach them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::config::SigningAlg;
use crate::store::{SealedKey, Store, StoreError};

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
    /// The shared store could not be read or written.
    #[error("signing keys: {0}")]
    Store(#[from] StoreError),
    /// The key-encryption key is missing or malformed.
    #[error("key-encryption key: {0}")]
    KeyEncryption(String),
    /// A stored key does not open with the key-encryption key given.
    #[error(
        "signing key {kid} in the store does not open with this key-encryption key \
         (every replica needs the same MCP_GATEWAY_KEY_ENCRYPTION_KEY)"
    )]
    Sealed {
        /// The key.
        kid: String,
    },
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
    /// Public halves of the other keys published: retired keys that may still have signed
    /// live tokens (until those tokens have expired), and a shared store's next key.
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

/// The data dir's own random secret, from which [`KeyRing::local_secret`] derives the keys
/// that seal what the gateway keeps for people (their identity providers' tokens).
pub const LOCAL_SECRET_FILE: &str = "gateway-secret.key";

/// The data dir's secret: read, or made (32 random bytes, mode 0600) when there is none.
fn dir_secret(dir: &Path) -> Result<[u8; 32], KeyError> {
    use base64::Engine as _;
    let path = dir.join(LOCAL_SECRET_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let engine = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(&path) {
        Ok(text) => engine
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| {
                KeyError::KeyEncryption(format!("{} must hold 32 bytes in base64", path.display()))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = [0u8; 32];
            aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut fresh)
                .map_err(|_| KeyError::Generate)?;
            std::fs::create_dir_all(dir).map_err(io)?;
            write_private(&path, format!("{}\n", engine.encode(fresh)).as_bytes()).map_err(io)?;
            Ok(fresh)
        }
        Err(e) => Err(io(e)),
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

enum RingSource {
    /// Files in the data dir (one machine).
    Dir {
        dir: PathBuf,
        alg: SigningAlg,
        /// How long a retired key stays published: token lifetime plus leeway.
        keep: u64,
    },
    /// A store the fleet shares.
    Shared(Box<SharedKeys>),
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
            source: Some(RingSource::Dir {
                dir: dir.to_path_buf(),
                alg,
                keep,
            }),
        })
    }

    /// The ring a fleet keeps in `store`, making the first key if there is none.
    pub fn open_shared(keys: SharedKeys, now: u64) -> Result<Self, KeyError> {
        let key = keys.ring(now, 0, false)?;
        Ok(Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(key)),
            source: Some(RingSource::Shared(Box::new(keys))),
        })
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> std::sync::Arc<SigningKey> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// 32 bytes every replica of a fleet derives alike for `purpose` (HMAC-SHA-256 under
    /// the key-encryption key), so what one replica signs for a browser another accepts;
    /// `None` outside a fleet.
    pub fn fleet_secret(&self, purpose: &str) -> Option<[u8; 32]> {
        let Some(RingSource::Shared(keys)) = &self.source else {
            return None;
        };
        let tag = aws_lc_rs::hmac::sign(&keys.kek.derive, purpose.as_bytes());
        tag.as_ref().try_into().ok()
    }

    /// A 32-byte secret for `purpose` that every process serving this gateway's data
    /// derives alike: from the fleet's key-encryption key on a shared store, from a random
    /// secret kept in the data dir ([`LOCAL_SECRET_FILE`], made on first use) on one
    /// machine, and from a random one per process for a ring without a data dir.
    pub fn local_secret(&self, purpose: &str) -> Result<[u8; 32], KeyError> {
        if let Some(secret) = self.fleet_secret(purpose) {
            return Ok(secret);
        }
        let master = match &self.source {
            Some(RingSource::Dir { dir, .. }) => dir_secret(dir)?,
            _ => {
                static PROCESS: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
                if let Some(m) = PROCESS.get() {
                    *m
                } else {
                    let mut fresh = [0u8; 32];
                    aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut fresh)
                        .map_err(|_| KeyError::Generate)?;
                    *PROCESS.get_or_init(|| fresh)
                }
            }
        };
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &master);
        let tag = aws_lc_rs::hmac::sign(&key, purpose.as_bytes());
        tag.as_ref().try_into().map_err(|_| KeyError::Generate)
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
        let fresh = match &self.source {
            None => return Ok(None),
            Some(RingSource::Dir { dir, alg, keep }) => {
                let created = std::fs::metadata(dir.join(KEY_FILE))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(now, |d| d.as_secs());
                if interval > 0 && now >= created.saturating_add(interval) {
                    SigningKey::rotate(dir, *alg, now)?;
                }
                SigningKey::load_ring(dir, *alg, now, *keep)?
            }
            Some(RingSource::Shared(keys)) => keys.ring(now, interval, false)?,
        };
        let current = self.current();
        let new_kid = (current.kid != fresh.kid).then(|| fresh.kid.clone());
        let kids = |k: &SigningKey| -> Vec<Option<String>> {
            k.retired.iter().map(|j| j.common.key_id.clone()).collect()
        };
        if new_kid.is_some() || kids(&current) != kids(&fresh) {
            match self.current.write() {
                Ok(mut k) => *k = std::sync::Arc::new(fresh),
                Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(fresh),
            }
        }
        Ok(new_kid)
    }
}

/// Seconds a shared store's new key is published before it signs: longer than the rounds
/// in which replicas re-read the ring (every minute).
pub const ANNOUNCE_AHEAD: u64 = 120;

/// The key that seals signing keys in a shared store: AES-256-GCM, 32 bytes given in
/// base64. The sealed form is a fresh 96-bit nonce and the ciphertext with its tag; the
/// key's `kid` is the additional data, so a sealed key cannot be moved to another row.
pub struct KeyEncryptionKey {
    aead: aws_lc_rs::aead::LessSafeKey,
    /// For keys the fleet derives from it ([`KeyRing::fleet_secret`]).
    derive: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(..)")
    }
}

const NONCE_LEN: usize = aws_lc_rs::aead::NONCE_LEN;

impl KeyEncryptionKey {
    /// The key from its base64 form (`openssl rand -base64 32`).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        use base64::Engine as _;
        let bad = || {
            KeyError::KeyEncryption(
                "must be 32 random bytes in base64 (openssl rand -base64 32)".into(),
            )
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| bad())?;
        if bytes.len() != 32 {
            return Err(bad());
        }
        let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &bytes)
            .map_err(|_| bad())?;
        Ok(Self {
            aead: aws_lc_rs::aead::LessSafeKey::new(key),
            derive: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// A key from its 32 bytes (one [`KeyRing::local_secret`] gave).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes)
            .map_err(|_| KeyError::Generate)?;
        Ok(Self {
            aead: aws_lc_rs::aead::LessSafeKey::new(key),
            derive: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, bytes),
        })
    }

    /// Seal `plain` for the record `kid` (the additional data: the sealed bytes open only
    /// for the same `kid`).
    pub fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        use aws_lc_rs::rand::SecureRandom as _;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Generate)?;
        let mut out = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut out,
            )
            .map_err(|_| KeyError::Generate)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    /// Open what [`Self::seal`] sealed for `kid`.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        use aws_lc_rs::aead::{Aad, Nonce};
        let wrong = || KeyError::Sealed { kid: kid.into() };
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut body = body.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

/// The signing keys a fleet keeps in its shared store.
pub struct SharedKeys {
    /// The store.
    pub store: std::sync::Arc<dyn Store>,
    /// What seals them.
    pub kek: KeyEncryptionKey,
    /// The algorithm new keys use.
    pub alg: SigningAlg,
    /// How long a retired key stays published: token lifetime plus leeway.
    pub keep: u64,
}

fn alg_name(alg: SigningAlg) -> &'static str {
    match alg {
        SigningAlg::ES256 => "ES256",
        SigningAlg::RS256 => "RS256",
    }
}

impl SharedKeys {
    /// Make a new key now (the CLI's `keys rotate`): it signs from [`ANNOUNCE_AHEAD`]
    /// seconds on. Returns its kid.
    pub fn rotate(&self, now: u64) -> Result<String, KeyError> {
        self.ring(now, 0, true)?;
        let keys = self.store.signing_keys()?;
        keys.last().map(|k| k.kid.clone()).ok_or(KeyError::Generate)
    }

    /// Move one machine's keys (the data dir `dir`: the current key and the retired ones
    /// still published) into this store, which must hold none yet, keeping which key
    /// signs and when each was retired. Returns how many were moved.
    pub fn import_dir(&self, dir: &Path, now: u64) -> Result<usize, KeyError> {
        if !self.store.signing_keys()?.is_empty() {
            return Err(StoreError::Conflict("the store holds signing keys already".into()).into());
        }
        let mut retired: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join(RETIRED_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("pem"))
            .filter_map(|p| Some((modified_secs(&p)?, p)))
            .filter(|(at, _)| now < at.saturating_add(self.keep))
            .collect();
        retired.sort();
        let current = dir.join(KEY_FILE);
        let mut newest: Option<String> = None;
        let mut active_from = 0;
        let mut chain: Vec<(PathBuf, u64)> = Vec::new();
        for (retired_at, path) in retired {
            chain.push((path, active_from));
            active_from = retired_at;
        }
        chain.push((current, active_from));
        for (path, active_from) in &chain {
            let pem = std::fs::read(path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            let (key, alg) = [SigningAlg::ES256, SigningAlg::RS256]
                .into_iter()
                .find_map(|alg| Some((SigningKey::from_pem(path, &pem, alg).ok()?, alg)))
                .ok_or_else(|| KeyError::Io {
                    path: path.clone(),
                    source: std::io::Error::other("not an ES256 or RS256 private key"),
                })?;
            let sealed = SealedKey {
                sealed: self.kek.seal(&key.kid, &pem)?,
                kid: key.kid.clone(),
                alg: alg_name(alg).into(),
                // The current key's file time is when it was made (rotation sets it).
                created_at: if *path == dir.join(KEY_FILE) {
                    modified_secs(path).unwrap_or(now)
                } else {
                    (*active_from).min(now)
                },
                active_from: *active_from,
            };
            if !self.store.add_signing_key(sealed, newest.as_deref())? {
                return Err(StoreError::Conflict(
                    "another process added signing keys meanwhile".into(),
                )
                .into());
            }
            newest = Some(key.kid);
        }
        Ok(chain.len())
    }

    /// The ring at `now`, after adding a key when there is none, when the newest is
    /// `interval` seconds old (0: never) or of another algorithm, or when `force`d.
    fn ring(&self, now: u64, interval: u64, mut force: bool) -> Result<SigningKey, KeyError> {
        for _ in 0..3 {
            let keys = self.store.signing_keys()?;
            let newest = keys.last();
            let active_from = match newest {
                None => Some(now),
                Some(k)
                    if force
                        || k.alg != alg_name(self.alg)
                        || (interval > 0 && now >= k.created_at.saturating_add(interval)) =>
                {
                    Some(now.saturating_add(ANNOUNCE_AHEAD))
                }
                Some(_) => None,
            };
            let Some(active_from) = active_from else {
                return self.assemble(&keys, now);
            };
            let pem = generate_pem(self.alg)?;
            let key = SigningKey::from_pem(Path::new(""), pem.as_bytes(), self.alg)
                .map_err(|_| KeyError::Generate)?;
            let sealed = SealedKey {
                sealed: self.kek.seal(&key.kid, pem.as_bytes())?,
                kid: key.kid,
                alg: alg_name(self.alg).into(),
                created_at: now,
                active_from,
            };
            // Lost to another replica's key, or added: read again either way.
            self.store
                .add_signing_key(sealed, newest.map(|k| k.kid.as_str()))?;
            force = false;
        }
        let keys = self.store.signing_keys()?;
        self.assemble(&keys, now)
    }

    /// The key that signs at `now` (the newest active one), publishing the next one and
    /// the retired ones whose tokens may still live; older ones are deleted.
    fn assemble(&self, keys: &[SealedKey], now: u64) -> Result<SigningKey, KeyError> {
        let signing = keys.iter().rposition(|k| k.active_from <= now).unwrap_or(0);
        let open = |k: &SealedKey| -> Result<SigningKey, KeyError> {
            let pem = self.kek.open(&k.kid, &k.sealed)?;
            let alg = match k.alg.as_str() {
                "RS256" => SigningAlg::RS256,
                _ => SigningAlg::ES256,
            };
            SigningKey::from_pem(Path::new(&k.kid), &pem, alg)
        };
        let Some(first) = keys.get(signing) else {
            return Err(KeyError::Generate);
        };
        let mut key = open(first)?;
        let mut stale = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let retired_at = keys.get(i + 1).map_or(u64::MAX, |next| next.active_from);
            if i == signing {
                continue;
            }
            if i < signing && now >= retired_at.saturating_add(self.keep) {
                stale.push(k.kid.clone());
                continue;
            }
            key.retired.push(open(k)?.jwk);
        }
        if !stale.is_empty()
            && let Err(e) = self.store.forget_signing_keys(&stale)
        {
            tracing::warn!(error = %e, "deleting expired signing keys failed");
        }
        Ok(key)
    }
}

fn modified_secs(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
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

    fn kek(byte: u8) -> KeyEncryptionKey {
        use base64::Engine as _;
        KeyEncryptionKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32]))
            .unwrap()
    }

    fn shared(store: &std::sync::Arc<dyn Store>, byte: u8) -> SharedKeys {
        SharedKeys {
            store: store.clone(),
            kek: kek(byte),
            alg: SigningAlg::ES256,
            keep: 3600,
        }
    }

    /// Replicas on one store sign with one key; a rotation is published by every replica
    /// at its next round, signs only once announced long enough, and the old key stays
    /// published until its tokens have expired.
    #[test]
    fn a_fleet_shares_one_ring_and_announces_a_new_key_before_it_signs() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::memory::InMemoryStore::new());
        let now = 1_800_000_000;
        let a = KeyRing::open_shared(shared(&store, 7), now).unwrap();
        let b = KeyRing::open_shared(shared(&store, 7), now).unwrap();
        let first = a.current().kid.clone();
        assert_eq!(
            b.current().kid,
            first,
            "the second replica adopts the first key"
        );
        let sealed = store.signing_keys().unwrap();
        assert_eq!(sealed.len(), 1);
        let pem = String::from_utf8_lossy(&sealed[0].sealed);
        assert!(!pem.contains("PRIVATE KEY"), "sealed, not in the clear");

        let new = shared(&store, 7).rotate(now + 10).unwrap();
        assert_ne!(new, first);
        assert_eq!(
            a.maintain(now + 60, 0).unwrap(),
            None,
            "announced, not signing"
        );
        assert_eq!(a.current().kid, first);
        let published = |r: &KeyRing| -> Vec<String> {
            r.jwks()
                .keys
                .iter()
                .filter_map(|k| k.common.key_id.clone())
                .collect()
        };
        assert!(published(&a).contains(&new));
        let active = now + 10 + ANNOUNCE_AHEAD;
        assert_eq!(b.maintain(active, 0).unwrap(), Some(new.clone()));
        assert_eq!(b.current().kid, new);
        assert!(published(&b).contains(&first), "old tokens still verify");
        b.maintain(active + 3600, 0).unwrap();
        assert_eq!(published(&b), [new], "withdrawn once its tokens expired");
        assert_eq!(store.signing_keys().unwrap().len(), 1, "and deleted");
    }

    #[test]
    fn a_shared_ring_rotates_once_when_due() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::memory::InMemoryStore::new());
        let now = 1_800_000_000;
        let a = KeyRing::open_shared(shared(&store, 7), now).unwrap();
        let b = KeyRing::open_shared(shared(&store, 7), now).unwrap();
        a.maintain(now + 100, 100).unwrap();
        b.maintain(now + 100, 100).unwrap();
        assert_eq!(
            store.signing_keys().unwrap().len(),
            2,
            "one rotation for the fleet"
        );
    }

    #[test]
    fn replicas_derive_the_same_fleet_secrets() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::memory::InMemoryStore::new());
        let a = KeyRing::open_shared(shared(&store, 7), 100).unwrap();
        let b = KeyRing::open_shared(shared(&store, 7), 100).unwrap();
        let csrf = a.fleet_secret("csrf").unwrap();
        assert_eq!(b.fleet_secret("csrf"), Some(csrf));
        assert_ne!(a.fleet_secret("other"), Some(csrf));
        let alone = KeyRing::from(SigningKey::generate(SigningAlg::ES256).unwrap());
        assert_eq!(alone.fleet_secret("csrf"), None);
    }

    #[test]
    fn a_wrong_or_malformed_key_encryption_key_is_refused() {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(crate::store::memory::InMemoryStore::new());
        KeyRing::open_shared(shared(&store, 7), 100).unwrap();
        let err = KeyRing::open_shared(shared(&store, 8), 100).unwrap_err();
        assert!(matches!(err, KeyError::Sealed { .. }), "{err}");
        for bad in ["", "not base64!", "c2hvcnQ="] {
            assert!(matches!(
                KeyEncryptionKey::from_base64(bad),
                Err(KeyError::KeyEncryption(_))
            ));
        }
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
