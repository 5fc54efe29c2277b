//! The resource server's state: the shared parts, plus what decides who may call what —
//! the token verifier, the scope policy, API keys and the external issuer's introspection.

use std::ops::Deref;
use std::sync::Arc;

use super::api_keys::ApiKeys;
use super::policy::ScopePolicy;
use crate::config::{AuthMode, ConfigError};
use crate::settings::Route;
use crate::shared::Shared;
use crate::tokens::sources::Introspector;
use crate::tokens::verify::Verifier;

/// The resource server's state; cheap to clone. Derefs to [`Shared`].
#[derive(Clone)]
pub struct ResourceState {
    /// What every role shares.
    pub shared: Shared,
    /// Verifies bearer tokens.
    pub verifier: Arc<Verifier>,
    /// Method and tool scope policy.
    pub policy: Arc<ScopePolicy>,
    /// Static API keys, when enabled.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// Introspection of an external issuer's opaque tokens, when configured.
    pub introspector: Option<Arc<Introspector>>,
    /// The protected resource this state serves (`/mcp`, or one of `[[routes]]`).
    pub route: Arc<Route>,
}

impl Deref for ResourceState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl ResourceState {
    /// The resource server's state over `shared`, verifying tokens with `verifier`.
    pub fn new(shared: Shared, verifier: Arc<Verifier>) -> Result<Self, ConfigError> {
        let c = &shared.settings.config;
        let api_keys = match (c.api_keys.enabled, &c.api_keys.file) {
            (true, Some(file)) => Some(Arc::new(ApiKeys::load(file, c.api_keys.deprecated)?)),
            (true, None) => {
                return Err(ConfigError::Invalid {
                    key: "api_keys.file",
                    message: "api_keys.enabled needs a keys file".into(),
                });
            }
            (false, _) => None,
        };
        let introspector = match c.auth_mode {
            AuthMode::External => Introspector::from_config(&shared.settings)?.map(|mut i| {
                i.count_into(shared.metrics.cache_counters("introspection"));
                Arc::new(i)
            }),
            _ => None,
        };
        let route = shared.settings.routes[0].clone();
        let scopes = match c.routes.first() {
            Some(r) => r.scopes(&c.scopes),
            None => c.scopes.clone(),
        };
        Ok(Self {
            route,
            policy: Arc::new(ScopePolicy::from_config(&scopes)),
            api_keys,
            introspector,
            verifier,
            shared,
        })
    }

    /// The same server for the `index`th route: its own resource, token audience and tool
    /// policy.
    pub fn for_route(&self, index: usize) -> Result<Self, ConfigError> {
        let s = &self.shared.settings;
        let Some(route) = s.routes.get(index).cloned() else {
            return Err(ConfigError::Invalid {
                key: "routes",
                message: format!("no route {index}"),
            });
        };
        let scopes = match s.config.routes.get(index) {
            Some(r) => r.scopes(&s.config.scopes),
            None => s.config.scopes.clone(),
        };
        let mut verifier =
            crate::tokens::sources::verifier_for(s, self.shared.keys.clone(), &route.resource)?;
        verifier.count_key_lookups(self.shared.metrics.cache_counters("jwks"));
        Ok(Self {
            route,
            policy: Arc::new(ScopePolicy::from_config(&scopes)),
            verifier: Arc::new(verifier),
            ..self.clone()
        })
    }
}
