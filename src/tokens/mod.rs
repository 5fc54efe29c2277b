//! Tokens: signing keys ([`keys`]), JWT access tokens ([`issue`]), the JWKS listener
//! ([`jwks`]) and verification against a cached JWKS ([`verify`]), whose fetch failures
//! are [`fetch::FetchError`].
//! RFC 7519 (JWT), RFC 7517 (JWK), RFC 8725 (JWT BCP), RFC 9068 (JWT access tokens).

pub mod fetch;
pub mod issue;
pub mod jwks;
pub mod keys;
pub mod sources;
pub mod verify;
