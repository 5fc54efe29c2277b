//! An OpenID Connect provider: discovery (OIDC Discovery 1.0 §4), the authorization code
//! flow with PKCE, `state` and `nonce`, and the ID token checked as OIDC Core §3.1.3.7 asks:
//! signed by a key of the provider's JWKS with an algorithm its metadata offers (never
//! `none`, never a MAC), issuer, audience (and `azp` when there are several), expiry and
//! nonce. RFC 9207's `iss` is checked when the provider sends it, and required when its
//! metadata promises it.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Client, Person, SignInError, UpstreamTokens, read_json, unreachable};
use crate::config::IdentityProviderConfig;
use crate::secret::ct_eq;
use crate::tokens::fetch::FetchError;
use crate::tokens::verify::{JwksCache, VerifyError};

/// Seconds of clock difference tolerated on the ID token's times.
const LEEWAY: u64 = 60;

/// The parts of the provider's metadata the gateway uses.
#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

type SharedMetadata = Arc<OnceCell<Arc<Metadata>>>;

/// An OIDC provider.
pub struct Oidc {
    client: Arc<Client>,
    issuer: String,
    scopes: String,
    groups_claim: Option<String>,
    metadata: SharedMetadata,
    keys: JwksCache,
}

/// Read the metadata once it is needed; a failure is not kept, so the next sign-in retries.
async fn discover(
    client: &Client,
    issuer: &str,
    cell: &SharedMetadata,
) -> Result<Arc<Metadata>, SignInError> {
    cell.get_or_try_init(|| async {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let res = client
            .http
            .get(&url)
            .send()
            .await
            .map_err(unreachable("the provider's discovery document"))?;
        let md: Metadata = read_json(res, "the provider's discovery document", false).await?;
        if md.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(SignInError::Invalid(format!(
                "the discovery document names issuer `{}`, not `{issuer}`",
                md.issuer
            )));
        }
        Ok(Arc::new(md))
    })
    .await
    .cloned()
}

impl Oidc {
    pub(super) fn new(client: super::Client, config: &IdentityProviderConfig) -> Self {
        let client = Arc::new(client);
        let issuer = config.issuer.clone().unwrap_or_default();
        let metadata: SharedMetadata = Arc::new(OnceCell::new());
        let fetcher = {
            let (client, issuer, metadata) = (client.clone(), issuer.clone(), metadata.clone());
            Arc::new(move || {
                let (client, issuer, metadata) = (client.clone(), issuer.clone(), metadata.clone());
                Box::pin(async move {
                    let md = discover(&client, &issuer, &metadata).await.map_err(|_| {
                        FetchError::NoDiscoveryUrl {
                            issuer: issuer.clone(),
                        }
                    })?;
                    let unreachable = |source| FetchError::Unreachable {
                        url: md.jwks_uri.clone(),
                        source,
                    };
                    let res = client
                        .http
                        .get(&md.jwks_uri)
                        .send()
                        .await
                        .map_err(unreachable)?;
                    if !res.status().is_success() {
                        return Err(FetchError::Status {
                            url: md.jwks_uri.clone(),
                            status: res.status(),
                        });
                    }
                    let bytes = res.bytes().await.map_err(unreachable)?;
                    serde_json::from_slice(&bytes).map_err(|source| FetchError::NotJwkSet {
                        url: md.jwks_uri.clone(),
                        source,
                    })
                }) as crate::tokens::verify::JwksFuture
            })
        };
        let scopes = config
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()])
            .join(" ");
        Self {
            client,
            issuer,
            scopes,
            groups_claim: config.groups_claim.clone(),
            metadata,
            // Keys are re-read after 5 minutes, and at most every 10 s for an unknown kid.
            keys: JwksCache::new(fetcher, 300, 10),
        }
    }

    async fn metadata(&self) -> Result<Arc<Metadata>, SignInError> {
        discover(&self.client, &self.issuer, &self.metadata).await
    }

    pub(super) async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, SignInError> {
        let md = self.metadata().await?;
        let mut url = url::Url::parse(&md.authorization_endpoint)
            .map_err(|_| SignInError::Invalid("the authorization_endpoint is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.client_id)
            .append_pair("redirect_uri", &self.client.redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    pub(super) async fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInError> {
        let md = self.metadata().await?;
        match iss {
            Some(i) if i == md.issuer => Ok(()),
            Some(i) => Err(SignInError::Invalid(format!(
                "the authorization response names issuer `{i}`, not `{}` (RFC 9207)",
                md.issuer
            ))),
            None if md.authorization_response_iss_parameter_supported => Err(
                SignInError::Invalid("the authorization response names no issuer, though the provider says it always does (RFC 9207)".into()),
            ),
            None => Ok(()),
        }
    }

    fn basic(md: &Metadata) -> bool {
        // RFC 8414 §2: client_secret_basic when the provider does not say.
        md.token_endpoint_auth_methods_supported
            .as_ref()
            .is_none_or(|m| {
                m.iter().any(|x| x == "client_secret_basic")
                    || !m.iter().any(|x| x == "client_secret_post")
            })
    }

    pub(super) async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<(Person, UpstreamTokens), SignInError> {
        let md = self.metadata().await?;
        let (tokens, id_token) = self
            .client
            .token(
                &md.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.client.redirect_uri),
                    ("code_verifier", verifier),
                ],
                Self::basic(&md),
                now,
            )
            .await?;
        let id_token = id_token
            .ok_or_else(|| SignInError::Invalid("the token answer has no id_token".into()))?;
        let mut claims = self.verify_id_token(&md, &id_token, nonce, now).await?;
        let needs_userinfo = claims.get("email").is_none()
            || self
                .groups_claim
                .as_ref()
                .is_some_and(|g| claims.get(g).is_none());
        if needs_userinfo && let Some(endpoint) = &md.userinfo_endpoint {
            let res = self
                .client
                .http
                .get(endpoint)
                .bearer_auth(&tokens.access_token)
                .send()
                .await
                .map_err(unreachable("the userinfo endpoint"))?;
            let info: serde_json::Map<String, Value> =
                read_json(res, "the userinfo endpoint", false).await?;
            if info.get("sub") != claims.get("sub") {
                return Err(SignInError::Invalid(
                    "the userinfo answer is about someone else".into(),
                ));
            }
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        Ok((self.person(&claims, &md.issuer)?, tokens))
    }

    /// The person the verified claims describe.
    fn person(
        &self,
        claims: &serde_json::Map<String, Value>,
        issuer: &str,
    ) -> Result<Person, SignInError> {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
        let subject = text("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SignInError::Invalid("the ID token has no sub".into()))?;
        let verified = match claims.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        let groups = match self.groups_claim.as_ref().and_then(|g| claims.get(g)) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Person {
            provider: String::new(),
            issuer: issuer.to_string(),
            subject,
            email: text("email").filter(|_| verified),
            name: text("name").or_else(|| text("preferred_username")),
            groups,
        })
    }

    async fn verify_id_token(
        &self,
        md: &Metadata,
        token: &str,
        nonce: &str,
        now: u64,
    ) -> Result<serde_json::Map<String, Value>, SignInError> {
        let invalid = |m: &str| SignInError::Invalid(format!("ID token: {m}"));
        let header = decode_header(token).map_err(|_| invalid("not a signed JWT (or alg none)"))?;
        let name = format!("{:?}", header.alg);
        let offered = if md.id_token_signing_alg_values_supported.is_empty() {
            vec!["RS256".to_string()]
        } else {
            md.id_token_signing_alg_values_supported.clone()
        };
        if !offered.contains(&name)
            || matches!(
                header.alg,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            )
        {
            return Err(invalid(&format!(
                "algorithm {name} is not one the provider signs with"
            )));
        }
        let kid = header.kid.ok_or_else(|| invalid("no kid"))?;
        let (alg, key) = self.keys.key_for(&kid, now).await.map_err(|e| match e {
            VerifyError::KeysUnavailable => {
                SignInError::Unreachable("the provider's keys could not be fetched".into())
            }
            _ => invalid("signed by a key the provider does not publish"),
        })?;
        if alg != header.alg {
            return Err(invalid("the algorithm does not match the key"));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&md.issuer]);
        v.set_audience(&[&self.client.client_id]);
        v.leeway = LEEWAY;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<serde_json::Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::InvalidSignature => "the signature does not verify",
                ErrorKind::InvalidIssuer => "issued by someone else",
                ErrorKind::InvalidAudience => "issued for another client",
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not valid yet",
                _ => "malformed",
            })
        })?;
        let claims = data.claims;
        let ok_nonce = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| ct_eq(n, nonce));
        if !ok_nonce {
            return Err(invalid(
                "the nonce is not this sign-in's (a replayed token?)",
            ));
        }
        if let Some(Value::Array(aud)) = claims.get("aud")
            && aud.len() > 1
            && claims.get("azp").and_then(Value::as_str) != Some(self.client.client_id.as_str())
        {
            return Err(invalid("several audiences and azp is not this client"));
        }
        if claims
            .get("iat")
            .and_then(Value::as_u64)
            .is_some_and(|iat| iat > now.saturating_add(LEEWAY))
        {
            return Err(invalid("issued in the future"));
        }
        Ok(claims)
    }

    pub(super) async fn refresh(
        &self,
        refresh_token: &str,
        now: u64,
    ) -> Result<UpstreamTokens, SignInError> {
        let md = self.metadata().await?;
        let (tokens, _) = self
            .client
            .token(
                &md.token_endpoint,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
                Self::basic(&md),
                now,
            )
            .await?;
        Ok(tokens)
    }
}
