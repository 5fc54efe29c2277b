//! TLS on the public listener (rustls): `tls_cert` and `tls_key` name PEM files.
//!
//! Handshakes run in their own tasks, each bounded by a timeout, so a slow or silent client
//! never holds up the accept loop; finished connections are handed to the HTTP server
//! through a channel. ALPN offers `h2` and `http/1.1`. SIGHUP reloads the certificate and
//! key from their files ([`reload_on_hangup`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::ResolvesServerCert;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::proxy::listen::{Accepted, Sources, next_admitted};

/// How long a client may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    File {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the pair (say, the key does not match the certificate).
    #[error("TLS certificate and key: {0}")]
    Config(String),
}

/// The public listener's TLS: an acceptor whose certificate can be replaced while it
/// runs ([`Tls::reload`], on SIGHUP), for renewals without a restart. Handshakes in
/// progress and open connections keep the certificate they started with.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The certificate new handshakes get.
#[derive(Debug)]
struct CurrentCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|c| c.clone())
    }
}

impl Tls {
    /// Read the certificate chain and private key (PEM files) and build the acceptor.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certified = certified_key(cert, key)?;
        let current = Arc::new(CurrentCert(std::sync::RwLock::new(Arc::new(certified))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// The acceptor for [`accept`].
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Read the files again and serve what they hold from the next handshake on. A pair
    /// that cannot be used leaves the current one in place. Returns the new leaf
    /// certificate's SHA-256 fingerprint (hex), for the log.
    pub fn reload(&self) -> Result<String, TlsError> {
        let certified = certified_key(&self.cert, &self.key)?;
        let fingerprint = certified
            .cert
            .first()
            .map(|leaf| {
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref())
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .unwrap_or_default();
        let mut current = self
            .current
            .0
            .write()
            .map_err(|_| TlsError::Config("certificate lock poisoned".into()))?;
        *current = Arc::new(certified);
        Ok(fingerprint)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and the private key that matches it, from PEM files.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |what, path: &Path, message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "certificate",
            cert,
            "no CERTIFICATE block".into(),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("private key", key, e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(certified)
}

/// Until `stop`: on each SIGHUP, reload the certificate and key of `tls` (if the public
/// listener has TLS), logging what happened. The signal is taken over before this returns
/// (so a SIGHUP right after start never ends the process, with TLS or without); the
/// returned future does the reloading.
pub fn reload_on_hangup(
    tls: Option<Tls>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hangups) = hangups else {
                tracing::warn!("cannot listen for SIGHUP: certificate reloads are off");
                return;
            };
            loop {
                tokio::select! {
                    got = hangups.recv() => if got.is_none() { return },
                    () = stop.cancelled() => return,
                }
                match &tls {
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                    Some(tls) => match tls.reload() {
                        Ok(fingerprint) => tracing::info!(
                            cert = %tls.cert.display(),
                            sha256 = %fingerprint,
                            "TLS certificate reloaded"
                        ),
                        Err(e) => tracing::error!(
                            error = %e,
                            "TLS certificate reload failed; still serving the previous one"
                        ),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (tls, stop);
        }
    }
}

/// Accept on `tcp`, admit each connection by its source (over the cap it is closed before
/// any handshake), handshake with `acceptor`, and yield the connections whose handshake
/// completed. Stops accepting when `stop` is cancelled.
pub fn accept(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    sources: Arc<Sources>,
    stop: CancellationToken,
) -> mpsc::Receiver<Accepted<TlsStream<TcpStream>>> {
    let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let Some(Accepted {
                io: stream,
                peer,
                slot,
            }) = next_admitted(&tcp, &sources, &stop).await
            else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Accepted { io, peer, slot }).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ready
}
