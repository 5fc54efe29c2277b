//! Signing people in at the organisation's identity provider (`[[identity_providers]]`).
//!
//! The gateway stays the authorization server MCP clients talk to; a person proves who they
//! are at an OpenID Connect provider ([`oidc`]) or GitHub ([`github`]) before the consent
//! page, the provider's rules ([`rules`]) decide whether they may come in and what they may
//! grant, and the provider's tokens for them are kept sealed in the store ([`vault`]) for
//! an upstream MCP server that calls the provider's APIs as them. MCP clients never see
//! those tokens.
//!
//! A provider sends the browser back to `<public_url>/login/callback`; that is the redirect
//! URI to register there.

pub mod github;
pub mod oidc;
pub mod rules;
pub mod vault;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, IdentityProviderConfig, ProviderKind};

/// The path a provider sends the browser back to, under the public URL.
pub const CALLBACK_PATH: &str = crate::web::routes::LOGIN_CALLBACK;

/// Largest answer read from a provider.
const MAX_ANSWER: usize = 1024 * 1024;

/// A person as a provider vouched for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The provider's id in the config.
    pub provider: String,
    /// Who vouched: the OIDC issuer, or GitHub's web address.
    pub issuer: String,
    /// The provider's stable id for the person (`sub`, GitHub's numeric user id).
    pub subject: String,
    /// A verified email; an unverified one is never kept.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Groups (OIDC claim), or GitHub organisations and `org/team`s.
    pub groups: Vec<String>,
}

impl Person {
    /// The gateway's subject for the person: stable across email changes and provider ids.
    pub fn sub(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

/// What a provider gave the gateway to act as the person.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTokens {
    /// The provider's access token.
    pub access_token: String,
    /// Its refresh token, if it issues them.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When the access token expires (unix seconds); `None`: it does not say.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a sign-in at a provider failed. The text is safe to show and log: it never carries a
/// code, a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The provider did not answer, or not in time, or not with a success.
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    /// The provider refused (an OAuth error it returned).
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// The provider's answer did not verify (ID token, issuer, nonce, shape).
    #[error("the identity provider's answer did not verify: {0}")]
    Invalid(String),
}

/// A token endpoint's answer (RFC 6749 §5.1, §5.2; OIDC adds `id_token`).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    id_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenAnswer {
    /// The tokens, or the provider's error.
    fn tokens(&self, now: u64) -> Result<UpstreamTokens, SignInError> {
        if let Some(e) = &self.error {
            let d = self.error_description.as_deref().unwrap_or_default();
            return Err(SignInError::Refused(format!("{e} {d}").trim().to_string()));
        }
        let access_token = self
            .access_token
            .clone()
            .ok_or_else(|| SignInError::Invalid("the token answer has no access_token".into()))?;
        Ok(UpstreamTokens {
            access_token,
            refresh_token: self.refresh_token.clone(),
            expires_at: self.expires_in.map(|s| now.saturating_add(s)),
        })
    }
}

/// Read a JSON answer of at most [`MAX_ANSWER`] bytes; `ok_statuses` says which statuses
/// carry a body worth reading (a token endpoint's 400 carries its error).
async fn read_json<T: serde::de::DeserializeOwned>(
    res: reqwest::Response,
    what: &str,
    error_bodies: bool,
) -> Result<T, SignInError> {
    let status = res.status();
    if !(status.is_success() || (error_bodies && status.is_client_error())) {
        return Err(SignInError::Unreachable(format!(
            "{what} answered {status}"
        )));
    }
    let bytes = res
        .bytes()
        .await
        .map_err(|e| SignInError::Unreachable(format!("{what}: {e}")))?;
    if bytes.len() > MAX_ANSWER {
        return Err(SignInError::Invalid(format!("{what}: answer too large")));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        SignInError::Invalid(format!("{what} did not answer with the expected JSON: {e}"))
    })
}

fn unreachable(what: &str) -> impl Fn(reqwest::Error) -> SignInError + '_ {
    move |e| {
        // reqwest's error names the URL, which for these requests carries no secret.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why.push_str(": ");
            why.push_str(&cause.to_string());
            source = cause.source();
        }
        SignInError::Unreachable(format!("{what}: {why}"))
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic authentication.
fn basic_auth(client_id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", enc(client_id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The protocol half of a provider.
enum Protocol {
    Oidc(oidc::Oidc),
    Github(github::GitHub),
}

/// One configured provider, ready to send people to and verify them from.
pub struct Provider {
    /// Its configuration.
    pub config: IdentityProviderConfig,
    /// The button's label.
    pub label: String,
    protocol: Protocol,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.config.id())
            .finish_non_exhaustive()
    }
}

/// The client secret, from the environment or a file; never from the config itself.
fn client_secret(p: &IdentityProviderConfig) -> Result<String, ConfigError> {
    let bad = |message: String| ConfigError::Invalid {
        key: "identity_providers",
        message: format!("provider `{}`: {message}", p.id()),
    };
    let secret = match (&p.client_secret_env, &p.client_secret_file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            bad(format!(
                "the environment variable {var} (client_secret_env) is not set"
            ))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            bad(format!(
                "cannot read client_secret_file {}: {e}",
                path.display()
            ))
        })?,
        (None, None) => return Err(bad("no client secret".into())),
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        return Err(bad("the client secret is empty".into()));
    }
    Ok(secret)
}

impl Provider {
    /// A provider from its config; `redirect_uri` is `<public_url>/login/callback`.
    pub fn new(config: IdentityProviderConfig, redirect_uri: &str) -> Result<Self, ConfigError> {
        let secret = client_secret(&config)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcp-oauth-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Invalid {
                key: "identity_providers",
                message: e.to_string(),
            })?;
        let client = Client {
            http,
            client_id: config.client_id.clone(),
            secret,
            redirect_uri: redirect_uri.to_string(),
        };
        let (protocol, label) = match config.kind {
            ProviderKind::Oidc => {
                let issuer = config.issuer.clone().unwrap_or_default();
                let label = url::Url::parse(&issuer)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .unwrap_or_else(|| issuer.clone());
                (Protocol::Oidc(oidc::Oidc::new(client, &config)), label)
            }
            ProviderKind::Github => (
                Protocol::Github(github::GitHub::new(client, &config)),
                "GitHub".to_string(),
            ),
        };
        Ok(Self {
            label: config.name.clone().unwrap_or(label),
            config,
            protocol,
        })
    }

    /// The provider's id.
    pub fn id(&self) -> &str {
        self.config.id()
    }

    /// Where to send the browser: the provider's authorization endpoint with our request.
    /// `challenge` is the S256 PKCE challenge of the verifier kept for [`Self::finish`].
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, SignInError> {
        match &self.protocol {
            Protocol::Oidc(p) => p.authorization_url(state, nonce, challenge).await,
            Protocol::Github(p) => Ok(p.authorization_url(state, challenge)),
        }
    }

    /// Check the issuer a provider named in its authorization response (RFC 9207).
    pub async fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), SignInError> {
        match &self.protocol {
            Protocol::Oidc(p) => p.check_response_issuer(iss).await,
            Protocol::Github(_) => Ok(()),
        }
    }

    /// Redeem the code the provider sent back and find out who the person is.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<(Person, UpstreamTokens), SignInError> {
        let (mut person, tokens) = match &self.protocol {
            Protocol::Oidc(p) => p.finish(code, verifier, nonce, now).await?,
            Protocol::Github(p) => p.finish(code, verifier, now).await?,
        };
        person.provider = self.id().to_string();
        Ok((person, tokens))
    }

    /// New provider tokens from a refresh token.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        now: u64,
    ) -> Result<UpstreamTokens, SignInError> {
        match &self.protocol {
            Protocol::Oidc(p) => p.refresh(refresh_token, now).await,
            Protocol::Github(p) => p.refresh(refresh_token, now).await,
        }
    }
}

/// How the gateway talks to a provider's endpoints as its client.
struct Client {
    http: reqwest::Client,
    client_id: String,
    secret: String,
    redirect_uri: String,
}

impl Client {
    /// POST a token request; `basic` sends the credentials as HTTP Basic, otherwise in the
    /// form (`client_secret_post`).
    async fn token(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: bool,
        now: u64,
    ) -> Result<(UpstreamTokens, Option<String>), SignInError> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if basic {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                basic_auth(&self.client_id, &self.secret),
            );
        } else {
            fields.push(("client_id", &self.client_id));
            fields.push(("client_secret", &self.secret));
        }
        let res = req
            .form(&fields)
            .send()
            .await
            .map_err(unreachable("the token endpoint"))?;
        let answer: TokenAnswer = read_json(res, "the token endpoint", true).await?;
        let tokens = answer.tokens(now)?;
        Ok((tokens, answer.id_token))
    }
}

/// The configured providers.
#[derive(Debug, Default)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

impl Providers {
    /// The providers of the config, their secrets read now (a missing one stops the start).
    pub fn from_config(
        configs: &[IdentityProviderConfig],
        issuer: &str,
    ) -> Result<Self, ConfigError> {
        let redirect_uri = format!("{issuer}{CALLBACK_PATH}");
        let list = configs
            .iter()
            .map(|c| Provider::new(c.clone(), &redirect_uri).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { list })
    }

    /// The provider `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Provider>> {
        self.list.iter().find(|p| p.id() == id).cloned()
    }

    /// Every provider, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.list.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(
            basic_auth("a b", "p:w"),
            format!("Basic {}", {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode("a+b:p%3Aw")
            })
        );
    }

    #[test]
    fn a_person_is_their_issuer_and_subject() {
        let p = Person {
            provider: "corp".into(),
            issuer: "https://idp.example".into(),
            subject: "248289761001".into(),
            email: Some("a@example.com".into()),
            name: None,
            groups: vec![],
        };
        assert_eq!(p.sub(), "https://idp.example#248289761001");
    }

    #[test]
    fn token_debug_shows_no_token() {
        let t = UpstreamTokens {
            access_token: "secret-at".into(),
            refresh_token: Some("secret-rt".into()),
            expires_at: Some(5),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
