//! Whom the gateway trusts when it connects out over TLS (the database, upstream MCP
//! servers): the system's roots, or the CA certificates of one PEM file for a private CA.

use std::path::Path;
use std::sync::Arc;

/// A TLS client configuration that verifies servers against `ca_file` (PEM, one or more
/// certificates) when given, else against the system's roots. The error says which file
/// and why, for a start-up message.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let Some(path) = ca_file else {
        use rustls_platform_verifier::ConfigVerifierExt as _;
        return rustls::ClientConfig::with_platform_verifier().map_err(|e| e.to_string());
    };
    use rustls_pki_types::pem::PemObject as _;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| at(&e))? {
        roots.add(cert.map_err(|e| at(&e))?).map_err(|e| at(&e))?;
    }
    if roots.is_empty() {
        return Err(at(&"holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        assert!(
            client_config(Some(&missing))
                .unwrap_err()
                .contains("missing.pem")
        );
    }
}
