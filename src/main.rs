//! `mcp-oauth-gateway`: parse flags, load config, bind the four listeners, run until
//! Ctrl-C or SIGTERM. Bad config or a port in use: one line on stderr and exit code 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mcp_oauth_gateway::config::sources::{self, Loaded};
use mcp_oauth_gateway::config::{LogFormat, SigningAlg, StoreKind};
use mcp_oauth_gateway::{Config, Gateway, Listeners};

/// OAuth 2.1 gateway for MCP servers.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-oauth-gateway",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MCP_GATEWAY_GIT_REVISION"), ")"),
    about,
    after_help = "Every setting of the config file can also be given as an environment variable \
                  MCP_GATEWAY_<KEY> (a table's key: MCP_GATEWAY_<TABLE>__<KEY>). Flags win over \
                  variables, which win over the file; `config check` shows where each value \
                  came from."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// The settings a running gateway takes from its command line. Each flag given replaces
/// the value of the environment and the file.
#[derive(Debug, Default, Clone, clap::Args, serde::Serialize)]
struct ServeArgs {
    /// TOML config file (every key optional).
    #[arg(long, env = "MCP_GATEWAY_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Public smart proxy address (host:port).
    #[arg(long)]
    proxy_addr: Option<String>,
    /// Protected MCP server address (host:port).
    #[arg(long)]
    mcp_addr: Option<String>,
    /// Authorization server (custom routes) address (host:port).
    #[arg(long)]
    routes_addr: Option<String>,
    /// JWKS server address (host:port).
    #[arg(long)]
    jwks_addr: Option<String>,
    /// The URL clients use (default http://<proxy addr>); it is the issuer.
    #[arg(long)]
    public_url: Option<String>,
    /// Access token lifetime in seconds.
    #[arg(long)]
    access_token_ttl: Option<u64>,
    /// Seconds a rotated refresh token keeps working while its successor is unused.
    #[arg(long)]
    refresh_grace_seconds: Option<u64>,
    /// Approve every authorization request without a consent page (development only).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    auto_approve: Option<bool>,
    /// Allow a plain-http public URL on a non-loopback host.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    insecure_http: Option<bool>,
    /// On a public URL, let anyone approve consent without signing in (not recommended).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    allow_anonymous_consent: Option<bool>,
    /// Serve the public listener over TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Rotate the signing key when it is this many seconds old (0: never).
    #[arg(long)]
    key_rotation_seconds: Option<u64>,
    /// Keep a trace of recent proxied requests at /debug/requests (for debugging clients).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    debug_trace: Option<bool>,
    /// Protect this streamable-HTTP MCP server instead of the built-in one.
    #[arg(long)]
    upstream: Option<String>,
    /// CA certificates (PEM) for an https --upstream with a private CA (else the system's roots).
    #[arg(long)]
    upstream_ca_file: Option<PathBuf>,
    /// Spawn this stdio MCP server and protect it instead of the built-in one.
    #[arg(long)]
    upstream_cmd: Option<String>,
    /// Also write security events as JSON lines to this file.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// A load balancer or proxy in front of the gateway (an address or a network such as
    /// 10.0.0.0/8) whose X-Forwarded-For entries are believed; repeat for several, or give
    /// a comma-separated list. Replaces the file's list.
    #[arg(
        long = "trusted-proxy",
        value_name = "ADDR_OR_CIDR",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trusted_proxies: Vec<String>,
    /// This replica's name behind a balancer: MCP session ids start with `<id>.`, so the
    /// balancer can route a session to its replica (see deploy/nginx.conf).
    #[arg(long)]
    replica_id: Option<String>,
    /// How often to re-read the signing keys (a rotation made elsewhere), seconds, 1 to 60.
    #[arg(long)]
    key_check_seconds: Option<u64>,
    /// A listener of its own for /metrics, /healthz and /readyz (host:port).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Log format.
    #[arg(long, value_enum, ignore_case = true)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    #[serde(flatten)]
    state: StateArgs,
}

/// The settings of the gateway's state: where it is kept and how its keys are made.
#[derive(Debug, Default, Clone, clap::Args, serde::Serialize)]
struct StateArgs {
    /// Where signing keys (and the SQLite store) live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Signing algorithm of access tokens.
    #[arg(long, value_enum, ignore_case = true)]
    signing_alg: Option<SigningAlg>,
    /// Storage backend.
    #[arg(long, value_enum, ignore_case = true)]
    store: Option<StoreKind>,
    /// The PostgreSQL database of --store postgres (postgres://user:password@host:port/db);
    /// prefer MCP_GATEWAY_DATABASE_URL_FILE, which keeps the password out of `ps`.
    #[arg(long)]
    database_url: Option<String>,
    /// CA certificates (PEM) for the database server's certificate (sslmode=require against
    /// a private CA); the system's roots otherwise.
    #[arg(long)]
    database_ca_file: Option<PathBuf>,
    /// A file with the key that encrypts signing keys in a shared store (32 random bytes,
    /// base64). MCP_GATEWAY_KEY_ENCRYPTION_KEY may give the key itself.
    #[arg(long)]
    key_encryption_key_file: Option<PathBuf>,
}

/// The TOML file of the state subcommands (`keys`, `store`, `admin`).
#[derive(Debug, Default, Clone, clap::Args)]
struct StateCommandArgs {
    /// TOML config file (every key optional).
    #[arg(long, env = "MCP_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
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
    /// Check the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The operator's page on the command line: list clients and grants, revoke one, on
    /// the store the configuration names (a running gateway follows within a second).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

/// The operator's commands.
#[derive(Debug, clap::Subcommand)]
enum AdminAction {
    /// List the clients: those the config pins and those registered, with their live
    /// grants.
    Clients {
        /// Print a JSON array of objects instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: StateCommandArgs,
    },
    /// List the live grants: who approved which client, with what scopes, until when.
    Grants {
        /// Print a JSON array of objects instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: StateCommandArgs,
    },
    /// Revoke a grant or a client, as the page's Revoke button does.
    ///
    /// A grant's tokens stop working and the person is asked again; a client is deleted
    /// (unless the config pins it) and all its grants revoked. Asks first on a terminal;
    /// elsewhere needs --yes. Exit code 2 for an unknown id or a missing --yes.
    Revoke {
        /// The grant to revoke (an id `admin grants` lists).
        // Ids are base64url: one may start with `-`, which is still the value.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "client",
            conflicts_with = "client",
            allow_hyphen_values = true
        )]
        grant: Option<String>,
        /// The client to revoke (an id `admin clients` lists).
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        client: Option<String>,
        /// Revoke without asking.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        args: StateCommandArgs,
    },
}

/// Configuration tools.
#[derive(Debug, clap::Subcommand)]
enum ConfigAction {
    /// Validate the configuration (file, MCP_GATEWAY_* variables and these flags) and print
    /// the effective settings, secrets redacted, each with where its value came from. Exit
    /// code 2 when it cannot be used.
    Check(Box<ServeArgs>),
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
        #[command(flatten)]
        args: StateCommandArgs,
    },
}

/// Key operations.
#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Make a new signing key; the old one stays in the JWKS until every token it signed
    /// has expired. A running gateway picks the new key up within a minute.
    Rotate(StateCommandArgs),
}

/// Run a subcommand that changes state, on the configuration the flags and file give:
/// print what it says, or the error (exit 2).
fn state_command(
    args: StateCommandArgs,
    name: &str,
    run: impl FnOnce(&Config, u64) -> Result<String, mcp_oauth_gateway::gateway::GatewayError>,
) -> ExitCode {
    use mcp_oauth_gateway::clock::Clock as _;
    let config = match load_config(args.config.as_deref(), &args.state) {
        Ok(loaded) => loaded.config,
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

/// `admin clients|grants|revoke`: on the store the configuration names (exit 2 when it
/// cannot be opened).
fn admin_command(action: AdminAction) -> ExitCode {
    use mcp_oauth_gateway::admin::cli::{self, Action, Target};
    use mcp_oauth_gateway::clock::Clock as _;
    let (args, action) = match action {
        AdminAction::Clients { json, args } => (args, Action::Clients { json }),
        AdminAction::Grants { json, args } => (args, Action::Grants { json }),
        AdminAction::Revoke {
            grant,
            client,
            yes,
            args,
        } => {
            let target = match (grant, client) {
                (Some(id), _) => Target::Grant(id),
                (None, Some(id)) => Target::Client(id),
                (None, None) => {
                    eprintln!("mcp-oauth-gateway: admin revoke: give --grant ID or --client ID");
                    return ExitCode::from(2);
                }
            };
            (args, Action::Revoke { target, yes })
        }
    };
    let config = match load_config(args.config.as_deref(), &args.state) {
        Ok(loaded) => loaded.config,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli::check_store(&config) {
        eprintln!("mcp-oauth-gateway: admin: {e}");
        return ExitCode::from(2);
    }
    let store = match mcp_oauth_gateway::gateway::open_store(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mcp-oauth-gateway: admin: {e}");
            return ExitCode::from(2);
        }
    };
    cli::run(
        store.as_ref(),
        &config,
        action,
        mcp_oauth_gateway::clock::SystemClock.now(),
    )
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

/// The configuration of the file, the environment and the flags `args` (a serializable
/// struct of the flags given: absent ones are `None` and set nothing).
fn load_config(
    file: Option<&std::path::Path>,
    args: &impl serde::Serialize,
) -> Result<Loaded, mcp_oauth_gateway::config::ConfigError> {
    let flags =
        toml::Table::try_from(args).map_err(|e| mcp_oauth_gateway::config::ConfigError::Layer {
            message: e.to_string(),
        })?;
    sources::load(file, flags)
}

/// `config check`: the effective configuration and where each value came from, or why it
/// cannot be used (exit code 2).
fn config_check(args: &ServeArgs) -> ExitCode {
    match load_config(args.config.as_deref(), args).and_then(|l| Ok((l.report()?, l.ignored))) {
        Ok((report, ignored)) => {
            for warning in ignored {
                eprintln!("mcp-oauth-gateway: warning: {warning}");
            }
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            ExitCode::from(2)
        }
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

/// mimalloc: per-thread free lists for every size hyper's buffers come in (glibc's malloc
/// took about a tenth of a proxied request's time), with memory freed after a burst given
/// back to the system (`.cargo/config.toml` builds it to commit arena memory lazily).
/// Figures in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            action: StoreAction::Copy { from, to, args },
        }) => {
            return state_command(args, "store copy", |config, now| {
                copy_store(config, &from, &to, now)
            });
        }
        Some(Command::Keys {
            action: KeysAction::Rotate(args),
        }) => return state_command(args, "keys rotate", rotate_keys),
        Some(Command::Config {
            action: ConfigAction::Check(args),
        }) => return config_check(&args),
        Some(Command::Admin { action }) => return admin_command(action),
        None => {}
    }
    let (config, ignored) = match load_config(cli.serve.config.as_deref(), &cli.serve) {
        Ok(loaded) => (loaded.config, loaded.ignored),
        Err(e) => {
            eprintln!("mcp-oauth-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(config.log_format, config.audit_log.as_deref()) {
        eprintln!("mcp-oauth-gateway: {e}");
        return ExitCode::from(2);
    }
    for warning in ignored {
        tracing::warn!("{warning}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_start_with_a_hyphen_are_values() {
        // Ids are base64url: about one in 64 starts with `-`.
        let cli = Cli::try_parse_from([
            "mcp-oauth-gateway",
            "admin",
            "revoke",
            "--grant",
            "-Gx3k",
            "--yes",
        ])
        .expect("parses");
        let Some(Command::Admin {
            action: AdminAction::Revoke { grant, yes, .. },
        }) = cli.command
        else {
            panic!("not admin revoke: {:?}", cli.command);
        };
        assert_eq!(grant.as_deref(), Some("-Gx3k"));
        assert!(yes);
    }
}
