//! Random secrets, hashing for storage, constant-time comparison (aws-lc-rs), and
//! password hashes (argon2id).

use argon2::Argon2;
use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::{constant_time, digest, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A new random value of `bytes` bytes of entropy, base64url without padding.
///
/// Returns `None` only if the operating system's random source fails.
pub fn random_token(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(&buf))
}

/// SHA-256 of `value`, base64url without padding: how opaque secrets are stored, so a leaked
/// store does not leak usable tokens.
pub fn sha256_b64(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, value.as_bytes()))
}

/// Compare two secrets without leaking where they differ.
pub fn ct_eq(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Hash a password for the config file (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, password_hash::Error> {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes).map_err(|_| password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&bytes)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches an argon2 `hash` (false for anything unparsable).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Show a secret in logs as its first characters only.
pub fn redact(value: &str) -> String {
    let head: String = value.chars().take(4).collect();
    format!("{head}…[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_and_refuse() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn random_tokens_are_distinct_and_urlsafe() {
        let a = random_token(32).unwrap();
        let b = random_token(32).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn ct_eq_compares_contents() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }

    #[test]
    fn sha256_matches_known_vector() {
        // Expected value computed with Python hashlib, an independent implementation.
        assert_eq!(
            sha256_b64("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXFG6jEBk"),
            "aR08vLrMr-Hy7JDIQ78iMyVuRP4ZwjqTrMzHmJL04PM"
        );
    }

    #[test]
    fn redact_keeps_only_a_prefix() {
        assert_eq!(redact("secretvalue"), "secr…[redacted]");
    }
}
