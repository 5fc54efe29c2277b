//! `mcp-oauth-gateway`: parse flags, load config, bind the four listeners, run until
//! Ctrl-C or SIGTERM. Bad config or a port in use: one line on stderr and exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mcp_oauth_gateway::config::{LogFormat, SigningAlg, StoreKind};
use mcp_oauth_gateway::{Config, Gateway, Listeners};

/// OAuth 2.1 gateway for MCP servers.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-oauth-gateway",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MCP_GATEWAY_GIT_REVISION"), ")"),
    about
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (every key optional; flags override it).
    #[arg(long, global = true, env = "MCP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Public smart proxy address.
    #[arg(long, env = "MCP_GATEWAY_PROXY_ADDR")]
    proxy_addr: Option<SocketAddr>,
    /// Protected MCP server address.
    #[arg(long, env = "MCP_GATEWAY_MCP_ADDR")]
    mcp_addr: Option<SocketAddr>,
    /// Authorization server (custom routes) address.
    #[arg(long, env = "MCP_GATEWAY_ROUTES_ADDR")]
    routes_addr: Option<SocketAddr>,
    /// JWKS server address.
    #[arg(long, env = "MCP_GATEWAY_JWKS_ADDR")]
    jwks_addr: Option<SocketAddr>,
    /// The URL clients use (default http://<proxy addr>); it is the issuer.
    #[arg(long, env = "MCP_GATEWAY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Where signing keys live.
    #[arg(long, global = true, env = "MCP_GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Access token lifetime in seconds.
    #[arg(long, env = "MCP_GATEWAY_ACCESS_TOKEN_TTL")]
    access_token_ttl: Option<u64>,
    /// Seconds a rotated refresh token keeps working while its successor is unused.
    #[arg(long, env = "MCP_GATEWAY_REFRESH_GRACE_SECONDS")]
    refresh_grace_seconds: Option<u64>,
    /// Signing algorithm of access tokens.
    #[arg(
        long,
        global = true,
        env = "MCP_GATEWAY_SIGNING_ALG",
        value_enum,
        ignore_case = true
    )]
    signing_alg: Option<SigningAlg>,
    /// Approve every authorization request without a consent page (development only).
    #[arg(long, env = "MCP_GATEWAY_AUTO_APPROVE")]
    auto_approve: bool,
    /// Allow a plain-http public URL on a non-loopback host.
    #[arg(long, env = "MCP_GATEWAY_INSECURE_HTTP")]
    insecure_http: bool,
    /// On a public URL, let anyone approve consent without signing in (not recommended).
    #[arg(long, env = "MCP_GATEWAY_ALLOW_ANONYMOUS_CONSENT")]
    allow_anonymous_consent: bool,
    /// Serve the public listener over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "MCP_GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MCP_GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Rotate the signing key when it is this many seconds old (0: never).
    #[arg(long, env = "MCP_GATEWAY_KEY_ROTATION_SECONDS")]
    key_rotation_seconds: Option<u64>,
    /// Keep a trace of recent proxied requests at /debug/requests (for debugging clients).
    #[arg(long, env = "MCP_GATEWAY_DEBUG_TRACE")]
    debug_trace: bool,
    /// Protect this streamable-HTTP MCP server instead of the built-in one.
    #[arg(long, env = "MCP_GATEWAY_UPSTREAM")]
    upstream: Option<String>,
    /// CA certificates (PEM) for an https --upstream with a private CA (else the system's roots).
    #[arg(long, env = "MCP_GATEWAY_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<PathBuf>,
    /// Spawn this stdio MCP server and protect it instead of the built-in one.
    #[arg(long, env = "MCP_GATEWAY_UPSTREAM_CMD")]
    upstream_cmd: Option<String>,
    /// Also write security events as JSON lines to this file.
    #[arg(long, env = "MCP_GATEWAY_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// A load balancer or proxy in front of the gateway (an address or a network such as
    /// 10.0.0.0/8) whose X-Forwarded-For entries are believed; repeat for several. The
    /// environment variable takes a comma-separated list. Replaces the file's list.
    #[arg(
        long = "trusted-proxy",
        env = "MCP_GATEWAY_TRUSTED_PROXIES",
        value_name = "ADDR_OR_CIDR",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// Storage backend.
    #[arg(
        long,
        global = true,
        env = "MCP_GATEWAY_STORE",
        value_enum,
        ignore_case = true
    )]
    store: Option<StoreKind>,
    /// The PostgreSQL database of --store postgres (postgres://user:password@host:port/db).
    #[arg(
        long,
        global = true,
        env = "MCP_GATEWAY_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<mcp_oauth_gateway::config::DatabaseUrl>,
    /// CA certificates (PEM) for the database server's certificate (sslmode=require against
    /// a private CA); the system's roots otherwise.
    #[arg(long, global = true, env = "MCP_GATEWAY_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// A file with the key that encrypts signing keys in a shared store (32 random bytes,
    /// base64). MCP_GATEWAY_KEY_ENCRYPTION_KEY may give the key itself.
    #[arg(long, global = true, env = "MCP_GATEWAY_KEY_ENCRYPTION_KEY_FILE")]
    key_encryption_key_file: Option<PathBuf>,
    /// This replica's name behind a balancer: MCP session ids start with `<id>.`, so the
    /// balancer can route a session to its replica (see deploy/nginx.conf).
    #[arg(long, env = "MCP_GATEWAY_REPLICA_ID")]
    replica_id: Option<String>,
    /// How often to re-read the signing keys (a rotation made elsewhere), seconds, 1 to 60.
    #[arg(long, env = "MCP_GATEWAY_KEY_CHECK_SECONDS")]
    key_check_seconds: Option<u64>,
    /// Log format.
    #[arg(long, env = "MCP_GATEWAY_LOG_FORMAT", value_enum, ignore_case = true)]
    log_format: Option<LogFormat>,
}

/// Tools besides serving.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Read a password (prompted without echo on a terminal, else one line of standard
    /// input) and print its argon2 hash, for a `[[users]]` entry's `password_hash`.
    HashPassword,
    /// Serve the built-in demo tools as a stdio MCP server (try `--upstream-cmd` with it).
    ServeStdio,
    /// Talk to an MCP server as an OAuth client: discover, register, authorize, then list
    /// tools or call one.
    Client(Box<mcp_oauth_gateway::client::ClientArgs>),
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Move state between stores.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

/// Store operations.
#[derive(Debug, clap::Subcommand)]
enum StoreAction {
    /// Copy a single machine's state (clients, grants, refresh tokens, revocations,
    /// consents, sign-in sessions and signing keys) into an empty PostgreSQL database, so
    /// nobody signs in again after moving to several replicas. Needs the key-encryption key
    /// (MCP_GATEWAY_KEY_ENCRYPTION_KEY or --key-encryption-key-file).
    Copy {
        /// The SQLite database, `sqlite:PATH` (its signing keys are in the same dir).
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The PostgreSQL database, `postgres://user@host:port/db`.
        #[arg(long, value_name = "postgres://...")]
        to: String,
    },
}

/// Key operations.
#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Make a new signing key; the old one stays in the JWKS until every token it signed
    /// has expired. A running gateway picks the new key up within a minute.
    Rotate,
}

/// Run a subcommand that changes state, on the configuration the flags and file give:
/// print what it says, or the error (exit 2).
fn state_command(
    cli: Cli,
    name: &str,
    run: impl FnOnce(&Config, u64) -> Result<String, mcp_oauth_gateway::gateway::GatewayError>,
) -> ExitCode {
    use mcp_oauth_gateway::clock::Clock as _;
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config, mcp_oauth_gateway::clock::SystemClock.now()) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `store copy`: a SQLite data dir into an empty PostgreSQL database.
fn copy_store(
    config: &Config,
    from: &str,
    to: &str,
    now: u64,
) -> Result<String, mcp_oauth_gateway::gateway::GatewayError> {
    use mcp_oauth_gateway::config::ConfigError;
    use mcp_oauth_gateway::gateway::shared_keys;
    use mcp_oauth_gateway::store::Store as _;
    use mcp_oauth_gateway::store::postgres::PostgresStore;
    use mcp_oauth_gateway::store::sqlite::SqliteStore;
    let invalid = |key, message: &str| ConfigError::Invalid {
        key,
        message: message.into(),
    };
    let path = from
        .strip_prefix("sqlite:")
        .map(std::path::PathBuf::from)
        .ok_or_else(|| invalid("from", "must be sqlite:PATH (the gateway.db file)"))?;
    if !path.is_file() {
        return Err(invalid("from", &format!("{} is not a file", path.display())).into());
    }
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        return Err(invalid("to", "must be a postgres:// URL").into());
    }
    let source = SqliteStore::open(&path)?;
    let target: std::sync::Arc<dyn mcp_oauth_gateway::store::Store> =
        std::sync::Arc::new(PostgresStore::open(to, config.database_ca_file.as_deref())?);
    let snapshot = source.snapshot()?;
    let keys = shared_keys(config, target.clone())?;
    target.restore(&snapshot)?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let moved = keys.import_dir(dir, now)?;
    Ok(format!(
        "copied {} clients, {} grants, {} refresh tokens, {} consents, {} revocations, {} sessions \
         and {moved} signing keys",
        snapshot.clients.len(),
        snapshot.grants.len(),
        snapshot.refresh.len(),
        snapshot.consents.len(),
        snapshot.revoked.len(),
        snapshot.sessions.len(),
    ))
}

/// `keys rotate`: in the data dir, or in the shared store for the whole fleet.
fn rotate_keys(
    config: &Config,
    now: u64,
) -> Result<String, mcp_oauth_gateway::gateway::GatewayError> {
    use mcp_oauth_gateway::gateway::{open_store, shared_keys};
    use mcp_oauth_gateway::tokens::keys::{ANNOUNCE_AHEAD, SigningKey};
    if config.store == StoreKind::Postgres {
        let keys = shared_keys(config, open_store(config)?)?;
        let kid = keys.rotate(now)?;
        return Ok(format!(
            "new signing key {kid}; every replica publishes it within a minute and signs with it \
             {ANNOUNCE_AHEAD} seconds from now"
        ));
    }
    let kid = SigningKey::rotate(&config.data_dir, config.signing_alg, now)?;
    Ok(format!(
        "new signing key {kid}; a running gateway signs with it within a minute"
    ))
}

fn hash_password_from_stdin() -> ExitCode {
    use std::io::IsTerminal as _;
    // On a terminal: a prompt, and the password is not echoed. From a pipe: one line.
    let line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password (not shown): ")
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    };
    let Ok(line) = line else {
        eprintln!("mcp-oauth-gateway: cannot read the password from standard input");
        return ExitCode::from(2);
    };
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("mcp-oauth-gateway: the password is empty");
        return ExitCode::from(2);
    }
    match mcp_oauth_gateway::secret::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    fn into_config(self) -> Result<Config, mcp_oauth_gateway::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        // Optional settings: a flag given replaces the file's value, an absent one keeps it.
        macro_rules! set_some {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = Some(v); } )* };
        }
        set!(
            proxy_addr,
            mcp_addr,
            routes_addr,
            jwks_addr,
            data_dir,
            access_token_ttl,
            refresh_grace_seconds,
            signing_alg,
            log_format,
            store,
            key_rotation_seconds,
            key_check_seconds
        );
        set_some!(
            upstream_ca_file,
            database_ca_file,
            replica_id,
            database_url,
            key_encryption_key_file,
            audit_log,
            tls_cert,
            tls_key,
            upstream_cmd,
            upstream,
            public_url
        );
        // Blank entries (an empty variable, a trailing comma) are no entries.
        let trusted_proxies: Vec<String> = self
            .trusted_proxies
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if !trusted_proxies.is_empty() {
            c.trusted_proxies = trusted_proxies;
        }
        c.auto_approve |= self.auto_approve;
        c.debug_trace |= self.debug_trace;
        c.insecure_http |= self.insecure_http;
        c.allow_anonymous_consent |= self.allow_anonymous_consent;
        c.validate()?;
        Ok(c)
    }
}

/// Logs go to stderr (text or JSON, level from `RUST_LOG`); security events (target
/// `audit`) also go, as JSON lines, to the audit log when one is named.
fn init_tracing(format: LogFormat, audit_log: Option<&std::path::Path>) -> Result<(), String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rmcp says "session created" and the like at INFO for every MCP session.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let main = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let audit = match audit_log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target("audit", tracing::Level::INFO),
                    ),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(main.with_filter(filter))
        .with(audit)
        .try_init()
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::HashPassword) => return hash_password_from_stdin(),
        Some(Command::Client(args)) => return mcp_oauth_gateway::client::run(*args).await,
        Some(Command::ServeStdio) => {
            // Logs must not touch stdout: it carries the protocol.
            let _ = init_tracing(LogFormat::Text, None);
            let clock = std::sync::Arc::new(mcp_oauth_gateway::clock::SystemClock);
            return match mcp_oauth_gateway::mcp::serve_builtin_stdio(clock).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp-oauth-gateway: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Store {
            action: StoreAction::Copy { from, to },
        }) => {
            let (from, to) = (from.clone(), to.clone());
            return state_command(cli, "store copy", |config, now| {
                copy_store(config, &from, &to, now)
            });
        }
        Some(Command::Keys {
            action: KeysAction::Rotate,
        }) => return state_command(cli, "keys rotate", rotate_keys),
        None => {}
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(config.log_format, config.audit_log.as_deref()) {
        eprintln!("mcp-oauth-gateway: {e}");
        return ExitCode::from(2);
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Every proxied connection holds two sockets (client side, backend side): lift the soft
    // descriptor limit to the hard one so a busy gateway does not run out at 1,024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let gateway = match Gateway::new(config, listeners) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match gateway.run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
