//! GitHub's OAuth apps, which speak OAuth 2.0 but not OpenID Connect: the person's identity
//! comes from the REST API (`/user`, `/user/emails` for a verified primary email, and,
//! when the rules need groups, `/user/orgs` and `/user/teams` as `org` and `org/team`).
//! The endpoints default to github.com and can point at GitHub Enterprise Server.
//!
//! GitHub's token endpoint answers errors with status 200 and an `error` field; PKCE is
//! sent (GitHub checks it when given). Its tokens do not expire unless the app opted into
//! expiring tokens, which come with a refresh token.

use serde::Deserialize;
use serde_json::Value;

use super::{Client, Person, SignInError, UpstreamTokens, read_json, rules, unreachable};
use crate::config::IdentityProviderConfig;

const AUTHORIZE_URL: &str = "https://github.com/login/oauth/authorize";
const TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
const API_URL: &str = "https://api.github.com";

/// A GitHub (or GitHub Enterprise) OAuth app.
pub struct GitHub {
    client: Client,
    authorize_url: String,
    token_url: String,
    api_url: String,
    /// Who vouches: the web origin of the authorization endpoint (`https://github.com`).
    issuer: String,
    scopes: String,
    wants_groups: bool,
}

#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

impl GitHub {
    pub(super) fn new(client: Client, config: &IdentityProviderConfig) -> Self {
        let authorize_url = config
            .authorize_url
            .clone()
            .unwrap_or_else(|| AUTHORIZE_URL.into());
        let issuer = url::Url::parse(&authorize_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| authorize_url.clone());
        Self {
            client,
            token_url: config.token_url.clone().unwrap_or_else(|| TOKEN_URL.into()),
            api_url: config
                .api_url
                .clone()
                .unwrap_or_else(|| API_URL.into())
                .trim_end_matches('/')
                .to_string(),
            authorize_url,
            issuer,
            scopes: config
                .scopes
                .clone()
                .unwrap_or_else(|| vec!["read:user".into(), "user:email".into(), "read:org".into()])
                .join(" "),
            wants_groups: rules::needs_groups(config),
        }
    }

    pub(super) fn authorization_url(&self, state: &str, challenge: &str) -> String {
        let mut url = match url::Url::parse(&self.authorize_url) {
            Ok(u) => u,
            Err(_) => return self.authorize_url.clone(),
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.client.client_id)
            .append_pair("redirect_uri", &self.client.redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("allow_signup", "false");
        url.into()
    }

    async fn api<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<T, SignInError> {
        let what = format!("GitHub's {path}");
        let res = self
            .client
            .http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(unreachable(&what))?;
        read_json(res, &what, false).await
    }

    pub(super) async fn finish(
        &self,
        code: &str,
        verifier: &str,
        now: u64,
    ) -> Result<(Person, UpstreamTokens), SignInError> {
        let (tokens, _) = self
            .client
            .token(
                &self.token_url,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &self.client.redirect_uri),
                    ("code_verifier", verifier),
                ],
                false,
                now,
            )
            .await?;
        let token = &tokens.access_token;
        let user: User = self.api("/user", token).await?;
        let emails: Vec<Email> = self.api("/user/emails", token).await?;
        let email = emails
            .into_iter()
            .find(|e| e.primary && e.verified)
            .map(|e| e.email);
        let mut groups = Vec::new();
        if self.wants_groups {
            let orgs: Vec<Value> = self.api("/user/orgs?per_page=100", token).await?;
            groups.extend(
                orgs.iter()
                    .filter_map(|o| o.get("login").and_then(Value::as_str))
                    .map(str::to_string),
            );
            let teams: Vec<Value> = self.api("/user/teams?per_page=100", token).await?;
            groups.extend(teams.iter().filter_map(|t| {
                let org = t.pointer("/organization/login").and_then(Value::as_str)?;
                let slug = t.get("slug").and_then(Value::as_str)?;
                Some(format!("{org}/{slug}"))
            }));
        }
        let person = Person {
            provider: String::new(),
            issuer: self.issuer.clone(),
            subject: user.id.to_string(),
            email,
            name: user.name.filter(|n| !n.is_empty()).or(Some(user.login)),
            groups,
        };
        Ok((person, tokens))
    }

    pub(super) async fn refresh(
        &self,
        refresh_token: &str,
        now: u64,
    ) -> Result<UpstreamTokens, SignInError> {
        let (tokens, _) = self
            .client
            .token(
                &self.token_url,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
                false,
                now,
            )
            .await?;
        Ok(tokens)
    }
}
