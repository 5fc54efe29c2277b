//! The state every listener shares: settings derived from the config once the public URL
//! is known, the store, the clock, the signing key, the token verifier and the policy.

use std::sync::Arc;

use url::Url;

use crate::authz::cimd::{CimdConfig, CimdError, CimdResolver};
use crate::authz::login::Sessions;
use crate::authz::ratelimit::RateLimiter;
use crate::clock::Clock;
use crate::config::Config;
use crate::config::ConfigError;
use crate::proxy::trace::RequestTrace;
use crate::resource::api_keys::ApiKeys;
use crate::resource::policy::ScopePolicy;
use crate::store::{Client, Store, StoreResult};
use crate::tokens::keys::KeyRing;
use crate::tokens::verify::Verifier;

/// Values derived from the config and the bound proxy address.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config as loaded.
    pub config: Config,
    /// The issuer: the public URL without a trailing slash. Every advertised endpoint is
    /// under it, so all of them go through the proxy.
    pub issuer: String,
    /// The protected resource (canonical, RFC 8707): `<issuer>/mcp`.
    pub resource: String,
    /// The public origin (`scheme://host[:port]`), for Origin checks.
    pub public_origin: String,
    /// Where the protected resource metadata is (path-suffixed form, RFC 9728 §3.1).
    pub resource_metadata_url: String,
    /// A hash to verify against for unknown user names, so timing does not reveal them.
    pub dummy_password_hash: String,
    /// Clients pinned in the config, by id. The config is their only source: removing an
    /// entry removes the client.
    pub pinned_clients: std::collections::HashMap<String, Client>,
}

impl Settings {
    /// Derive settings; `public_url` is the validated public URL.
    pub fn new(config: Config, public_url: &Url) -> Self {
        let issuer = public_url.as_str().trim_end_matches('/').to_string();
        let public_origin = public_url.origin().ascii_serialization();
        let path = public_url.path().trim_end_matches('/');
        let resource = format!("{issuer}/mcp");
        let resource_metadata_url =
            format!("{public_origin}/.well-known/oauth-protected-resource{path}/mcp");
        let needs_login =
            config.users.len() > 1 || config.users.iter().any(|u| u.password_hash.is_some());
        let dummy_password_hash = if needs_login {
            crate::authz::login::hash_password("unknown user").unwrap_or_default()
        } else {
            String::new()
        };
        let pinned_clients = config
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.to_client(0)))
            .collect();
        Self {
            pinned_clients,
            dummy_password_hash,
            config,
            issuer,
            resource,
            public_origin,
            resource_metadata_url,
        }
    }
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ClientLookupError {
    /// The store failed.
    #[error(transparent)]
    Store(crate::store::StoreError),
    /// The client's metadata document is unusable.
    #[error(transparent)]
    Cimd(CimdError),
}

impl From<ClientLookupError> for crate::authz::error::OAuthError {
    fn from(e: ClientLookupError) -> Self {
        match e {
            ClientLookupError::Store(e) => Self::server(e),
            ClientLookupError::Cimd(e) => e.into(),
        }
    }
}

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub settings: Arc<Settings>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The key that signs access tokens.
    pub keys: Arc<KeyRing>,
    /// Verifies bearer tokens on the resource server.
    pub verifier: Arc<Verifier>,
    /// Method and tool scope policy.
    pub policy: Arc<ScopePolicy>,
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
    /// Recent proxied requests, when `debug_trace` is on.
    pub trace: Option<Arc<RequestTrace>>,
    /// Static API keys, when enabled.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Introspection of an external issuer's opaque tokens, when configured.
    pub introspector: Option<Arc<crate::tokens::sources::Introspector>>,
    /// The last security events, for the operator's page.
    pub events: Arc<crate::admin::events::SecurityEvents>,
    /// The operator's page's per-process secret (binds its CSRF tokens).
    pub admin_key: Arc<crate::admin::AdminKey>,
}

impl AppState {
    /// The caps on authorization requests and codes waiting at once.
    pub fn pending_limits(&self) -> crate::store::PendingLimits {
        let c = &self.settings.config;
        crate::store::PendingLimits {
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

    /// Assemble the state.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<KeyRing>,
    ) -> Result<Self, ConfigError> {
        crate::web::pages::check().map_err(|e| ConfigError::Invalid {
            key: "templates",
            message: e.to_string(),
        })?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let mut verifier = crate::tokens::sources::verifier(&settings, keys.clone())?;
        verifier.count_key_lookups(metrics.cache_counters("jwks"));
        let api_keys = match (
            &settings.config.api_keys.enabled,
            &settings.config.api_keys.file,
        ) {
            (true, Some(file)) => Some(Arc::new(ApiKeys::load(
                file,
                settings.config.api_keys.deprecated,
            )?)),
            (true, None) => {
                return Err(ConfigError::Invalid {
                    key: "api_keys.file",
                    message: "api_keys.enabled needs a keys file".into(),
                });
            }
            (false, _) => None,
        };
        let policy = ScopePolicy::from_config(&settings.config.scopes);
        let cimd = settings.config.cimd_enabled.then(|| {
            CimdResolver::new(CimdConfig {
                allow_loopback_http: settings.config.cimd_allow_loopback_http,
                ..CimdConfig::default()
            })
        });
        let trace = settings
            .config
            .debug_trace
            .then(|| Arc::new(RequestTrace::new(500)));
        let register_limiter = RateLimiter::new(settings.config.register_rate_per_minute, 60);
        let introspector = match settings.config.auth_mode {
            crate::config::AuthMode::External => {
                crate::tokens::sources::Introspector::from_config(&settings)?.map(|mut i| {
                    i.count_into(metrics.cache_counters("introspection"));
                    Arc::new(i)
                })
            }
            _ => None,
        };
        let token_limiter = Arc::new(RateLimiter::new(settings.config.token_rate_per_minute, 60));
        let authorize_limiter = Arc::new(RateLimiter::new(
            settings.config.authorize_rate_per_minute,
            60,
        ));
        Ok(Self {
            settings: Arc::new(settings),
            store,
            clock,
            keys,
            verifier: Arc::new(verifier),
            policy: Arc::new(policy),
            register_limiter: Arc::new(register_limiter),
            login_limiter: Arc::new(RateLimiter::new(10, 60)),
            token_limiter,
            authorize_limiter,
            trace,
            sessions: Arc::new(Sessions::default()),
            cimd,
            api_keys,
            metrics,
            introspector,
            events: Arc::new(crate::admin::events::SecurityEvents::default()),
            admin_key: Arc::new(crate::admin::AdminKey::generate().ok_or_else(|| {
                ConfigError::Invalid {
                    key: "admin",
                    message: "the random source failed".into(),
                }
            })?),
        })
    }
}
