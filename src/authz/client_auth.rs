//! Client authentication at the token, revocation and introspection endpoints
//! (RFC 6749 §2.3.1): `client_secret_basic`, `client_secret_post`, or only a `client_id`
//! for public clients. Secrets are compared in constant time against their stored hash.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::OAuthError;
use super::params::Params;
use super::state::AuthzState;
use crate::secret::{ct_eq, sha256_b64};
use crate::store::{Client, StoreResult};

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

impl Presented {
    /// The client id presented, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Id(id) | Self::Basic { id, .. } | Self::Post { id, .. } => Some(id),
            Self::Nothing => None,
        }
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

/// Authenticate: a confidential client must prove its secret by the method it registered,
/// a public client must not claim one. `lookup` finds a client by id.
pub fn authenticate(
    lookup: impl FnOnce(&str) -> StoreResult<Option<Client>>,
    presented: Presented,
) -> Result<Client, OAuthError> {
    let (id, secret, method) = match presented {
        Presented::Nothing => return Err(invalid("client authentication is required", false)),
        Presented::Id(id) => (id, None, "none"),
        Presented::Basic { id, secret } => (id, Some(secret), "client_secret_basic"),
        Presented::Post { id, secret } => (id, Some(secret), "client_secret_post"),
    };
    let basic = method == "client_secret_basic";
    let client = lookup(&id)
        .map_err(OAuthError::server)?
        .ok_or_else(|| invalid("unknown client or wrong secret", basic))?;
    let secret_ok = match (&client.secret_hash, &secret) {
        (None, None) => !client.is_confidential(),
        (Some(hash), Some(secret)) => ct_eq(&sha256_b64(secret), hash),
        _ => false,
    };
    if !secret_ok {
        return Err(match (client.is_confidential(), secret.is_some()) {
            (true, false) => invalid("this client must authenticate with its secret", basic),
            _ => invalid("unknown client or wrong secret", basic),
        });
    }
    if client.token_endpoint_auth_method != method {
        return Err(invalid(
            &format!(
                "this client authenticates with {}",
                client.token_endpoint_auth_method
            ),
            basic,
        ));
    }
    Ok(client)
}

/// Look the presented client up (pinned, registered or metadata document) and
/// authenticate it.
pub async fn authenticated_client(
    state: &AuthzState,
    presented: Presented,
) -> Result<Client, OAuthError> {
    let found = match presented.id() {
        Some(id) => state.lookup_client(id, state.clock.now()).await?,
        None => None,
    };
    authenticate(|_| Ok(found), presented)
}

/// The preamble of the endpoints a client hands a token to (RFC 7009 revocation, RFC 7662
/// introspection): a form body with a `token`, from a client authenticated as at the token
/// endpoint. Returns the client and the token.
pub async fn client_and_token(
    state: &AuthzState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Client, String), OAuthError> {
    let params = super::params::form_params(headers, body)?;
    let token = params.require("token")?.to_string();
    let client = authenticated_client(state, presented(headers, &params)?).await?;
    Ok((client, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
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
        s.insert_client(Client {
            client_id: "form".into(),
            token_endpoint_auth_method: "client_secret_post".into(),
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
        let s = store();
        authenticate(|id| s.client(id), presented(h, &p)?)
    }

    #[test]
    fn basic_and_post_secrets_authenticate_confidential_clients() {
        assert_eq!(auth(&basic("svc", "s3cret"), "").unwrap().client_id, "svc");
        let form = "client_id=form&client_secret=s3cret";
        assert_eq!(auth(&HeaderMap::new(), form).unwrap().client_id, "form");
        // Each by the method it registered.
        let e = auth(&HeaderMap::new(), "client_id=svc&client_secret=s3cret").unwrap_err();
        assert_eq!(e.error_code(), "invalid_client");
        let e = auth(&basic("form", "s3cret"), "").unwrap_err();
        assert_eq!(e.status().as_u16(), 401);
    }

    #[test]
    fn wrong_or_missing_secrets_are_invalid_client() {
        let e = auth(&basic("svc", "nope"), "").unwrap_err();
        assert_eq!(
            (e.error_code(), e.status().as_u16()),
            ("invalid_client", 401)
        );
        let e = auth(&HeaderMap::new(), "client_id=form&client_secret=nope").unwrap_err();
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
