//! What every role reads: the settings, the store, the clock, the signing keys, the
//! metrics and the security events. Each role's own state holds one [`Shared`] and derefs
//! to it, so a handler reads `state.settings` whichever role it belongs to.

use std::sync::Arc;

use crate::audit::SecurityEvents;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Store;
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
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The last security events, for the operator's page.
    pub events: Arc<SecurityEvents>,
}

impl Shared {
    /// The shared parts, with fresh metrics and an empty event ring.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<KeyRing>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            store,
            clock,
            keys,
            metrics: Arc::new(Metrics::new()),
            events: Arc::new(SecurityEvents::default()),
        }
    }
}
