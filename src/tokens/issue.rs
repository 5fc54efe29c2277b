//! Issuing JWT access tokens (RFC 9068 profile): `typ: at+jwt`, `kid`, and the claims
//! `iss sub aud exp iat nbf jti scope client_id`, `aud` being the resource (RFC 8707).

use jsonwebtoken::{Header, encode};
use serde::{Deserialize, Serialize};

use super::keys::SigningKey;

/// The claims of an access token this gateway issues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The issuer: the public URL.
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The resource the token is for.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Unique id; what revocation lists hold.
    pub jti: String,
    /// Granted scopes, space separated.
    pub scope: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The person's verified email, when they signed in through an identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Their display name, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Sign `claims` with `key`.
pub fn sign(
    key: &SigningKey,
    claims: &AccessClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    header.typ = Some("at+jwt".to_string());
    encode(&header, claims, &key.encoding)
}
