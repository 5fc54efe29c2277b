//! PKCE with S256 only (RFC 7636; OAuth 2.1 §4.1.1).

use crate::secret::{ct_eq, sha256_b64};

/// Whether `s` has the form of a verifier (43-128 unreserved characters, RFC 7636 §4.1).
/// An S256 challenge (base64url of 32 bytes) is 43 characters of the same alphabet.
pub fn is_well_formed(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `verifier` answers the S256 `challenge`, compared in constant time.
pub fn verify_s256(verifier: &str, challenge: &str) -> bool {
    is_well_formed(verifier) && ct_eq(&sha256_b64(verifier), challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_an_independent_computation() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXFG6jEBk";
        assert!(verify_s256(
            verifier,
            "aR08vLrMr-Hy7JDIQ78iMyVuRP4ZwjqTrMzHmJL04PM"
        ));
        assert!(!verify_s256(
            verifier,
            "aR08vLrMr-Hy7JDIQ78iMyVuRP4ZwjqTrMzHmJL04PN"
        ));
    }

    #[test]
    fn verifier_shape() {
        assert!(!is_well_formed(&"a".repeat(42)));
        assert!(is_well_formed(&"a".repeat(43)));
        assert!(is_well_formed(&"a".repeat(128)));
        assert!(!is_well_formed(&"a".repeat(129)));
        assert!(!is_well_formed(&format!("{}+", "a".repeat(42))));
        // A plain-method "challenge" equal to the verifier never passes S256.
        let v = "a".repeat(43);
        assert!(!verify_s256(&v, &v));
    }
}
