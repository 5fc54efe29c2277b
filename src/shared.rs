//! What every role reads: the settings, the store, the clock, the signing keys, the
//! revoked tokens in memory, the metrics and the security events. Each role's own state holds one [`Shared`] and derefs
//! to it, so a handler reads `state.settings` whichever role it belongs to.

use std::sync::Arc;

use crate::audit::SecurityEvents;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::idp::Providers;
use crate::idp::vault::Vault;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Store;
use crate::store::view::RevocationView;
use crate::tokens::keys::KeyRing;

/// The parts of the state every role shares; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    /// Settings.
    pub settings: Arc<Settings>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The keys that sign access tokens.
    pub keys: Arc<KeyRing>,
    /// Revoked access tokens, in memory: the resource server checks tokens here, never in
    /// the store. Synced every second by the gateway and after every local revocation.
    pub revocations: Arc<RevocationView>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The last security events, for the operator's page.
    pub events: Arc<SecurityEvents>,
    /// The identity providers people sign in at (`[[identity_providers]]`).
    pub providers: Arc<Providers>,
    /// Their tokens for the people who did.
    pub vault: Arc<Vault>,
}

impl Shared {
    /// The shared parts, with fresh metrics and an empty event ring. Fails when an identity
    /// provider's secret cannot be read.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<KeyRing>,
    ) -> Result<Self, ConfigError> {
        let providers = Arc::new(Providers::from_config(
            &settings.config.identity_providers,
            &settings.issuer,
        )?);
        let revocations = Arc::new(RevocationView::new());
        let vault = Vault::new(
            settings.config.upstream_token_header().is_some(),
            store.clone(),
            providers.clone(),
            &keys,
            revocations.clone(),
        )
        .map_err(|e| ConfigError::Invalid {
            key: "identity_headers.upstream_token",
            message: format!("the token vault's key: {e}"),
        })?;
        Ok(Self {
            providers,
            vault: Arc::new(vault),
            settings: Arc::new(settings),
            events: Arc::new(SecurityEvents::in_store(store.clone())),
            store,
            clock,
            keys,
            revocations,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Bring the in-memory revocations up to date with the store: every second, and right
    /// after this process revokes something, so its very next MCP request is refused. A
    /// failure is logged; the view keeps what it had and goes stale after its bound.
    pub fn sync_revocations(&self) {
        if let Err(e) = self.revocations.sync(&*self.store, self.clock.now()) {
            tracing::warn!(error = %e, "revocations: sync with the store failed");
        }
    }
}
