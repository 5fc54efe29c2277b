//! The authorization server's state: the shared parts, plus its own limits, browser
//! sessions, the verifier of its own tokens (revocation, introspection), the Client ID
//! Metadata Document resolver, and client lookup.

use std::ops::Deref;
use std::sync::Arc;

use super::cimd::{CimdConfig, CimdError, CimdResolver};
use super::error::OAuthError;
use super::ratelimit::RateLimiter;
use crate::shared::Shared;
use crate::store::{Client, PendingLimits, StoreError, StoreResult};
use crate::tokens::verify::Verifier;
use crate::web::sessions::Sessions;

/// The authorization server's state; cheap to clone. Derefs to [`Shared`].
#[derive(Clone)]
pub struct AuthzState {
    /// What every role shares.
    pub shared: Shared,
    /// Verifies the gateway's own tokens (revocation, introspection).
    pub verifier: Arc<Verifier>,
    /// Per-source limit on client registration.
    pub register_limiter: Arc<RateLimiter>,
    /// Per-source limit on failed sign-ins (password guessing).
    pub login_limiter: Arc<RateLimiter>,
    /// Per-source limit on the token endpoint.
    pub token_limiter: Arc<RateLimiter>,
    /// Per-source limit on the authorization endpoint.
    pub authorize_limiter: Arc<RateLimiter>,
    /// Fetches Client ID Metadata Documents, when enabled.
    pub cimd: Option<CimdResolver>,
    /// Browser sessions of signed-in users.
    pub sessions: Arc<Sessions>,
}

impl Deref for AuthzState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ClientLookupError {
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The client's metadata document is unusable.
    #[error(transparent)]
    Cimd(CimdError),
}

impl From<ClientLookupError> for OAuthError {
    fn from(e: ClientLookupError) -> Self {
        match e {
            ClientLookupError::Store(e) => Self::server(e),
            ClientLookupError::Cimd(e) => e.into(),
        }
    }
}

impl AuthzState {
    /// The authorization server's state over `shared`, verifying its own tokens with
    /// `verifier`.
    pub fn new(shared: Shared, verifier: Arc<Verifier>) -> Self {
        let c = &shared.settings.config;
        let cimd = c.cimd_enabled.then(|| {
            CimdResolver::new(CimdConfig {
                allow_loopback_http: c.cimd_allow_loopback_http,
                ..CimdConfig::default()
            })
        });
        // Counted by the store when it is shared: the limits are the fleet's.
        let per_minute =
            |n, bucket| Arc::new(RateLimiter::counted_in(n, 60, shared.store.clone(), bucket));
        Self {
            register_limiter: per_minute(c.register_rate_per_minute, "register"),
            login_limiter: per_minute(10, "login"),
            token_limiter: per_minute(c.token_rate_per_minute, "token"),
            authorize_limiter: per_minute(c.authorize_rate_per_minute, "authorize"),
            cimd,
            sessions: Arc::new(Sessions::new(shared.store.clone())),
            verifier,
            shared,
        }
    }

    /// The caps on authorization requests and codes waiting at once.
    pub fn pending_limits(&self) -> PendingLimits {
        let c = &self.settings.config;
        PendingLimits {
            total: c.max_pending_authorizations,
            per_client: c.max_pending_per_client,
        }
    }

    /// A client by id: pinned in the config, else registered.
    pub fn client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        match self.settings.pinned_clients.get(client_id) {
            Some(c) => Ok(Some(c.clone())),
            None => self.store.client(client_id),
        }
    }

    /// A client by id as [`Self::client`], or, for a `client_id` that is a metadata
    /// document URL, the validated document (fetched or cached). Scopes the document asks
    /// for that are not offered are dropped.
    pub async fn lookup_client(
        &self,
        client_id: &str,
        now: u64,
    ) -> Result<Option<Client>, ClientLookupError> {
        if let Some(c) = self.client(client_id).map_err(ClientLookupError::Store)? {
            return Ok(Some(c));
        }
        let Some(cimd) = self.cimd.as_ref().filter(|c| c.is_metadata_url(client_id)) else {
            return Ok(None);
        };
        let mut client = cimd
            .resolve(client_id, now)
            .await
            .map_err(ClientLookupError::Cimd)?;
        let supported = &self.settings.config.scopes.supported;
        client.scope = client.scope.map(|s| {
            s.split(' ')
                .filter(|x| supported.iter().any(|o| o == x))
                .collect::<Vec<_>>()
                .join(" ")
        });
        Ok(Some(client))
    }
}
