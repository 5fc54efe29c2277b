//! The gateway: four bound listeners, each role's state built from one config, one
//! shutdown.
//!
//! The binary binds the listeners (so a port in use is reported before anything starts)
//! and hands them here with a shutdown future; tests do the same with port 0.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::admin::AdminState;
use crate::authz::AuthzState;
use crate::clock::{Clock, SystemClock};
use crate::config::{AuthMode, StoreKind};
use crate::config::{Config, ConfigError};
use crate::proxy::Backends;
use crate::proxy::trace::RequestTrace;
use crate::resource::ResourceState;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::store::memory::InMemoryStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{DB_FILE, SqliteStore};
use crate::store::{Store, StoreError};
use crate::tokens::keys::{KeyEncryptionKey, KeyError, KeyRing, SharedKeys};
use crate::{authz, mcp, proxy, resource, tokens};

/// A listener that could not be bound. The message names the setting that moves it: the
/// internal listeners' default ports (3001, 3003, 3004) are ones other MCP servers like too.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} ({name}): {source}{hint}",
    hint = bind_hint(name, source)
)]
pub struct BindError {
    /// Which listener.
    pub name: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// What to change when a listener's address is taken or not ours.
fn bind_hint(name: &str, source: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if !matches!(
        source.kind(),
        ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable | ErrorKind::PermissionDenied
    ) {
        return String::new();
    }
    let key = format!("{name}_addr");
    let env = format!("MCP_GATEWAY_{}_ADDR", name.to_ascii_uppercase());
    let busy = if source.kind() == ErrorKind::AddrInUse {
        "; another program has that port (an MCP server on 3001, say)"
    } else {
        ""
    };
    format!(
        "{busy}; move this listener with {key} (--{}-addr, {env}), e.g. 127.0.0.1:0 for any free port",
        name
    )
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Binding failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The signing key could not be loaded or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A template failed to compile (a bug).
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Reading a bound address failed.
    #[error("listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// The four bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// Public proxy.
    pub proxy: TcpListener,
    /// Protected MCP server.
    pub mcp: TcpListener,
    /// Authorization server routes.
    pub routes: TcpListener,
    /// JWKS.
    pub jwks: TcpListener,
    /// Metrics and health, when `metrics_addr` asks for a listener of their own.
    pub metrics: Option<TcpListener>,
}

/// The real addresses, also when port 0 was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// Public proxy.
    pub proxy: SocketAddr,
    /// Protected MCP server.
    pub mcp: SocketAddr,
    /// Authorization server routes.
    pub routes: SocketAddr,
    /// JWKS.
    pub jwks: SocketAddr,
    /// Metrics and health, if they have their own listener.
    pub metrics: Option<SocketAddr>,
}

impl Listeners {
    /// Bind the four addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        async fn one(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { name, addr, source })
        }
        Ok(Self {
            proxy: one("proxy", config.proxy_addr).await?,
            mcp: one("mcp", config.mcp_addr).await?,
            routes: one("routes", config.routes_addr).await?,
            jwks: one("jwks", config.jwks_addr).await?,
            metrics: match config.metrics_addr {
                Some(addr) => Some(one("metrics", addr).await?),
                None => None,
            },
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> std::io::Result<Addrs> {
        Ok(Addrs {
            proxy: self.proxy.local_addr()?,
            mcp: self.mcp.local_addr()?,
            routes: self.routes.local_addr()?,
            jwks: self.jwks.local_addr()?,
            metrics: self
                .metrics
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
        })
    }
}

/// What serves one protected resource: an upstream over HTTP, a stdio command, or (neither)
/// the built-in server.
struct Backend<'a> {
    upstream: Option<&'a str>,
    upstream_cmd: Option<&'a str>,
    headers: &'a std::collections::BTreeMap<String, String>,
    identity: &'a crate::config::IdentityHeaders,
}

impl Backend<'_> {
    /// The resource router for `rs` with this server behind it.
    fn router(
        &self,
        state: &AppState,
        rs: ResourceState,
        stop: &CancellationToken,
    ) -> std::io::Result<Router> {
        let c = &state.shared.settings.config;
        if let Some(url) = self.upstream {
            let identity = match (&c.upstream_client_cert, &c.upstream_client_key) {
                (Some(cert), Some(key)) => Some(crate::roots::Identity { cert, key }),
                _ => None,
            };
            let tls = crate::roots::client_config(c.upstream_ca_file.as_deref(), identity)
                .map_err(|e| std::io::Error::other(format!("upstream TLS: {e}")))?;
            let upstream = mcp::upstream::Upstream::new(
                url,
                tls,
                self.headers,
                self.identity.clone(),
                rs.policy.clone(),
                std::time::Duration::from_secs(c.upstream_timeout_seconds),
                state.shared.metrics.clone(),
            )
            .map_err(std::io::Error::other)?
            .with_vault(state.shared.vault.clone(), state.shared.clock.clone());
            return Ok(resource::router(rs, upstream.into_router()));
        }
        Ok(match self.upstream_cmd {
            Some(command) if c.upstream_cmd_per_session => {
                let service = mcp::passthrough_service(&rs, command, stop.child_token())
                    .map_err(std::io::Error::other)?;
                resource::router(rs, service)
            }
            Some(command) => {
                let service = mcp::stdio_service(&rs, command, stop.child_token())
                    .map_err(std::io::Error::other)?;
                resource::router(rs, service)
            }
            None => {
                let service = mcp::builtin_service(&rs, stop.child_token());
                resource::router(rs, service)
            }
        })
    }
}

/// Every role's state, built once: the roles share [`Shared`] and the token verifier,
/// and own the rest.
#[derive(Clone)]
pub struct AppState {
    /// What every role reads.
    pub shared: Shared,
    /// The authorization server's.
    pub authz: AuthzState,
    /// The operator's page's.
    pub admin: AdminState,
    /// The resource server's (and the MCP server's behind it).
    pub resource: ResourceState,
    /// Recent proxied requests, when `debug_trace` is on.
    pub trace: Option<Arc<RequestTrace>>,
}

impl AppState {
    /// Build every role's state.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Arc<KeyRing>,
    ) -> Result<Self, GatewayError> {
        crate::web::pages::check()?;
        let shared = Shared::new(settings, store, clock, keys)?;
        for p in shared.providers.iter() {
            tracing::info!(
                provider = %p.id(),
                redirect_uri = %format!("{}{}", shared.settings.issuer, crate::idp::CALLBACK_PATH),
                "identity provider: register this redirect URI at the provider"
            );
        }
        // Before serving: a restarted gateway knows every unexpired revocation.
        shared
            .revocations
            .sync(&*shared.store, shared.clock.now())?;
        let mut verifier = tokens::sources::verifier(&shared.settings, shared.keys.clone())?;
        verifier.count_key_lookups(shared.metrics.cache_counters("jwks"));
        let verifier = Arc::new(verifier);
        let authz = AuthzState::new(shared.clone(), verifier.clone());
        let admin = AdminState::new(authz.clone()).ok_or(ConfigError::Invalid {
            key: "admin",
            message: "the random source failed".into(),
        })?;
        let resource = ResourceState::new(shared.clone(), verifier)?;
        let trace = (shared.settings.config.debug_trace).then(|| Arc::new(RequestTrace::new(500)));
        Ok(Self {
            shared,
            authz,
            admin,
            resource,
            trace,
        })
    }
}

/// The signing keys of a fleet on `store`, sealed with the key-encryption key from
/// `MCP_GATEWAY_KEY_ENCRYPTION_KEY` or `key_encryption_key_file`, which a shared store
/// requires.
pub fn shared_keys(config: &Config, store: Arc<dyn Store>) -> Result<SharedKeys, GatewayError> {
    let text = match (
        std::env::var("MCP_GATEWAY_KEY_ENCRYPTION_KEY").ok(),
        &config.key_encryption_key_file,
    ) {
        (Some(text), _) if !text.trim().is_empty() => text,
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| KeyError::KeyEncryption(format!("reading {}: {e}", path.display())))?,
        _ => {
            return Err(KeyError::KeyEncryption(
                "store = \"postgres\" keeps signing keys in the database, encrypted: set \
                 MCP_GATEWAY_KEY_ENCRYPTION_KEY or key_encryption_key_file to 32 random bytes \
                 in base64 (openssl rand -base64 32), the same on every replica"
                    .into(),
            )
            .into());
        }
    };
    Ok(SharedKeys {
        store,
        kek: KeyEncryptionKey::from_base64(&text)?,
        alg: config.signing_alg,
        keep: config.access_token_ttl + config.leeway_seconds,
    })
}

/// Open the configured store (for the subcommands that change state).
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, GatewayError> {
    Ok(match config.store {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&config.data_dir.join(DB_FILE))?),
        StoreKind::Memory => Arc::new(InMemoryStore::new()),
        StoreKind::Postgres => Arc::new(PostgresStore::open(
            config
                .database_url
                .as_ref()
                .map(crate::config::DatabaseUrl::as_str)
                .unwrap_or_default(),
            config.database_ca_file.as_deref(),
        )?),
    })
}

/// A gateway ready to run.
pub struct Gateway {
    state: AppState,
    listeners: Listeners,
    addrs: Addrs,
    tls: Option<crate::tls::Tls>,
}

impl Gateway {
    /// Build a gateway with the embedded defaults: the configured store (SQLite in the
    /// data dir unless `store = "memory"`), the system clock, the signing key from the data
    /// dir.
    pub fn new(config: Config, listeners: Listeners) -> Result<Self, GatewayError> {
        let now = SystemClock.now();
        let keep = config.access_token_ttl + config.leeway_seconds;
        let store = open_store(&config)?;
        let key = match config.store {
            StoreKind::Postgres => KeyRing::open_shared(shared_keys(&config, store.clone())?, now)?,
            _ => KeyRing::open(&config.data_dir, config.signing_alg, now, keep)?,
        };
        Self::with_parts(config, listeners, store, Arc::new(SystemClock), key)
    }

    /// Build a gateway from explicit parts (tests inject a clock, a store, a key or a
    /// key ring).
    pub fn with_parts(
        mut config: Config,
        listeners: Listeners,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: impl Into<KeyRing>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let addrs = listeners.addrs()?;
        config.proxy_addr = addrs.proxy;
        config.mcp_addr = addrs.mcp;
        config.routes_addr = addrs.routes;
        config.jwks_addr = addrs.jwks;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::Tls::load(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", addrs.proxy));
        let public = Url::parse(&public).map_err(|e| ConfigError::Invalid {
            key: "public_url",
            message: e.to_string(),
        })?;
        let settings = Settings::new(config, &public);
        let state = AppState::new(settings, store, clock, Arc::new(key.into()))?;
        Ok(Self {
            state,
            listeners,
            addrs,
            tls,
        })
    }

    /// The real addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves, then stop all four listeners gracefully.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            state,
            listeners,
            addrs,
            tls,
        } = self;
        let stop = CancellationToken::new();
        let reloadable = tls.clone();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let backends = Backends {
            mcp: addrs.mcp,
            routes: addrs.routes,
            jwks: addrs.jwks,
        };
        // One protected resource per route (`/mcp` alone without `[[routes]]`), each with
        // its own token audience, tool policy and server behind it.
        let c = &state.shared.settings.config;
        let mut mcp_router = Router::new();
        let mut metadata = Router::new();
        for (i, _) in state.shared.settings.routes.iter().enumerate() {
            let rs = state.resource.for_route(i).map_err(std::io::Error::other)?;
            let server = match c.routes.get(i) {
                Some(r) => Backend {
                    upstream: r.upstream.as_deref(),
                    upstream_cmd: r.upstream_cmd.as_deref(),
                    headers: &r.upstream_headers,
                    identity: r.identity_headers.as_ref().unwrap_or(&c.identity_headers),
                },
                None => Backend {
                    upstream: c.upstream.as_deref(),
                    upstream_cmd: c.upstream_cmd.as_deref(),
                    headers: &c.upstream_headers,
                    identity: &c.identity_headers,
                },
            };
            metadata = metadata.merge(resource::metadata_router(rs.clone()));
            mcp_router = mcp_router.merge(server.router(&state, rs, &stop)?);
        }
        let serve = |listener: TcpListener, router: Router| {
            let stop = stop.clone();
            // Small SSE events and JSON-RPC answers must not wait for Nagle's algorithm.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop.cancelled_owned())
                .into_future(),
            )
        };
        let routes_router = match state.shared.settings.config.auth_mode {
            AuthMode::Builtin => {
                authz::router(state.authz.clone()).merge(crate::admin::router(state.admin.clone()))
            }
            // Another issuer authorizes: only the resource's own metadata is ours.
            _ => Router::new(),
        }
        .merge(metadata)
        .merge(proxy::trace::router(state.trace.clone()))
        .merge(crate::ops::router(state.shared.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.admin.clone(),
            crate::admin::operator_guard,
        ));
        let jwks_router = tokens::jwks::router(state.shared.keys.clone());
        // The proxy calls the same routers the listeners serve, in memory, unless the
        // operator asked for the network hop.
        let local = (state.shared.settings.config.proxy_hop == crate::config::ProxyHop::InProcess)
            .then(|| proxy::forward::LocalBackends {
                mcp: mcp_router.clone(),
                routes: routes_router.clone(),
                jwks: jwks_router.clone(),
            });
        let mut tasks = vec![
            serve(listeners.mcp, mcp_router),
            serve(listeners.routes, routes_router),
            serve(listeners.jwks, jwks_router),
            {
                // The public listener: bounded per source, per connection and per header.
                let proxy =
                    proxy::forward::Proxy::new(&state.shared, state.trace.clone(), backends, local);
                let limits = proxy::listen::Limits::from_config(&state.shared.settings.config);
                let sources = proxy::listen::Sources::new(limits.max_per_source);
                let stop = stop.clone();
                match tls {
                    None => {
                        let incoming =
                            proxy::listen::accept_plain(listeners.proxy, sources, stop.clone());
                        tokio::spawn(proxy::listen::serve(incoming, proxy, limits, stop))
                    }
                    Some(tls) => {
                        let incoming = crate::tls::accept(
                            listeners.proxy,
                            tls.acceptor(),
                            sources,
                            stop.clone(),
                        );
                        tokio::spawn(proxy::listen::serve(incoming, proxy, limits, stop))
                    }
                }
            },
        ];
        if let Some(metrics) = listeners.metrics {
            tasks.push(serve(metrics, crate::ops::router(state.shared.clone())));
        }
        tokio::spawn(maintain_keys(state.shared.clone(), stop.clone()));
        tokio::spawn(sync_revocations(state.shared.clone(), stop.clone()));
        tokio::spawn(crate::tls::reload_on_hangup(reloadable, stop.clone()));
        tracing::info!(
            proxy = %addrs.proxy,
            mcp = %addrs.mcp,
            routes = %addrs.routes,
            jwks = %addrs.jwks,
            public_url = %state.shared.settings.issuer,
            "listening"
        );
        if let Some(metrics) = addrs.metrics {
            tracing::info!(%metrics, "metrics and health listening");
        }
        let mut first_error = None;
        let drain = async {
            for task in tasks {
                let result = task.await.map_err(std::io::Error::other).and_then(|r| r);
                if let Err(e) = result {
                    tracing::error!(error = %e, "listener failed");
                    stop.cancel();
                    first_error.get_or_insert(e);
                }
            }
        };
        // Streams that never end on their own (an upstream's SSE, say) get this long after
        // the stop; then they are dropped with the runtime.
        let grace =
            std::time::Duration::from_secs(state.shared.settings.config.shutdown_timeout_seconds);
        let deadline = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = drain => {}
            () = deadline => {
                tracing::warn!(seconds = grace.as_secs(), "connections still open after the shutdown timeout: closing them");
            }
        }
        tracing::info!("stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// Every `key_check_seconds`: rotate the signing key when it is due, pick up a rotation made by the
/// CLI, withdraw retired keys whose tokens have expired.
async fn maintain_keys(state: Shared, stop: CancellationToken) {
    let interval = state.settings.config.key_rotation_seconds;
    let every = state.settings.config.key_check_seconds.max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        rotate_if_due(&state, interval);
    }
}

/// Every second: catch the in-memory revocations up with the store, so a revocation made
/// by another replica is refused here within about a second. A failure is logged and
/// retried next round; past `TRUST_WITHOUT_STORE` the resource server refuses (503)
/// tokens it cannot vouch for.
async fn sync_revocations(state: Shared, stop: CancellationToken) {
    let every = std::time::Duration::from_secs(crate::store::view::SYNC_EVERY);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A shared store also wakes this loop as soon as another replica revokes.
    let wake = Arc::new(tokio::sync::Notify::new());
    state.store.watch_revocations(Arc::downgrade(&wake));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
            () = stop.cancelled() => return,
        }
        state.sync_revocations();
    }
}

/// One round of [`maintain_keys`]; an audit event when the signing key changed.
pub fn rotate_if_due(state: &Shared, interval: u64) {
    let now = state.clock.now();
    match state.keys.maintain(now, interval) {
        Ok(Some(kid)) => {
            let meta = crate::audit::RequestMeta::default();
            crate::audit::audit!(state, &meta, info, "key_rotated",
                client: None, sub: None; kid = %kid);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "signing key maintenance failed"),
    }
}
