//! The client's authorization state: cached tokens first, a refresh when they are rejected or
//! expired, else discovery, a client identity (configured, client ID metadata document,
//! cached registration, dynamic registration, in the order the MCP specification gives) and a grant; step-up on
//! `insufficient_scope` (c4) with a retry limit.

use std::path::PathBuf;

use url::Url;

use super::cache::{AuthMethod, Cache, CacheEntry, ClientSource, StoredClient, StoredTokens};
use super::discovery::{self, AsMetadata, Challenge, Discovered};
use super::http::Http;
use super::oauth::{self, ClientKey, CodeRequest, Interaction, Loopback};
use super::{ClientError, GrantChoice};
use crate::clock::Clock as _;

/// Seconds before `expires_at` at which a token counts as expired.
const EXPIRY_MARGIN: u64 = 30;
/// Authorizations for more scope after a 403, per command.
const MAX_STEP_UPS: u32 = 2;

/// What the command line says about the client's identity and the user flow.
pub struct AuthOptions {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_key: Option<ClientKey>,
    pub client_metadata_url: Option<String>,
    pub grant: GrantChoice,
    pub scope: Option<String>,
    pub interaction: Interaction,
}

/// The authorization state of one command.
pub struct Auth<'a> {
    http: &'a Http,
    cache: Cache,
    opts: AuthOptions,
    /// The canonical MCP server URL: the key of its tokens in the cache.
    server_key: String,
    server: Url,
    /// The cache file and its contents, once known.
    entry: Option<(PathBuf, CacheEntry)>,
    tokens: Option<StoredTokens>,
    step_ups: u32,
}

impl<'a> Auth<'a> {
    pub fn new(http: &'a Http, cache: Cache, opts: AuthOptions, server: &Url) -> Self {
        let server_key = discovery::canonical(server);
        let wanted_id = opts.client_id.clone();
        let entry = cache.find(&server_key, |c| match &wanted_id {
            Some(id) => c.client_id == *id,
            None => c.source != ClientSource::Configured,
        });
        let tokens = entry
            .as_ref()
            .and_then(|(_, e)| e.tokens.get(&server_key).cloned());
        if tokens.is_some() {
            http.trace("using cached tokens");
        }
        Self {
            http,
            cache,
            opts,
            server_key,
            server: server.clone(),
            entry,
            tokens,
            step_ups: 0,
        }
    }

    fn now() -> u64 {
        crate::clock::SystemClock.now()
    }

    /// The access token to send, refreshed first if it has expired.
    pub async fn token(&mut self) -> Option<String> {
        let expired = self
            .tokens
            .as_ref()
            .and_then(|t| t.expires_at)
            .is_some_and(|at| at <= Self::now() + EXPIRY_MARGIN);
        if expired {
            self.http.trace("the cached access token has expired");
            if !self.try_refresh().await {
                self.tokens = None;
            }
        }
        self.tokens.as_ref().map(|t| t.access_token.clone())
    }

    /// A 401: refresh if the rejected token can be, else authorize anew.
    pub async fn unauthorized(
        &mut self,
        challenge: Option<&Challenge>,
        had_token: bool,
    ) -> Result<(), ClientError> {
        if had_token && self.try_refresh().await {
            return Ok(());
        }
        self.tokens = None;
        let scope = self
            .opts
            .scope
            .clone()
            .or(challenge.and_then(|c| c.scope.clone()));
        self.authorize(challenge, scope).await
    }

    /// A 403 `insufficient_scope`: authorize again for the old scopes plus the challenged
    /// ones, unless that asks for nothing new or the limit is reached.
    pub async fn insufficient_scope(&mut self, challenge: &Challenge) -> Result<(), ClientError> {
        let needed = challenge.scope.clone().unwrap_or_default();
        let current = self
            .tokens
            .as_ref()
            .and_then(|t| t.scope.clone())
            .unwrap_or_default();
        let mut union: Vec<&str> = current.split_whitespace().collect();
        for s in needed.split_whitespace() {
            if !union.contains(&s) {
                union.push(s);
            }
        }
        let nothing_new = needed
            .split_whitespace()
            .all(|s| current.split_whitespace().any(|c| c == s));
        if needed.is_empty() || nothing_new || self.step_ups >= MAX_STEP_UPS {
            return Err(ClientError::Forbidden(format!(
                "the server requires scope \"{needed}\"{}",
                if nothing_new && !needed.is_empty() {
                    ", which was already requested and not granted"
                } else {
                    ""
                }
            )));
        }
        self.step_ups += 1;
        // The one line that says why the person is asked again (on stderr, like all notes).
        eprintln!("the server needs scope {needed}; {}", self.asking_again());
        self.http.trace(&format!(
            "step-up authorization for scope \"{}\"",
            union.join(" ")
        ));
        self.authorize(Some(challenge), Some(union.join(" "))).await
    }

    async fn try_refresh(&mut self) -> bool {
        let (Some(tokens), Some((_, mut entry))) = (self.tokens.clone(), self.entry.clone()) else {
            return false;
        };
        if entry.client.source == ClientSource::Configured {
            entry.client.client_secret = self.opts.client_secret.clone();
        }
        let now = Self::now();
        let result = if tokens.refresh_token.is_some() {
            self.http.trace("refreshing the access token");
            oauth::refresh(
                self.http,
                &entry.metadata,
                &entry.client,
                self.opts.client_key.as_ref(),
                &tokens,
                now,
            )
            .await
        } else if entry.client.auth_method != AuthMethod::None
            && self.uses_client_credentials(&entry.metadata)
        {
            // No refresh tokens in this grant (RFC 6749 §4.4.3): just ask again.
            oauth::client_credentials(
                self.http,
                &entry.metadata,
                &entry.client,
                self.opts.client_key.as_ref(),
                &tokens.resource,
                tokens.scope.as_deref(),
                now,
            )
            .await
        } else {
            return false;
        };
        match result {
            Ok(new) => {
                self.store(new);
                true
            }
            Err(e) => {
                self.http.trace(&format!("refresh failed: {e}"));
                if e.is_oauth("invalid_grant") {
                    // Both callers authorize anew after a failed refresh.
                    eprintln!(
                        "the server refused the saved refresh token (invalid_grant: expired or revoked); {}",
                        self.asking_again()
                    );
                }
                false
            }
        }
    }

    /// How the next authorization goes, for the line that says why it happens.
    fn asking_again(&self) -> &'static str {
        let client_credentials = match &self.entry {
            Some((_, e)) => self.uses_client_credentials(&e.metadata),
            None => self.opts.grant == GrantChoice::ClientCredentials,
        };
        if client_credentials {
            "requesting a new token with the client credentials"
        } else {
            "asking you to sign in again"
        }
    }

    /// The tokens in use, if any.
    pub fn tokens(&self) -> Option<&StoredTokens> {
        self.tokens.as_ref()
    }

    /// Forget the tokens for this server in every cache file, after revoking them at the
    /// authorization server when it offers a revocation endpoint (RFC 7009): the refresh
    /// token (which revokes its grant), else the access token.
    pub async fn logout(&mut self) -> LogoutReport {
        let mut report = LogoutReport {
            server: self.server_key.clone(),
            had_tokens: self.tokens.is_some(),
            revocation_endpoint: None,
            revoked: None,
            revoke_error: None,
            files_changed: 0,
        };
        if let (Some(tokens), Some((_, mut entry))) = (self.tokens.clone(), self.entry.clone()) {
            if entry.metadata.revocation_endpoint.is_none() {
                // A cache written before the field was kept: ask the server again.
                match discovery::discover(self.http, &self.server, None).await {
                    Ok(found) if found.metadata.issuer == entry.metadata.issuer => {
                        entry.metadata.revocation_endpoint = found.metadata.revocation_endpoint;
                    }
                    Ok(_) => self
                        .http
                        .trace("the server now names another authorization server"),
                    Err(e) => self.http.trace(&format!("discovery failed: {e}")),
                }
            }
            if entry.client.source == ClientSource::Configured {
                entry.client.client_secret = self.opts.client_secret.clone();
            }
            report.revocation_endpoint = entry.metadata.revocation_endpoint.clone();
            if report.revocation_endpoint.is_some() {
                let (token, hint) = match &tokens.refresh_token {
                    Some(rt) => (rt.as_str(), "refresh_token"),
                    None => (tokens.access_token.as_str(), "access_token"),
                };
                match oauth::revoke(
                    self.http,
                    &entry.metadata,
                    &entry.client,
                    self.opts.client_key.as_ref(),
                    token,
                    hint,
                    Self::now(),
                )
                .await
                {
                    Ok(()) => report.revoked = Some(hint),
                    Err(e) => report.revoke_error = Some(e.to_string()),
                }
            }
        }
        report.files_changed = self.cache.forget(&self.server_key);
        self.tokens = None;
        self.entry = None;
        report
    }

    fn uses_client_credentials(&self, meta: &AsMetadata) -> bool {
        let has_credential = self.opts.client_secret.is_some() || self.opts.client_key.is_some();
        match self.opts.grant {
            GrantChoice::ClientCredentials => true,
            GrantChoice::AuthorizationCode => false,
            GrantChoice::Auto => {
                has_credential
                    && AsMetadata::supports(&meta.grant_types_supported, "client_credentials")
                    && !AsMetadata::supports(&meta.grant_types_supported, "authorization_code")
            }
        }
    }

    /// Discover, pick a client, run a grant, store the tokens.
    async fn authorize(
        &mut self,
        challenge: Option<&Challenge>,
        scope: Option<String>,
    ) -> Result<(), ClientError> {
        let found = discovery::discover(self.http, &self.server, challenge).await?;
        let issuer = found.metadata.issuer.clone();
        // c4: the challenge's scope, else what the resource lists; none if neither says.
        let mut scope = scope.or_else(|| found.resource_scopes.as_ref().map(|s| s.join(" ")));
        let client_credentials = self.uses_client_credentials(&found.metadata);
        // A client that can use refresh tokens asks for offline_access where the server
        // lists it (SEP-2207), and only there.
        if !client_credentials
            && AsMetadata::supports(&found.metadata.scopes_supported, "offline_access")
        {
            let s = scope.get_or_insert_with(String::new);
            if !s.split_whitespace().any(|x| x == "offline_access") {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str("offline_access");
            }
        }
        let now = Self::now();
        let (path, client, tokens) = if client_credentials {
            let client = self.configured_client(&found.metadata)?.ok_or_else(|| {
                ClientError::Usage("the client credentials grant needs --client-id".into())
            })?;
            let path = self.cache.path_for(&issuer, &client_key(&client));
            let tokens = oauth::client_credentials(
                self.http,
                &found.metadata,
                &client,
                self.opts.client_key.as_ref(),
                &found.resource,
                scope.as_deref(),
                now,
            )
            .await?;
            (path, client, tokens)
        } else {
            self.code_flow(&found, scope.as_deref(), now).await?
        };
        let mut entry = self
            .cache
            .load(&path)
            .filter(|e| e.issuer == issuer)
            .unwrap_or_else(|| CacheEntry {
                issuer: issuer.clone(),
                metadata: found.metadata.clone(),
                client: client.clone(),
                tokens: Default::default(),
            });
        entry.metadata = found.metadata.clone();
        entry.client = client;
        // A configured secret stays where the user keeps it; only registrations are cached.
        if entry.client.source == ClientSource::Configured {
            entry.client.client_secret = None;
        }
        entry.tokens.insert(self.server_key.clone(), tokens.clone());
        self.cache.save(&path, &entry)?;
        self.cache.forget_elsewhere(&self.server_key, &path);
        self.entry = Some((path, entry));
        self.tokens = Some(tokens);
        Ok(())
    }

    async fn code_flow(
        &mut self,
        found: &Discovered,
        scope: Option<&str>,
        now: u64,
    ) -> Result<(PathBuf, StoredClient, StoredTokens), ClientError> {
        let meta = &found.metadata;
        let issuer = meta.issuer.clone();
        // c3: configured, then a client ID metadata document, then a cached registration,
        // then dynamic registration.
        let mut client = self.configured_client(meta)?;
        if client.is_none() && meta.client_id_metadata_document_supported {
            client = self
                .opts
                .client_metadata_url
                .clone()
                .map(|url| StoredClient {
                    client_id: url,
                    client_secret: None,
                    auth_method: AuthMethod::None,
                    source: ClientSource::MetadataDocument,
                    redirect_uri: None,
                });
        }
        let dcr_path = self.cache.path_for(&issuer, "dcr");
        if client.is_none() {
            client = self
                .cache
                .load(&dcr_path)
                .filter(|e| e.issuer == issuer)
                .map(|e| e.client);
        }
        let preferred_port = client
            .as_ref()
            .and_then(|c| c.redirect_uri.as_deref())
            .and_then(|u| Url::parse(u).ok())
            .and_then(|u| u.port());
        let loopback = Loopback::bind(preferred_port).await?;
        let client = match client {
            Some(c) => c,
            None => {
                let endpoint = meta.registration_endpoint.as_deref().ok_or_else(|| {
                    ClientError::Usage(
                        "the authorization server offers no registration and no client was given: pass --client-id"
                            .into(),
                    )
                })?;
                self.http.trace("registering a client");
                oauth::register(self.http, endpoint, &loopback.redirect_uri).await?
            }
        };
        let path = self.cache.path_for(&issuer, &client_key(&client));
        let tokens = oauth::authorization_code(
            self.http,
            CodeRequest {
                metadata: meta,
                client: &client,
                resource: &found.resource,
                scope,
                issuer: &issuer,
            },
            loopback,
            self.opts.interaction,
            self.opts.client_key.as_ref(),
            now,
        )
        .await?;
        Ok((path, client, tokens))
    }

    /// The client given on the command line, with the authentication method the server
    /// supports (RFC 8414: `client_secret_basic` when it does not say).
    fn configured_client(&self, meta: &AsMetadata) -> Result<Option<StoredClient>, ClientError> {
        let Some(client_id) = self.opts.client_id.clone() else {
            return Ok(None);
        };
        let methods = &meta.token_endpoint_auth_methods_supported;
        let auth_method = if self.opts.client_key.is_some() {
            AuthMethod::PrivateKeyJwt
        } else if self.opts.client_secret.is_some() {
            if methods.is_none() || AsMetadata::supports(methods, "client_secret_basic") {
                AuthMethod::ClientSecretBasic
            } else if AsMetadata::supports(methods, "client_secret_post") {
                AuthMethod::ClientSecretPost
            } else {
                return Err(ClientError::Protocol(
                    "the token endpoint accepts neither client_secret_basic nor client_secret_post"
                        .into(),
                ));
            }
        } else {
            AuthMethod::None
        };
        Ok(Some(StoredClient {
            client_id,
            client_secret: self.opts.client_secret.clone(),
            auth_method,
            source: ClientSource::Configured,
            redirect_uri: None,
        }))
    }

    fn store(&mut self, tokens: StoredTokens) {
        if let Some((path, entry)) = self.entry.as_mut() {
            entry.tokens.insert(self.server_key.clone(), tokens.clone());
            if let Err(e) = self.cache.save(path, entry) {
                eprintln!("warning: {e}");
            }
        }
        self.tokens = Some(tokens);
    }
}

/// What `logout` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogoutReport {
    /// The canonical MCP server URL.
    pub server: String,
    /// Whether tokens were cached for it.
    pub had_tokens: bool,
    pub revocation_endpoint: Option<String>,
    /// The kind of token revoked (`refresh_token` or `access_token`), if one was.
    pub revoked: Option<&'static str>,
    /// Why the revocation failed, if it did (the cached tokens are forgotten anyway).
    pub revoke_error: Option<String>,
    /// Cache files changed or removed.
    pub files_changed: usize,
}

/// The cache key of a client: registrations are per issuer, configured clients per id.
fn client_key(client: &StoredClient) -> String {
    match client.source {
        ClientSource::Registered => "dcr".into(),
        ClientSource::MetadataDocument => format!("cimd:{}", client.client_id),
        ClientSource::Configured => format!("configured:{}", client.client_id),
    }
}
