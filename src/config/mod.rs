//! Configuration: one [`Config`] read from a TOML file (every key optional), overridden by
//! `MCP_GATEWAY_*` variables and then flags ([`sources`]), and checked once by
//! [`Config::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

pub mod sources;

/// Everything the gateway can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The public smart proxy: the one address users paste into an MCP client.
    #[serde(deserialize_with = "host_port")]
    pub proxy_addr: SocketAddr,
    /// The OAuth-protected MCP server (resource server).
    #[serde(deserialize_with = "host_port")]
    pub mcp_addr: SocketAddr,
    /// The custom routes: authorization server endpoints.
    #[serde(deserialize_with = "host_port")]
    pub routes_addr: SocketAddr,
    /// The JWKS server.
    #[serde(deserialize_with = "host_port")]
    pub jwks_addr: SocketAddr,
    /// The URL clients use; defaults to `http://<proxy addr>` once the proxy is bound.
    /// It is the issuer, and `<public_url>/mcp` is the protected resource.
    pub public_url: Option<String>,
    /// Where signing keys (and later state) are kept.
    pub data_dir: PathBuf,
    /// `text` or `json`.
    #[serde(deserialize_with = "any_case")]
    pub log_format: LogFormat,
    /// Access token lifetime, seconds.
    pub access_token_ttl: u64,
    /// Refresh token lifetime, seconds (the whole family expires this long after the login).
    pub refresh_token_ttl: u64,
    /// After a refresh token is rotated, how long it still works while its successor has not
    /// been used (clients refresh concurrently and lose responses), seconds.
    pub refresh_grace_seconds: u64,
    /// Authorization code lifetime, seconds (at most 600).
    pub code_ttl: u64,
    /// How long a consent page stays answerable, seconds.
    pub consent_ttl: u64,
    /// Clock skew tolerated on `exp`/`nbf` of tokens from other issuers (external IdP,
    /// shared secret), seconds. The gateway's own tokens get none: one clock signs and checks.
    pub leeway_seconds: u64,
    /// `ES256` (default) or `RS256`.
    #[serde(deserialize_with = "any_case")]
    pub signing_alg: SigningAlg,
    /// Approve every authorization request without showing the consent page.
    /// For development only; off by default. Off loopback it needs `allow_anonymous_consent`.
    pub auto_approve: bool,
    /// Let anyone who reaches a public (non-loopback) gateway approve consent as the local
    /// user, without signing in. Off by default: a public gateway then needs `[[users]]`
    /// with passwords. Logged as a warning at every start when it takes effect.
    pub allow_anonymous_consent: bool,
    /// Initial access tokens (RFC 7591 §3): a registration that presents one as a bearer
    /// token may ask for `client_credentials`. Without one, dynamic registration only
    /// creates clients that need a person's consent.
    pub initial_access_tokens: Vec<InitialAccessToken>,
    /// The `sub` of the one local user who approves consent.
    pub user: String,
    /// Client registrations accepted per source address per minute.
    pub register_rate_per_minute: u32,
    /// Token requests accepted per source address per minute (0: unlimited).
    pub token_rate_per_minute: u32,
    /// Authorization requests accepted per source address per minute (0: unlimited).
    pub authorize_rate_per_minute: u32,
    /// Authorization requests awaiting consent plus codes not yet redeemed, at most, for all
    /// clients together; past it a new `/authorize` request evicts the oldest waiting one
    /// (pending requests before codes), so the cap bounds memory but never refuses (0: no cap).
    pub max_pending_authorizations: usize,
    /// The same cap for each client, evicting that client's oldest (0: no cap).
    pub max_pending_per_client: usize,
    /// Allow a plain-http public URL on a non-loopback host (behind a TLS-terminating load
    /// balancer, give `public_url = "https://..."` instead).
    pub insecure_http: bool,
    /// Make a new signing key when the current one is this old, seconds (0: never). The
    /// old key stays in the JWKS until every token it signed has expired.
    pub key_rotation_seconds: u64,
    /// PEM certificate chain for TLS on the public listener (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the public listener (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Browser origins allowed on the MCP endpoint besides loopback and the public origin.
    #[serde(deserialize_with = "one_or_list")]
    pub allowed_origins: Vec<String>,
    /// How long the proxy waits for a backend's response headers, seconds. Bodies (SSE
    /// streams) are not cut by it.
    pub upstream_timeout_seconds: u64,
    /// On SIGTERM or Ctrl-C, how long open connections (SSE streams included) may take to
    /// finish before the gateway closes them and exits, seconds.
    pub shutdown_timeout_seconds: u64,
    /// CA certificates (PEM) that sign an https `upstream`'s certificate (a private CA);
    /// the system's roots otherwise.
    pub upstream_ca_file: Option<PathBuf>,
    /// A client certificate (PEM, then intermediates) for an https upstream that asks for
    /// one, with `upstream_client_key`.
    pub upstream_client_cert: Option<PathBuf>,
    /// The private key (PEM) of `upstream_client_cert`.
    pub upstream_client_key: Option<PathBuf>,
    /// A connection whose request headers are not complete this long after it opened (or
    /// after the previous response) is closed, seconds.
    pub header_read_timeout_seconds: u64,
    /// An idle keep-alive connection is closed after this long, seconds.
    pub idle_timeout_seconds: u64,
    /// Open connections accepted from one source address at a time on the public listener
    /// (0: no cap); past it new connections are closed at once.
    pub max_connections_per_source: usize,
    /// Load balancers and proxies in front of the gateway (networks like `10.0.0.0/8` or
    /// single addresses, IPv4 and IPv6) whose `X-Forwarded-For` entries are believed when
    /// telling where a request came from (rate limits, security events). Empty: only the
    /// gateway's own proxy is believed.
    #[serde(deserialize_with = "one_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Where clients, grants and tokens are kept.
    #[serde(deserialize_with = "any_case")]
    pub store: StoreKind,
    /// How often each gateway re-reads its signing keys (a rotation by `keys rotate` or by
    /// another replica), seconds, 1 to 60. A new key of a fleet is published 120 s before it
    /// signs, so every replica has it first.
    pub key_check_seconds: u64,
    /// This replica's name among several behind one balancer (`[a-z0-9-]`, at most 32):
    /// the MCP session ids it hands out start with `<replica_id>.`, so the balancer can send
    /// a session's requests to the replica that holds it (`deploy/nginx.conf`), and a
    /// session id of another replica gets 404 here.
    pub replica_id: Option<String>,
    /// The database of `store = "postgres"`: `postgres://user:password@host:port/db`, with
    /// `?sslmode=require` for TLS. Never logged: it may carry a password.
    pub database_url: Option<DatabaseUrl>,
    /// Or a file holding that URL (a systemd credential, a mounted secret).
    pub database_url_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign the database server's certificate, for
    /// `sslmode=require` against a private CA; the system's roots otherwise.
    pub database_ca_file: Option<PathBuf>,
    /// A file holding the key that encrypts signing keys in a shared store: 32 random bytes,
    /// base64 (`openssl rand -base64 32`). `MCP_GATEWAY_KEY_ENCRYPTION_KEY` gives the key
    /// itself instead. Required with `store = "postgres"`.
    pub key_encryption_key_file: Option<PathBuf>,
    /// Registered clients that obtain no token for this long are forgotten, seconds
    /// (0: never). Pre-registered clients never expire.
    pub client_ttl_seconds: u64,
    /// Clients the operator registers in advance (`[[clients]]`).
    pub clients: Vec<ClientConfig>,
    /// Who issues the tokens the resource server accepts.
    #[serde(deserialize_with = "any_case")]
    pub auth_mode: AuthMode,
    /// The external issuer, for `auth_mode = "external"`.
    pub external: ExternalConfig,
    /// The shared secret, for `auth_mode = "shared_secret"`.
    pub shared_secret: SharedSecretConfig,
    /// Static API keys beside the chosen mode.
    pub api_keys: ApiKeysConfig,
    /// An existing streamable-HTTP MCP server to protect instead of the built-in one.
    pub upstream: Option<String>,
    /// A stdio MCP server to spawn and protect instead of the built-in one.
    pub upstream_cmd: Option<String>,
    /// One child per MCP session instead of one shared by all.
    pub upstream_cmd_per_session: bool,
    /// The environment of `upstream_cmd` children: they get PATH, HOME, LANG, TZ and what
    /// this names, never the gateway's own environment.
    pub upstream_env: UpstreamEnv,
    /// Headers sent to the upstream on every request (its own credential, say).
    pub upstream_headers: BTreeMap<String, String>,
    /// Headers carrying the verified identity to the upstream.
    pub identity_headers: IdentityHeaders,
    /// How the public proxy reaches the gateway's own listeners: `in_process` hands the
    /// request to the listener's router in memory (no loopback TCP, no second HTTP parse);
    /// `network` sends it over loopback TCP as to any backend.
    #[serde(deserialize_with = "any_case")]
    pub proxy_hop: ProxyHop,
    /// Several MCP servers behind one gateway (`[[routes]]`), each its own protected
    /// resource at its own path. Empty: one, at `/mcp` (`upstream`, `upstream_cmd`, or the
    /// built-in server).
    pub routes: Vec<RouteConfig>,
    /// Accept Client ID Metadata Documents: a `client_id` that is an https URL is fetched and
    /// validated instead of being registered (MCP 2025-11-25).
    pub cimd_enabled: bool,
    /// Development only: let metadata documents live on http loopback or private hosts.
    pub cimd_allow_loopback_http: bool,
    /// Users who may approve consent (`[[users]]`). Empty: the one local user `user`.
    pub users: Vec<UserConfig>,
    /// Identity providers a person signs in at before consent (`[[identity_providers]]`):
    /// the sign-in page offers one button per provider, beside any `[[users]]` passwords.
    pub identity_providers: Vec<IdentityProviderConfig>,
    /// How long a browser stays signed in, seconds.
    pub session_ttl_seconds: u64,
    /// How long an approval is remembered per (user, client), so reconnecting clients are
    /// not asked again, seconds (0: ask every time).
    pub remember_consent_seconds: u64,
    /// Serve `/metrics` through the public proxy too (it is always on the routes listener).
    pub metrics_public: bool,
    /// A listener of its own for `/metrics`, `/healthz` and `/readyz` (say on the address a
    /// Prometheus scraper reaches), besides the routes listener.
    #[serde(deserialize_with = "opt_host_port")]
    pub metrics_addr: Option<SocketAddr>,
    /// Write security events (target `audit`) as JSON lines to this file as well.
    pub audit_log: Option<PathBuf>,
    /// Keep a trace of recent proxied requests, served at `/debug/requests`.
    pub debug_trace: bool,
    /// Write one line per request through the public proxy (target `access`): method, path,
    /// route, status, duration, client address, request id and W3C trace id.
    pub access_log: bool,
    /// Scopes and the policy that maps MCP methods and tools to them.
    pub scopes: ScopeConfig,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Who issues the tokens the resource server accepts.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// The gateway's own authorization server.
    #[default]
    Builtin,
    /// An external OAuth/OIDC issuer; the built-in authorization endpoints are off.
    External,
    /// HS256 JWTs of an existing application; the built-in authorization endpoints are off.
    SharedSecret,
}

/// An external issuer (Keycloak, Auth0, Entra, any OIDC provider).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// The issuer URL, exactly as its tokens' `iss` says.
    pub issuer: String,
    /// The audience tokens must name (required: an IdP's default audience enables replay).
    pub audience: String,
    /// JWKS URI; discovered from the issuer's metadata when absent.
    pub jwks_uri: Option<String>,
    /// Further issuers whose tokens are accepted (same keys).
    pub allowed_issuers: Vec<String>,
    /// How long fetched keys are trusted before a refetch, seconds.
    pub jwks_ttl_seconds: u64,
    /// RFC 7662 introspection endpoint, for opaque (non-JWT) access tokens.
    pub introspection_endpoint: Option<String>,
    /// Our client id at the introspection endpoint.
    pub introspection_client_id: Option<String>,
    /// Environment variable holding our client secret there.
    pub introspection_secret_env: String,
    /// Or a file holding it (takes precedence).
    pub introspection_secret_file: Option<PathBuf>,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_uri: None,
            allowed_issuers: Vec::new(),
            jwks_ttl_seconds: 300,
            introspection_endpoint: None,
            introspection_client_id: None,
            introspection_secret_env: "MCP_GATEWAY_INTROSPECTION_SECRET".into(),
            introspection_secret_file: None,
        }
    }
}

/// HS256 tokens of an existing application.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedSecretConfig {
    /// The `iss` the application puts in its tokens.
    pub issuer: String,
    /// The `aud` they must carry.
    pub audience: String,
    /// Environment variable holding the secret.
    pub secret_env: String,
    /// Or a file holding it (takes precedence).
    pub secret_file: Option<PathBuf>,
}

impl Default for SharedSecretConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            secret_env: "MCP_GATEWAY_SHARED_SECRET".into(),
            secret_file: None,
        }
    }
}

/// Static API keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// Accept API keys as bearer tokens.
    pub enabled: bool,
    /// TOML file of `[[keys]]` with `name`, `sha256`, `scopes`.
    pub file: Option<PathBuf>,
    /// Log a warning once a day per key still in use.
    pub deprecated: bool,
}

/// Names of the headers that carry the verified identity to an upstream MCP server; each
/// is sent only when named. Values the client sent under these names are dropped.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    /// The token's `sub` (e.g. `X-MCP-Subject`).
    pub subject: Option<String>,
    /// The granted scopes, space separated (e.g. `X-MCP-Scopes`).
    pub scopes: Option<String>,
    /// The OAuth client (e.g. `X-MCP-Client-Id`).
    pub client_id: Option<String>,
    /// The person's email, when they signed in through an identity provider.
    pub email: Option<String>,
    /// The person's display name, likewise.
    pub name: Option<String>,
    /// The identity provider's access token for the person (e.g. `X-Upstream-Token`), so
    /// the upstream's tools can call the provider's APIs as them. Never sent to MCP clients.
    pub upstream_token: Option<String>,
}

/// How the public proxy reaches the gateway's own listeners.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ProxyHop {
    /// The listener's router, called in memory.
    #[default]
    InProcess,
    /// Loopback TCP to the listener.
    Network,
}

/// One MCP server behind the gateway at its own path (`[[routes]]`): its own protected
/// resource (`<public_url><path>`, with RFC 9728 metadata at
/// `/.well-known/oauth-protected-resource<path>`), and tokens bound to it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Where it is served, e.g. `/github/mcp`.
    pub path: String,
    /// A streamable-HTTP MCP server (http or https).
    pub upstream: Option<String>,
    /// Or a stdio MCP server to spawn, one child per session. Neither: the built-in server.
    pub upstream_cmd: Option<String>,
    /// Headers sent to this upstream on every request.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
    /// Headers carrying the verified identity to this upstream (default: the top-level
    /// `[identity_headers]`).
    pub identity_headers: Option<IdentityHeaders>,
    /// Tool name -> required scope, for this route (default: `[scopes.tools]`).
    pub tools: Option<BTreeMap<String, String>>,
    /// Required scope for tools not listed (default: `scopes.default_tool`).
    pub default_tool: Option<String>,
}

impl RouteConfig {
    /// The route's scope policy: the top-level one, with this route's tools.
    pub fn scopes(&self, top: &ScopeConfig) -> ScopeConfig {
        let mut s = top.clone();
        if let Some(tools) = &self.tools {
            s.tools = tools.clone();
        }
        if let Some(t) = &self.default_tool {
            s.default_tool = t.clone();
        }
        s
    }
}

/// Which protocol an identity provider speaks.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenID Connect: discovery, authorization code with PKCE, a verified ID token.
    Oidc,
    /// GitHub's OAuth apps: identity from its user API.
    Github,
}

/// One identity provider (`[[identity_providers]]`). Register `<public_url>/login/callback`
/// as the redirect URI at the provider.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// A short name for logs and the store (`[a-z0-9-]`); defaults to the kind (`oidc`,
    /// `github`). Changing it does not change who anyone is.
    pub id: Option<String>,
    /// The protocol.
    #[serde(deserialize_with = "any_case")]
    pub kind: ProviderKind,
    /// The button's label ("Sign in with …"); defaults to the issuer's host or `GitHub`.
    pub name: Option<String>,
    /// The OIDC issuer; its metadata is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: Option<String>,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// The environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Or a file holding it (a systemd credential, a mounted secret).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked of the provider; default `openid email profile` (OIDC) or
    /// `read:user user:email read:org` (GitHub).
    pub scopes: Option<Vec<String>>,
    /// The ID token or userinfo claim listing the person's groups (OIDC), e.g. `groups`.
    pub groups_claim: Option<String>,
    /// GitHub's authorization endpoint (GitHub Enterprise: `https://HOST/login/oauth/authorize`).
    pub authorize_url: Option<String>,
    /// GitHub's token endpoint.
    pub token_url: Option<String>,
    /// GitHub's REST API (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// People whose verified email is one of these may sign in.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// People whose verified email is at one of these domains may sign in.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// People in one of these groups may sign in (OIDC: the `groups_claim`; GitHub: an
    /// organisation `acme` or a team `acme/platform`).
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Everyone who can sign in at the provider may use the gateway. Without it, at least
    /// one `allowed_*` rule is required: a public provider has the whole world as users.
    #[serde(default)]
    pub allow_all_users: bool,
    /// What a person may grant, by group, domain or email; a person matching several rules
    /// gets the union. With no rules, every offered scope.
    #[serde(default)]
    pub scope_rules: Vec<ScopeRule>,
}

/// Scopes for the people a rule matches (`[[identity_providers.scope_rules]]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeRule {
    /// Verified emails.
    pub emails: Vec<String>,
    /// Email domains.
    pub domains: Vec<String>,
    /// Groups (see `allowed_groups`).
    pub groups: Vec<String>,
    /// What they may grant.
    pub scopes: Vec<String>,
}

impl IdentityProviderConfig {
    /// The provider's id: configured, or its kind.
    pub fn id(&self) -> &str {
        match (&self.id, self.kind) {
            (Some(id), _) => id,
            (None, ProviderKind::Oidc) => "oidc",
            (None, ProviderKind::Github) => "github",
        }
    }
}

/// The environment given to `upstream_cmd` children besides PATH, HOME, LANG and TZ.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamEnv {
    /// Variables passed through from the gateway's environment when set there.
    pub pass: Vec<String>,
    /// Variables set to these values.
    pub set: BTreeMap<String, String>,
}

/// An initial access token (RFC 7591 §3) the operator hands to whoever may register
/// clients that obtain tokens without a person (`client_credentials`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitialAccessToken {
    /// Who holds it; named in audit events.
    pub name: String,
    /// SHA-256 of the token, base64url without padding (as for client secrets).
    pub sha256: String,
    /// Scopes a client registered with it may obtain at most (space separated; default:
    /// all offered).
    #[serde(default)]
    pub scope: Option<String>,
}

/// A user who can sign in and approve consent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name; the `sub` of their tokens.
    pub name: String,
    /// Argon2 hash (`mcp-oauth-gateway hash-password`); absent: no password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Scopes the user may grant (default: all offered).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// May sign in to the operator's page (`/admin`) and revoke clients and grants there.
    /// Once any user is an admin, the page asks everyone to sign in, also on loopback; an
    /// admin needs a `password_hash`.
    #[serde(default)]
    pub admin: bool,
}

/// A pre-registered client.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's id.
    pub client_id: String,
    /// Shown on the consent page.
    #[serde(default)]
    pub client_name: Option<String>,
    /// SHA-256 of the secret, base64url without padding; absent for a public client.
    #[serde(default)]
    pub secret_sha256: Option<String>,
    /// Allowed redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Allowed grants (default: authorization_code, refresh_token).
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// Scopes the client may obtain (space separated; default: all offered).
    #[serde(default)]
    pub scope: Option<String>,
    /// `client_secret_basic` (default with a secret) or `client_secret_post`.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// A resource server that may introspect any token (RFC 7662); other clients may
    /// introspect only their own. Needs a secret.
    #[serde(default)]
    pub introspect: bool,
}

impl ClientConfig {
    /// The client record this entry pins.
    pub fn to_client(&self, now: u64) -> crate::store::Client {
        let confidential = self.secret_sha256.is_some();
        crate::store::Client {
            client_id: self.client_id.clone(),
            client_name: self.client_name.clone(),
            redirect_uris: self.redirect_uris.clone(),
            grant_types: self
                .grant_types
                .clone()
                .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]),
            token_endpoint_auth_method: match (&self.token_endpoint_auth_method, confidential) {
                (Some(m), true) => m.clone(),
                (None, true) => "client_secret_basic".into(),
                (_, false) => "none".into(),
            },
            scope: self.scope.clone(),
            created_at: now,
            secret_hash: self.secret_sha256.clone(),
            last_used_at: now,
            pinned: true,
        }
    }
}

/// The database URL of the PostgreSQL store. It may carry a password, so its `Debug` (the
/// config's) shows none of it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for the driver.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

/// Shown (by `config check`) without its password.
impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("redacted"));
                s.serialize_str(url.as_str())
            }
            Ok(_) => s.serialize_str(&self.0),
            Err(_) => s.serialize_str("<redacted>"),
        }
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// The storage backend.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An embedded SQLite database in the data dir: state survives restarts.
    #[default]
    Sqlite,
    /// In memory: state is lost on restart.
    Memory,
    /// A PostgreSQL database (`database_url`) that several replicas share.
    Postgres,
}

/// The JWS algorithm of access tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256.
    #[default]
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    RS256,
}

/// Scopes offered and the scope policy (only what an operation needs is asked for).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeConfig {
    /// Scopes the authorization server offers (`scopes_supported`).
    pub supported: Vec<String>,
    /// Scopes granted when an authorization request names none.
    pub default: Vec<String>,
    /// Scope hierarchy: a scope grants every scope listed for it.
    pub implies: BTreeMap<String, Vec<String>>,
    /// MCP method -> required scope. An empty string means any valid token.
    pub methods: BTreeMap<String, String>,
    /// Required scope for methods not listed in `methods`.
    pub default_method: String,
    /// Tool name -> required scope for `tools/call` (and visibility in `tools/list`).
    pub tools: BTreeMap<String, String>,
    /// Required scope for tools not listed in `tools`.
    pub default_tool: String,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        let s = |v: &str| v.to_string();
        Self {
            supported: vec![s("mcp:read"), s("mcp:write"), s("mcp:admin")],
            default: vec![s("mcp:read"), s("mcp:write")],
            implies: BTreeMap::from([
                (s("mcp:admin"), vec![s("mcp:write"), s("mcp:read")]),
                (s("mcp:write"), vec![s("mcp:read")]),
            ]),
            methods: BTreeMap::from([
                (s("initialize"), String::new()),
                (s("ping"), String::new()),
                (s("server/discover"), String::new()),
            ]),
            default_method: s("mcp:read"),
            tools: BTreeMap::from([(s("add_note"), s("mcp:write"))]),
            default_tool: s("mcp:read"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            proxy_addr: local(3002),
            mcp_addr: local(3001),
            routes_addr: local(3003),
            jwks_addr: local(3004),
            public_url: None,
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Text,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            refresh_grace_seconds: 60,
            code_ttl: 300,
            consent_ttl: 600,
            leeway_seconds: 10,
            signing_alg: SigningAlg::ES256,
            auto_approve: false,
            allow_anonymous_consent: false,
            initial_access_tokens: Vec::new(),
            user: "local-user".to_string(),
            register_rate_per_minute: 60,
            token_rate_per_minute: 600,
            authorize_rate_per_minute: 300,
            max_pending_authorizations: 10_000,
            max_pending_per_client: 100,
            insecure_http: false,
            key_rotation_seconds: 30 * 24 * 3600,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            upstream_timeout_seconds: 30,
            shutdown_timeout_seconds: 10,
            upstream_ca_file: None,
            upstream_client_cert: None,
            upstream_client_key: None,
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 120,
            max_connections_per_source: 512,
            trusted_proxies: Vec::new(),
            store: StoreKind::Sqlite,
            key_check_seconds: 60,
            replica_id: None,
            database_url: None,
            database_ca_file: None,
            database_url_file: None,
            key_encryption_key_file: None,
            client_ttl_seconds: 30 * 24 * 3600,
            clients: Vec::new(),
            auth_mode: AuthMode::Builtin,
            external: ExternalConfig::default(),
            shared_secret: SharedSecretConfig::default(),
            api_keys: ApiKeysConfig::default(),
            upstream: None,
            upstream_cmd: None,
            upstream_cmd_per_session: true,
            upstream_env: UpstreamEnv::default(),
            upstream_headers: BTreeMap::new(),
            identity_headers: IdentityHeaders::default(),
            routes: Vec::new(),
            proxy_hop: ProxyHop::default(),
            cimd_enabled: true,
            cimd_allow_loopback_http: false,
            users: Vec::new(),
            identity_providers: Vec::new(),
            session_ttl_seconds: 12 * 3600,
            remember_consent_seconds: 30 * 24 * 3600,
            debug_trace: false,
            access_log: false,
            metrics_public: false,
            metrics_addr: None,
            audit_log: None,
            scopes: ScopeConfig::default(),
        }
    }
}

/// A configuration that cannot be used, with what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value from the environment or a flag does not fit its key.
    #[error("invalid setting: {message}")]
    Layer {
        /// The key, where it was set, and what is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config value for `{key}`: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Read a TOML file; keys it does not name keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: with_suggestion(&e.to_string()),
        })
    }

    /// A configuration for tests: every listener on an ephemeral loopback port.
    pub fn for_test(data_dir: PathBuf) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            proxy_addr: any,
            mcp_addr: any,
            routes_addr: any,
            jwks_addr: any,
            data_dir,
            ..Self::default()
        }
    }

    /// Whether the public URL's host is a loopback address (or `localhost`): the gateway
    /// is reachable only from this machine. Without a public URL, the proxy's address says.
    pub fn public_host_is_loopback(&self) -> bool {
        let url_host_is_loopback = |u: &Url| match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match &self.public_url {
            Some(url) => Url::parse(url).is_ok_and(|u| url_host_is_loopback(&u)),
            None => self.proxy_addr.ip().is_loopback(),
        }
    }

    /// Whether a person must sign in before approving consent: there are users or identity
    /// providers, and every user has a password.
    pub fn sign_in_required(&self) -> bool {
        let passwords = self.users.iter().all(|u| u.password_hash.is_some());
        passwords && (!self.users.is_empty() || !self.identity_providers.is_empty())
    }

    /// Conditions that are allowed but that the operator should hear about at every start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.auth_mode == AuthMode::Builtin
            && self.allow_anonymous_consent
            && !self.public_host_is_loopback()
            && (self.auto_approve || !self.sign_in_required())
        {
            out.push(
                "allow_anonymous_consent = true on a public URL: anyone who reaches this gateway can approve consent and get tokens"
                    .to_string(),
            );
        }
        out
    }

    /// Check values that types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_string(),
        };
        if let Some(url) = &self.public_url {
            let parsed = Url::parse(url).map_err(|e| invalid("public_url", &e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid("public_url", "must be an http or https URL"));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(invalid("public_url", "must not have a query or fragment"));
            }
        }
        if let Some(id) = &self.replica_id
            && (id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(invalid("replica_id", "must be 1 to 32 of a-z, 0-9 and -"));
        }
        if !(1..=60).contains(&self.key_check_seconds) {
            return Err(invalid(
                "key_check_seconds",
                "must be 1 to 60 (a fleet announces a new key 120 s before it signs)",
            ));
        }
        match (
            self.store,
            self.database_url.as_ref().map(DatabaseUrl::as_str),
        ) {
            (StoreKind::Postgres, None) => {
                return Err(invalid(
                    "database_url",
                    "store = \"postgres\" needs database_url (--database-url, MCP_GATEWAY_DATABASE_URL)",
                ));
            }
            (StoreKind::Postgres, Some(url)) => {
                let scheme = url.split_once("://").map(|(s, _)| s);
                if !matches!(scheme, Some("postgres" | "postgresql")) {
                    return Err(invalid(
                        "database_url",
                        "must be a postgres://user@host:port/database URL",
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "database_url",
                    "is only used with store = \"postgres\"",
                ));
            }
            (_, None) => {}
        }

        if self.upstream.is_some() && self.upstream_cmd.is_some() {
            return Err(invalid(
                "upstream_cmd",
                "give either upstream or upstream_cmd, not both",
            ));
        }
        if self.upstream_client_cert.is_some() != self.upstream_client_key.is_some() {
            return Err(invalid(
                "upstream_client_cert",
                "give upstream_client_cert and upstream_client_key together",
            ));
        }
        if let Some(cmd) = &self.upstream_cmd {
            command_words(cmd)
                .ok_or_else(|| invalid("upstream_cmd", "has an unclosed quote or is empty"))?;
        }
        if let Some(url) = &self.upstream {
            let parsed = Url::parse(url).map_err(|e| invalid("upstream", &e.to_string()))?;
            // An upstream on one of our own listeners' addresses would be the gateway
            // itself (or refuse to start beside it): say which listener to move.
            if let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) {
                let ours = [
                    ("proxy_addr", self.proxy_addr),
                    ("mcp_addr", self.mcp_addr),
                    ("routes_addr", self.routes_addr),
                    ("jwks_addr", self.jwks_addr),
                ];
                let loopback = host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
                if let Some((key, addr)) = ours.iter().find(|(_, a)| {
                    a.port() == port && port != 0 && (loopback || a.ip().to_string() == host)
                }) {
                    return Err(ConfigError::Invalid {
                        key: "upstream",
                        message: format!(
                            "{url} is the gateway's own {key} ({addr}); move that listener \
                             (e.g. {key} = \"127.0.0.1:0\" or --{}) or the upstream server",
                            key.replace('_', "-")
                        ),
                    });
                }
            }
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(invalid(
                    "upstream",
                    "must be an http:// or https:// URL of a streamable-HTTP MCP server",
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "give both tls_cert and tls_key, or neither",
            ));
        }
        let tls = self.tls_cert.is_some();
        if tls
            && self
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("http:"))
        {
            return Err(invalid(
                "public_url",
                "the public listener speaks TLS: the public URL must be https",
            ));
        }
        // Tokens and codes must not cross a network in clear text.
        let public_host_is_loopback = tls
            || match &self.public_url {
                Some(url) => Url::parse(url).ok().is_some_and(|u| {
                    u.scheme() == "https"
                        || matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                        || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                        || u.host_str() == Some("localhost")
                }),
                None => self.proxy_addr.ip().is_loopback(),
            };
        if !public_host_is_loopback && !self.insecure_http {
            return Err(invalid(
                "public_url",
                "a plain-http public URL on a non-loopback host exposes tokens; use https (public_url = \"https://...\" behind a TLS-terminating proxy) or pass --insecure-http",
            ));
        }
        if self.auth_mode == AuthMode::Builtin
            && !self.allow_anonymous_consent
            && !self.public_host_is_loopback()
        {
            if self.auto_approve {
                return Err(invalid(
                    "auto_approve",
                    "auto_approve on a public (non-loopback) URL lets anyone get tokens; turn it off, or set allow_anonymous_consent = true if that is really meant",
                ));
            }
            if !self.sign_in_required() {
                return Err(invalid(
                    "users",
                    "on a public (non-loopback) URL anyone could approve consent without signing in; add [[users]] with a password_hash (mcp-oauth-gateway hash-password), or set allow_anonymous_consent = true",
                ));
            }
        }
        if self.header_read_timeout_seconds == 0 {
            return Err(invalid(
                "header_read_timeout_seconds",
                "must be at least 1 second",
            ));
        }
        for t in &self.initial_access_tokens {
            if t.name.is_empty() || t.sha256.len() != 43 {
                return Err(ConfigError::Invalid {
                    key: "initial_access_tokens",
                    message: format!(
                        "token `{}`: needs a name and the base64url SHA-256 of the token (43 characters) as sha256",
                        t.name
                    ),
                });
            }
        }
        crate::web::client_ip::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| invalid("trusted_proxies", &e.to_string()))?;
        if self.access_token_ttl == 0 {
            return Err(invalid("access_token_ttl", "must be at least 1 second"));
        }
        if self.code_ttl == 0 || self.code_ttl > 600 {
            return Err(invalid("code_ttl", "must be between 1 and 600 seconds"));
        }
        if self.user.is_empty() {
            return Err(invalid("user", "must not be empty"));
        }
        let s = &self.scopes;
        if s.supported.is_empty() {
            return Err(invalid("scopes.supported", "must offer at least one scope"));
        }
        for c in &self.clients {
            let bad = |message: String| ConfigError::Invalid {
                key: "clients",
                message: format!("client `{}`: {message}", c.client_id),
            };
            if c.client_id.is_empty() {
                return Err(bad("client_id must not be empty".into()));
            }
            for uri in &c.redirect_uris {
                crate::web::uris::validate_redirect_uri(uri).map_err(|e| bad(e.to_string()))?;
            }
            for g in c.grant_types.iter().flatten() {
                let ok = match g.as_str() {
                    "authorization_code" | "refresh_token" => true,
                    "client_credentials" => c.secret_sha256.is_some(),
                    _ => false,
                };
                if !ok {
                    return Err(bad(format!("grant type `{g}` is not supported here")));
                }
            }
            if let Some(m) = &c.token_endpoint_auth_method
                && !matches!(m.as_str(), "client_secret_basic" | "client_secret_post")
            {
                return Err(bad(format!(
                    "token_endpoint_auth_method `{m}` is not supported"
                )));
            }
            if c.introspect && c.secret_sha256.is_none() {
                return Err(bad(
                    "introspect = true needs a secret_sha256: a resource server must authenticate"
                        .into(),
                ));
            }
            if c.secret_sha256.as_ref().is_some_and(|h| h.len() != 43) {
                return Err(bad(
                    "secret_sha256 must be the base64url SHA-256 of the secret (43 characters)"
                        .into(),
                ));
            }
        }
        for u in &self.users {
            if u.name.is_empty() || u.name.chars().any(char::is_control) {
                return Err(invalid(
                    "users",
                    "user names must be non-empty printable text",
                ));
            }
            if let Some(h) = &u.password_hash
                && !h.starts_with("$argon2")
            {
                return Err(ConfigError::Invalid {
                    key: "users",
                    message: format!(
                        "user `{}`: password_hash must be an argon2 hash (mcp-oauth-gateway hash-password)",
                        u.name
                    ),
                });
            }
            if u.admin && u.password_hash.is_none() {
                return Err(ConfigError::Invalid {
                    key: "users",
                    message: format!(
                        "user `{}`: an admin needs a password_hash to sign in to /admin",
                        u.name
                    ),
                });
            }
        }
        self.validate_identity_providers()?;
        self.validate_routes()?;
        // A table for another mode would be silently ignored: say so instead.
        if self.auth_mode != AuthMode::External
            && (!self.external.issuer.is_empty() || !self.external.audience.is_empty())
        {
            return Err(invalid(
                "external",
                "is set, but auth_mode is not \"external\": set auth_mode = \"external\" or remove the [external] table",
            ));
        }
        if self.auth_mode != AuthMode::SharedSecret
            && (!self.shared_secret.issuer.is_empty() || !self.shared_secret.audience.is_empty())
        {
            return Err(invalid(
                "shared_secret",
                "is set, but auth_mode is not \"shared_secret\": set auth_mode = \"shared_secret\" or remove the [shared_secret] table",
            ));
        }
        let known = |scope: &String| scope.is_empty() || s.supported.contains(scope);
        let referenced = s
            .default
            .iter()
            .chain(s.methods.values())
            .chain(s.tools.values())
            .chain([&s.default_method, &s.default_tool])
            .chain(s.implies.keys())
            .chain(s.implies.values().flatten());
        for scope in referenced {
            if !known(scope) {
                return Err(ConfigError::Invalid {
                    key: "scopes",
                    message: format!("scope `{scope}` is not in scopes.supported"),
                });
            }
        }
        Ok(())
    }
}

impl Config {
    /// A header some upstream gets the person's identity-provider token in (top-level or a
    /// route's `identity_headers.upstream_token`): the gateway keeps those tokens only then.
    pub fn upstream_token_header(&self) -> Option<&str> {
        self.identity_headers.upstream_token.as_deref().or_else(|| {
            self.routes
                .iter()
                .filter_map(|r| r.identity_headers.as_ref()?.upstream_token.as_deref())
                .next()
        })
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Ok(());
        }
        if self.upstream.is_some() || self.upstream_cmd.is_some() {
            return Err(ConfigError::Invalid {
                key: "routes",
                message: "with [[routes]], give each server its own entry: move upstream / upstream_cmd into one (path = \"/mcp\")".into(),
            });
        }
        if self.auth_mode != AuthMode::Builtin {
            return Err(ConfigError::Invalid {
                key: "routes",
                message: "[[routes]] are resources of the built-in authorization server: auth_mode must be \"builtin\"".into(),
            });
        }
        let mut paths = std::collections::HashSet::new();
        for r in &self.routes {
            let bad = |message: String| ConfigError::Invalid {
                key: "routes",
                message: format!("route `{}`: {message}", r.path),
            };
            let ours = crate::web::routes::route_name(&r.path);
            if !r.path.starts_with('/')
                || r.path.len() < 2
                || r.path.ends_with('/')
                || r.path.contains(['?', '#', ' ', '%'])
                || r.path.contains("//")
                || r.path.contains("/.")
            {
                return Err(bad(
                    "path must look like /name/mcp (no query, no trailing slash, no dot segments)"
                        .into(),
                ));
            }
            if !matches!(ours, "mcp" | "other") {
                return Err(bad(format!("the gateway serves its own `{ours}` there")));
            }
            if !paths.insert(r.path.as_str()) {
                return Err(bad("two routes have this path".into()));
            }
            if r.upstream.is_some() && r.upstream_cmd.is_some() {
                return Err(bad("give upstream or upstream_cmd, not both".into()));
            }
            let s = r.scopes(&self.scopes);
            for scope in s.tools.values().chain([&s.default_tool]) {
                if !scope.is_empty() && !s.supported.contains(scope) {
                    return Err(bad(format!("scope `{scope}` is not in scopes.supported")));
                }
            }
        }
        Ok(())
    }

    fn validate_identity_providers(&self) -> Result<(), ConfigError> {
        let mut ids = std::collections::HashSet::new();
        for p in &self.identity_providers {
            let id = p.id();
            let bad = |message: String| ConfigError::Invalid {
                key: "identity_providers",
                message: format!("provider `{id}`: {message}"),
            };
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad("id must be 1 to 32 of a-z, 0-9 and -".into()));
            }
            if !ids.insert(id) {
                return Err(bad(
                    "two providers have this id; give each its own `id`".into()
                ));
            }
            if self.auth_mode != AuthMode::Builtin {
                return Err(bad(
                    "identity providers sign people in to the built-in authorization server: auth_mode must be \"builtin\""
                        .into(),
                ));
            }
            if p.client_id.is_empty() {
                return Err(bad("client_id must not be empty".into()));
            }
            if p.client_secret_env.is_some() == p.client_secret_file.is_some() {
                return Err(bad(
                    "give the client secret as exactly one of client_secret_env and client_secret_file".into(),
                ));
            }
            let url_ok = |u: &str| {
                Url::parse(u).is_ok_and(|u| {
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && u.host_str().is_some_and(|h| {
                                h == "localhost"
                                    || h.parse::<std::net::IpAddr>()
                                        .is_ok_and(|ip| ip.is_loopback())
                            }))
                })
            };
            match p.kind {
                ProviderKind::Oidc => {
                    match &p.issuer {
                        Some(i) if url_ok(i) => {}
                        Some(_) => {
                            return Err(bad(
                                "issuer must be an https URL (http only on loopback)".into()
                            ));
                        }
                        None => return Err(bad("kind = \"oidc\" needs an issuer".into())),
                    }
                    if p.authorize_url.is_some() || p.token_url.is_some() || p.api_url.is_some() {
                        return Err(bad("authorize_url, token_url and api_url are for kind = \"github\"; an OIDC provider's come from its discovery".into()));
                    }
                }
                ProviderKind::Github => {
                    if p.issuer.is_some() || p.groups_claim.is_some() {
                        return Err(bad("issuer and groups_claim are for kind = \"oidc\"".into()));
                    }
                    for u in [&p.authorize_url, &p.token_url, &p.api_url]
                        .into_iter()
                        .flatten()
                    {
                        if !url_ok(u) {
                            return Err(bad(format!(
                                "`{u}` must be an https URL (http only on loopback)"
                            )));
                        }
                    }
                }
            }
            let rules = !p.allowed_emails.is_empty()
                || !p.allowed_domains.is_empty()
                || !p.allowed_groups.is_empty();
            if !rules && !p.allow_all_users {
                return Err(bad(
                    "say who may sign in: allowed_emails, allowed_domains or allowed_groups (or allow_all_users = true)".into(),
                ));
            }
            for rule in &p.scope_rules {
                if let Some(s) = rule
                    .scopes
                    .iter()
                    .find(|s| !self.scopes.supported.contains(s))
                {
                    return Err(bad(format!(
                        "scope rule: scope `{s}` is not in scopes.supported"
                    )));
                }
            }
        }
        if let Some(h) = self.upstream_token_header()
            && self.identity_providers.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "identity_headers.upstream_token",
                message: format!(
                    "`{h}` would carry an identity provider's token, but no [[identity_providers]] is configured"
                ),
            });
        }
        Ok(())
    }
}

/// An enum value in any case, with `-` or `_` (`ES256`, `es256`, `in-process`): values
/// are words an operator types, in a file, a variable or a flag alike.
fn any_case<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::value::{Error as ValueError, StrDeserializer};
    let given = String::deserialize(d)?;
    let word = given.trim().replace('-', "_");
    [word.to_lowercase(), word.to_uppercase()]
        .iter()
        .find_map(|w| T::deserialize(StrDeserializer::<ValueError>::new(w)).ok())
        .map_or_else(
            || T::deserialize(StrDeserializer::<D::Error>::new(&given)),
            Ok,
        )
}

/// A listening address as `host:port`: an IP address, or a name such as `localhost`
/// (resolved once, at start; the first address it resolves to).
fn host_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    use serde::de::Error as _;
    let given = String::deserialize(d)?;
    resolve_host_port(&given).map_err(D::Error::custom)
}

/// An optional listening address (see [`host_port`]).
fn opt_host_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    host_port(d).map(Some)
}

/// `host:port` to a socket address (see [`host_port`]).
pub fn resolve_host_port(given: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = given.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs as _;
    let mut addrs = given
        .to_socket_addrs()
        .map_err(|e| format!("`{given}` is not host:port ({e})"))?
        .collect::<Vec<_>>();
    // `localhost` resolves to ::1 and 127.0.0.1; IPv4 first, as clients try it first.
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("`{given}` resolves to no address"))
}

/// A list, or one string of comma-separated entries (as an environment variable gives it).
fn one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    Ok(match OneOrList::deserialize(d)? {
        OneOrList::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect(),
        OneOrList::List(l) => l,
    })
}

/// A parser message about an unknown key, with the long list of every valid key replaced by
/// the closest one ("did you mean"), when one is close; other messages unchanged.
fn with_suggestion(message: &str) -> String {
    let Some((head, list)) = message.split_once(", expected one of ") else {
        return message.to_string();
    };
    let Some(unknown) = head
        .rsplit_once("unknown field `")
        .and_then(|(_, rest)| rest.strip_suffix('`'))
    else {
        return message.to_string();
    };
    let keys: Vec<&str> = list
        .split(", ")
        .map(|k| k.trim().trim_matches('`'))
        .collect();
    match closest(unknown, keys) {
        Some(key) => format!("{head}: did you mean `{key}`?"),
        None => format!("{head} (the keys are listed in README.md, Configuration)"),
    }
}

/// The candidate closest to a mistyped `word`, when one is close enough to be what was
/// meant ("did you mean").
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|k| (edit_distance(word, k), k))
        .min()
        .filter(|(d, _)| *d <= word.len().max(3) / 3 + 1)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for key suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The words of `upstream_cmd`, split as a POSIX shell would (quotes, backslashes) without
/// running one; `None` for an unclosed quote or an empty line.
pub fn command_words(line: &str) -> Option<Vec<String>> {
    shlex::split(line).filter(|words| !words.is_empty())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_database_password_never_shows_in_the_config_debug() {
        let c: Config = toml::from_str(
            "store = \"postgres\"\ndatabase_url = \"postgres://gw:hunter2@db:5432/gw\"",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.database_url.as_ref().map(DatabaseUrl::as_str),
            Some("postgres://gw:hunter2@db:5432/gw")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    use super::*;

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(
            command_words("npx -y pkg stdio").unwrap(),
            ["npx", "-y", "pkg", "stdio"]
        );
        assert_eq!(
            command_words(r#"node "my dir/s.js" 'a b' c\ d"#).unwrap(),
            ["node", "my dir/s.js", "a b", "c d"]
        );
        assert_eq!(command_words(r#"x """#).unwrap(), ["x", ""]);
        assert!(command_words("  ").is_none());
        assert!(command_words("x \"open").is_none());
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn users_may_be_marked_admin() {
        let c: Config = toml::from_str(
            "[[users]]\nname = \"ops\"\npassword_hash = \"$argon2id$x\"\nadmin = true\n[[users]]\nname = \"bob\"",
        )
        .unwrap();
        assert!(c.users[0].admin);
        assert!(!c.users[1].admin, "not an admin unless said");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("proxy_adr = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("proxy_adr"));
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let c: Config =
            toml::from_str("access_token_ttl = 60\n[scopes.tools]\nx = \"mcp:admin\"").unwrap();
        assert_eq!(c.access_token_ttl, 60);
        assert_eq!(c.refresh_grace_seconds, 60);
        assert_eq!(c.scopes.tools["x"], "mcp:admin");
        c.validate().unwrap();
    }

    #[test]
    fn policy_naming_an_unoffered_scope_is_refused() {
        let c: Config = toml::from_str("[scopes.tools]\nx = \"files:write\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("files:write")
        );
    }

    #[test]
    fn an_admin_without_a_password_is_refused() {
        let c: Config = toml::from_str("[[users]]\nname = \"ops\"\nadmin = true").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("password_hash")
        );
    }

    #[test]
    fn tls_needs_both_files_and_an_https_public_url() {
        let one = Config {
            tls_cert: Some("cert.pem".into()),
            ..Config::default()
        };
        assert!(one.validate().unwrap_err().to_string().contains("tls_key"));
        let mut c = Config {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            public_url: Some("http://localhost:3002".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("https"));
        c.public_url = None;
        c.proxy_addr = "0.0.0.0:443".parse().unwrap();
        c.allow_anonymous_consent = true;
        c.validate().unwrap();
    }

    #[test]
    fn plain_http_off_loopback_needs_insecure_http() {
        let mut c = Config {
            public_url: Some("http://mcp.example.com".into()),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("insecure-http")
        );
        c.insecure_http = true;
        c.allow_anonymous_consent = true;
        c.validate().unwrap();
        for ok in [
            "https://mcp.example.com",
            "http://localhost:3002",
            "http://[::1]:3002",
        ] {
            let c = Config {
                public_url: Some(ok.into()),
                allow_anonymous_consent: true,
                ..Config::default()
            };
            c.validate().unwrap();
        }
        let c = Config {
            proxy_addr: "0.0.0.0:3002".parse().unwrap(),
            ..Config::default()
        };
        assert!(
            c.validate().is_err(),
            "listening on all interfaces over plain http"
        );
    }

    #[test]
    fn bad_public_url_is_refused() {
        let c = Config {
            public_url: Some("ftp://x".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_public_url_needs_users_with_passwords_or_an_explicit_opt_in() {
        let public = |extra: &str| {
            toml::from_str::<Config>(&format!(
                "public_url = \"https://mcp.example.com\"\n{extra}"
            ))
            .unwrap()
        };
        let err = public("").validate().unwrap_err().to_string();
        assert!(
            err.contains("[[users]]") && err.contains("allow_anonymous_consent"),
            "{err}"
        );
        assert!(
            public("[[users]]\nname = \"bob\"").validate().is_err(),
            "a user without a password signs in with a name alone"
        );
        public("[[users]]\nname = \"bob\"\npassword_hash = \"$argon2id$x\"")
            .validate()
            .unwrap();
        let opted_in = public("allow_anonymous_consent = true");
        opted_in.validate().unwrap();
        assert_eq!(opted_in.warnings().len(), 1, "the opt-in is announced");
        let err = public(
            "auto_approve = true\n[[users]]\nname = \"bob\"\npassword_hash = \"$argon2id$x\"",
        )
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("auto_approve"), "{err}");
        assert!(
            Config::default().warnings().is_empty(),
            "loopback is not public"
        );
        let external = public("auth_mode = \"external\"");
        external.validate().unwrap();
    }

    #[test]
    fn trusted_proxies_are_networks_or_addresses() {
        let c: Config =
            toml::from_str("trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.10\", \"::1/128\"]")
                .unwrap();
        c.validate().unwrap();
        assert!(Config::default().trusted_proxies.is_empty());
        let c: Config =
            toml::from_str("trusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("trusted_proxies") && err.contains("lb.internal"),
            "{err}"
        );
    }

    #[test]
    fn introspecting_clients_need_a_secret_and_access_tokens_a_hash() {
        let c: Config =
            toml::from_str("[[clients]]\nclient_id = \"rs\"\nintrospect = true").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("introspect"));
        let c: Config =
            toml::from_str("[[initial_access_tokens]]\nname = \"ci\"\nsha256 = \"short\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("initial_access_tokens")
        );
    }

    #[test]
    fn identity_providers_that_cannot_work_are_refused() {
        let with = |provider: &str, extra: &str| {
            let text = format!("{extra}\n[[identity_providers]]\n{provider}");
            toml::from_str::<Config>(&text).unwrap().validate()
        };
        let oidc = "kind = \"oidc\"\nissuer = \"https://idp.example\"\nclient_id = \"gw\"\nclient_secret_env = \"S\"\n";
        assert!(with(&format!("{oidc}allowed_domains = [\"example.com\"]"), "").is_ok());
        let refused = |provider: &str, extra: &str, why: &str| {
            let e = with(provider, extra).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(oidc, "", "say who may sign in");
        refused(
            &format!("{oidc}allow_all_users = true\nclient_secret_file = \"/x\""),
            "",
            "exactly one",
        );
        refused(
            "kind = \"oidc\"\nissuer = \"http://idp.example\"\nclient_id = \"gw\"\nclient_secret_env = \"S\"\nallow_all_users = true",
            "",
            "https",
        );
        refused(
            &format!("{oidc}allow_all_users = true\napi_url = \"https://x\""),
            "",
            "for kind = \"github\"",
        );
        refused(
            &format!(
                "{oidc}allow_all_users = true\n[[identity_providers.scope_rules]]\ngroups = [\"a\"]\nscopes = [\"nope\"]"
            ),
            "",
            "not in scopes.supported",
        );
        refused(
            &format!("{oidc}allow_all_users = true"),
            "auth_mode = \"external\"\n[external]\nissuer = \"https://x\"\naudience = \"a\"",
            "builtin",
        );
        let e = toml::from_str::<Config>("[identity_headers]\nupstream_token = \"X-T\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[identity_providers]]"), "{e}");
    }

    #[test]
    fn an_unknown_key_gets_the_closest_one_suggested() {
        let err = |text: &str| {
            let dir = tempfile_dir();
            let path = dir.join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::from_file(&path).unwrap_err().to_string()
        };
        let e = err("proxy_adr = \"127.0.0.1:0\"\n");
        assert!(e.contains("did you mean `proxy_addr`?"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("expected one of"), "{e}");
        let e = err(
            "[[identity_providers]]\nkind = \"oidc\"\nclient_id = \"x\"\nallowed_domain = [\"a\"]\n",
        );
        assert!(e.contains("did you mean `allowed_domains`?"), "{e}");
        let e = err("completely_unrelated_setting = 1\n");
        assert!(
            e.contains("README.md") && !e.contains("did you mean"),
            "{e}"
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mog-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
