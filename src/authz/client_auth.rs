//! Client authentication at the token, revocation and introspection endpoints
//! (RFC 6749 §2.3.1): `client_secret_basic`, `client_secret_post`, or only a `client_id`
//! for public clients. Secrets are compared in constant time against their stored hash.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::OAuthError;
use super::params::Params;
use crate::secret::{ct_eq, sha256_b64};
use crate::store::{Client, Store};

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// Only a `client_id` (public client).
    Id(String),
    /// HTTP Basic.
    Basic {
        /// Client id.
        id: String,
        /// Secret.
        secret: String,
    },
    /// `client_id` and `client_secret` in the body.
    Post {
        /// Client id.
        id: String,
        /// Secret.
        secret: String,
    },
    /// Nothing.
    Nothing,
}

fn invalid(message: &str, basic: bool) -> OAuthError {
    OAuthError::InvalidClient {
        message: message.into(),
        basic,
    }
}

/// Read the client's credentials; using two methods at once is refused (§2.3).
pub fn presented(headers: &HeaderMap, params: &Params) -> Result<Presented, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| invalid("malformed Authorization header", true))?;
            let Some((scheme, encoded)) = value.split_once(' ') else {
                return Err(invalid("malformed Authorization header", true));
            };
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(invalid(
                    "only HTTP Basic client authentication is supported",
                    true,
                ));
            }
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| invalid("malformed Basic credentials", true))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| invalid("malformed Basic credentials", true))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before encoding.
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((dec(id), dec(secret)))
        }
    };
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method, not two".into(),
        )),
        (Some((id, _)), Some(body), None) if body != id => Err(invalid(
            "client_id in the body differs from the authenticated client",
            true,
        )),
        (Some((id, secret)), _, None) => Ok(Presented::Basic { id, secret }),
        (None, Some(id), Some(secret)) => Ok(Presented::Post {
            id: id.into(),
            secret: secret.into(),
        }),
        (None, Some(id), None) => Ok(Presented::Id(id.into())),
        (None, None, _) => Ok(Presented::Nothing),
    }
}

/// Authenticate: a confidential client must prove its secret, a public client must not
/// claim one.
pub fn authenticate(store: &dyn Store, presented: Presented) -> Result<Client, OAuthError> {
    let (id, secret, basic) = match presented {
        Presented::Nothing => return Err(invalid("client authentication is required", false)),
        Presented::Id(id) => (id, None, false),
        Presented::Basic { id, secret } => (id, Some(secret), true),
        Presented::Post { id, secret } => (id, Some(secret), false),
    };
    let client = store
        .client(&id)
        .map_err(OAuthError::server)?
        .ok_or_else(|| invalid("unknown client or wrong secret", basic))?;
    match (&client.secret_hash, secret) {
        (None, None) if !client.is_confidential() => Ok(client),
        (Some(hash), Some(secret)) if ct_eq(&sha256_b64(&secret), hash) => Ok(client),
        (Some(_), None) => Err(invalid(
            "this client must authenticate with its secret",
            basic,
        )),
        _ => Err(invalid("unknown client or wrong secret", basic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::InMemoryStore;
    use axum::http::HeaderValue;

    fn store() -> InMemoryStore {
        let s = InMemoryStore::new();
        s.insert_client(Client {
            client_id: "pub".into(),
            token_endpoint_auth_method: "none".into(),
            ..Client::default()
        })
        .unwrap();
        s.insert_client(Client {
            client_id: "svc".into(),
            token_endpoint_auth_method: "client_secret_basic".into(),
            secret_hash: Some(sha256_b64("s3cret")),
            ..Client::default()
        })
        .unwrap();
        s
    }

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    fn auth(h: &HeaderMap, body: &str) -> Result<Client, OAuthError> {
        let p = Params::parse(body.as_bytes()).unwrap();
        authenticate(&store(), presented(h, &p)?)
    }

    #[test]
    fn basic_and_post_secrets_authenticate_confidential_clients() {
        assert_eq!(auth(&basic("svc", "s3cret"), "").unwrap().client_id, "svc");
        assert_eq!(
            auth(&HeaderMap::new(), "client_id=svc&client_secret=s3cret")
                .unwrap()
                .client_id,
            "svc"
        );
    }

    #[test]
    fn wrong_or_missing_secrets_are_invalid_client() {
        let e = auth(&basic("svc", "nope"), "").unwrap_err();
        assert_eq!(
            (e.error_code(), e.status().as_u16()),
            ("invalid_client", 401)
        );
        let e = auth(&HeaderMap::new(), "client_id=svc&client_secret=nope").unwrap_err();
        assert_eq!(
            (e.error_code(), e.status().as_u16()),
            ("invalid_client", 400)
        );
        let e = auth(&HeaderMap::new(), "client_id=svc").unwrap_err();
        assert_eq!(e.error_code(), "invalid_client");
        let e = auth(&HeaderMap::new(), "client_id=pub&client_secret=x").unwrap_err();
        assert_eq!(
            e.error_code(),
            "invalid_client",
            "a public client has no secret to present"
        );
        let e = auth(&basic("nobody", "x"), "").unwrap_err();
        assert_eq!(e.status().as_u16(), 401);
    }

    #[test]
    fn public_clients_present_only_their_id() {
        assert_eq!(
            auth(&HeaderMap::new(), "client_id=pub").unwrap().client_id,
            "pub"
        );
        assert_eq!(
            auth(&HeaderMap::new(), "").unwrap_err().error_code(),
            "invalid_client"
        );
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let e = auth(
            &basic("svc", "s3cret"),
            "client_id=svc&client_secret=s3cret",
        )
        .unwrap_err();
        assert_eq!(e.error_code(), "invalid_request");
        let e = auth(&basic("svc", "s3cret"), "client_id=pub").unwrap_err();
        assert_eq!(e.error_code(), "invalid_client");
    }
}
