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
    #[error("signing key file {path} does not hold an {alg:?} key: {message}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// The configured algorithm.
        alg: SigningAlg,
        /// The parser's message.
        message: String,
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
        let key = Self::from_pem(&pem, alg).map_err(|message| KeyError::Unusable {
            path: path.clone(),
            alg,
            message,
        })?;
        write_private(&dir.join(KID_FILE), format!("{}\n", key.kid).as_bytes()).map_err(io)?;
        Ok(key)
    }

    /// A fresh key that lives only in memory; for tests.
    pub fn generate(alg: SigningAlg) -> Result<Self, KeyError> {
        let pem = generate_pem(alg)?;
        Self::from_pem(pem.as_bytes(), alg).map_err(|_| KeyError::Generate)
    }

    fn from_pem(pem: &[u8], alg: SigningAlg) -> Result<Self, String> {
        let (encoding, alg) = match alg {
            SigningAlg::ES256 => (EncodingKey::from_ec_pem(pem), Algorithm::ES256),
            SigningAlg::RS256 => (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
        };
        let encoding = encoding.map_err(|e| e.to_string())?;
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| e.to_string())?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            kid,
            alg,
            encoding,
            jwk,
        })
    }

    /// The JWKS document that publishes this key.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
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
