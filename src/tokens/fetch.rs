//! Why an issuer's key set could not be fetched: shared by the key cache ([`super::verify`],
//! which logs it and keeps its cached keys) and the HTTP fetcher of an external issuer
//! ([`super::sources`], which discovers the `jwks_uri` and downloads the set). A leaf, so
//! both can name it without importing each other.
//!
//! Every variant carries the URL it is about (the issuer's metadata or JWKS address, never a
//! token or a secret), so a log line says which document failed and how.

/// Why the JWKS (or the metadata naming it) could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The issuer URL yields no well-known metadata URL to try (it does not parse as a URL).
    #[error("{issuer}: no discovery URL")]
    NoDiscoveryUrl {
        /// The configured issuer.
        issuer: String,
    },
    /// The request failed or its body could not be read: connection refused, timeout, reset.
    #[error("{url}: {source}")]
    Unreachable {
        /// The document asked for.
        url: String,
        /// What the HTTP client said.
        source: reqwest::Error,
    },
    /// The answer's status is not a success (redirects included: they are not followed).
    #[error("{url}: status {status}")]
    Status {
        /// The document asked for.
        url: String,
        /// The status received.
        status: reqwest::StatusCode,
    },
    /// The document is larger than the gateway accepts.
    #[error("{url}: document too large (more than {limit} bytes)")]
    TooLarge {
        /// The document asked for.
        url: String,
        /// The largest size accepted, in bytes.
        limit: usize,
    },
    /// The document is not JSON.
    #[error("{url}: {source}")]
    MalformedJson {
        /// The document asked for.
        url: String,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The document is JSON but not a JWK set (RFC 7517 §5).
    #[error("{url}: not a JWK set: {source}")]
    NotJwkSet {
        /// The JWKS URI.
        url: String,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The metadata names another issuer than the one configured (RFC 8414 §3.3): its keys
    /// must not be trusted for ours.
    #[error("{url} names issuer `{named}`, not `{expected}`")]
    IssuerMismatch {
        /// The metadata document.
        url: String,
        /// The issuer the metadata names (empty when it names none).
        named: String,
        /// The issuer configured.
        expected: String,
    },
    /// The metadata has no `jwks_uri`.
    #[error("{url} has no jwks_uri")]
    NoJwksUri {
        /// The metadata document.
        url: String,
    },
}
