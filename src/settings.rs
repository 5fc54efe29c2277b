//! What the config means once the public URL is known: the issuer, the protected
//! resource and where its metadata is, the public origin, and the clients the config pins.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use crate::config::Config;
use crate::store::Client;
use crate::web::client_ip::TrustedProxies;

/// Values derived from the config and the bound proxy address.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config as loaded.
    pub config: Config,
    /// The issuer: the public URL without a trailing slash. Every advertised endpoint is
    /// under it, so all of them go through the proxy.
    pub issuer: String,
    /// The first protected resource (canonical, RFC 8707): `<issuer>/mcp` unless
    /// `[[routes]]` say otherwise; what a request that names none gets.
    pub resource: String,
    /// The public origin (`scheme://host[:port]`), for Origin checks.
    pub public_origin: String,
    /// Where the protected resource metadata is (path-suffixed form, RFC 9728 §3.1).
    pub resource_metadata_url: String,
    /// A hash to verify against for unknown user names, so timing does not reveal them.
    pub dummy_password_hash: String,
    /// Clients pinned in the config, by id. The config is their only source: removing an
    /// entry removes the client.
    pub pinned_clients: HashMap<String, Client>,
    /// The proxies whose `X-Forwarded-For` is believed (`trusted_proxies`, parsed).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Every protected resource: `/mcp`, or one per `[[routes]]` entry, in config order.
    pub routes: Vec<Arc<Route>>,
}

impl Settings {
    /// Derive settings; `public_url` is the validated public URL.
    pub fn new(config: Config, public_url: &Url) -> Self {
        let issuer = public_url.as_str().trim_end_matches('/').to_string();
        let public_origin = public_url.origin().ascii_serialization();
        let path = public_url.path().trim_end_matches('/');
        let paths: Vec<String> = if config.routes.is_empty() {
            vec![crate::web::routes::MCP.to_string()]
        } else {
            config.routes.iter().map(|r| r.path.clone()).collect()
        };
        let routes: Vec<Arc<Route>> = paths
            .into_iter()
            .map(|p| {
                Arc::new(Route {
                    resource: format!("{issuer}{p}"),
                    metadata_url: format!(
                        "{public_origin}/.well-known/oauth-protected-resource{path}{p}"
                    ),
                    path: p,
                })
            })
            .collect();
        let resource = routes[0].resource.clone();
        let resource_metadata_url = routes[0].metadata_url.clone();
        let needs_login =
            config.users.len() > 1 || config.users.iter().any(|u| u.password_hash.is_some());
        let dummy_password_hash = if needs_login {
            crate::secret::hash_password("unknown user").unwrap_or_default()
        } else {
            String::new()
        };
        let pinned_clients = config
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.to_client(0)))
            .collect();
        // `Config::validate` has refused bad entries; should one get here unvalidated, no
        // proxy is trusted rather than some.
        let trusted_proxies =
            Arc::new(TrustedProxies::parse(&config.trusted_proxies).unwrap_or_default());
        Self {
            trusted_proxies,
            pinned_clients,
            dummy_password_hash,
            config,
            issuer,
            resource,
            public_origin,
            resource_metadata_url,
            routes,
        }
    }

    /// Whether `resource` (canonical) is one this gateway serves.
    pub fn serves(&self, resource: &str) -> bool {
        self.routes.iter().any(|r| r.resource == resource)
    }
}

/// One protected resource the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its path under the public URL, e.g. `/mcp`.
    pub path: String,
    /// Its canonical resource URL (RFC 8707): `<issuer><path>`.
    pub resource: String,
    /// Its protected resource metadata (path-suffixed form, RFC 9728 §3.1).
    pub metadata_url: String,
}
