//! Whom the gateway trusts when it connects out over TLS (the database, upstream MCP
//! servers): the system's roots, or the CA certificates of one PEM file for a private CA;
//! and, for a server that asks, which certificate the gateway shows.

use std::path::Path;
use std::sync::Arc;

/// A certificate chain and its private key (PEM files) to present to servers that ask.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The certificate, then any intermediates.
    pub cert: &'a Path,
    /// Its private key (PKCS#8, SEC1 or PKCS#1).
    pub key: &'a Path,
}

/// A TLS client configuration that verifies servers against `ca_file` (PEM, one or more
/// certificates) when given, else against the system's roots, and presents `identity`
/// when given. The error says which file and why, for a start-up message.
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<Identity<'_>>,
) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject as _;
    let at = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca_file {
        None => {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            builder
                .with_platform_verifier()
                .map_err(|e| e.to_string())?
        }
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| at(path, &e))?
            {
                roots
                    .add(cert.map_err(|e| at(path, &e))?)
                    .map_err(|e| at(path, &e))?;
            }
            if roots.is_empty() {
                return Err(at(path, &"holds no certificate"));
            }
            builder.with_root_certificates(roots)
        }
    };
    let Some(Identity { cert, key }) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(|e| at(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(cert, &e))?;
    if chain.is_empty() {
        return Err(at(cert, &"holds no certificate"));
    }
    let private = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| at(key, &e))?;
    builder
        .with_client_auth_cert(chain, private)
        .map_err(|e| at(cert, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty), None).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        assert!(
            client_config(Some(&missing), None)
                .unwrap_err()
                .contains("missing.pem")
        );
        let identity = Identity {
            cert: &empty,
            key: &missing,
        };
        assert!(
            client_config(None, Some(identity))
                .unwrap_err()
                .contains("ca.pem")
        );
    }
}
