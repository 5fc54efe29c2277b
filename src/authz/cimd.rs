//! Client ID Metadata Documents (CIMD; MCP 2025-11-25, draft-ietf-oauth-client-id-metadata-document):
//! a client whose `client_id` is an https URL is described by the JSON document
//! served at that URL, instead of being registered beforehand.
//!
//! [`CimdResolver::resolve`] fetches such a document and turns it into a [`Client`] record:
//!
//! - **URL shape** ([`CimdResolver::is_metadata_url`]): https, a host, a path other than `/`,
//!   no fragment, no user information, no `.`/`..` segments, in canonical form.
//! - **SSRF guard**: the host is resolved once, every address must be public (no loopback,
//!   private, link-local, CGNAT, documentation, multicast, broadcast, unspecified or reserved
//!   range, including IPv4 addresses hidden in IPv6 forms), and the connection is pinned to
//!   exactly the checked addresses, so a second, rebinding DNS answer is never used. No proxy
//!   is used and redirects are not followed (a 3xx is an error).
//! - **Limits**: one overall timeout, a body cap enforced while reading, a bound on
//!   concurrent fetches and on cache size.
//! - **Document rules** ([`validate_document`]): `client_id` equal to the URL, valid redirect
//!   URIs, public clients only, no secrets, grant types within what we serve.
//! - **Caching**: successful results per URL, for `max-age` (capped) or a default TTL;
//!   `no-store`/`no-cache` disable caching. Failures are not cached.
//!
//! [`CimdConfig::allow_loopback_http`] lifts the address rules and allows `http://` on loopback
//! hosts, for development and tests only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use url::{Host, Url};

use super::error::OAuthError;
use crate::store::Client;
use crate::web::uris::validate_redirect_uri;

/// Grant types a metadata-document client gets when its document names none.
const DEFAULT_GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];

/// Longest `client_name` kept, in characters.
const MAX_CLIENT_NAME_CHARS: usize = 200;

/// Longest reason quoted from a document in an error message, in characters.
const MAX_REASON_CHARS: usize = 120;

/// How many documents may be fetched at the same time; more requests wait (within their
/// timeout), so a flood of distinct `client_id` URLs cannot open unbounded connections.
const MAX_CONCURRENT_FETCHES: usize = 16;

/// How many documents the cache keeps at most.
const MAX_CACHE_ENTRIES: usize = 1024;

/// How documents are fetched and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CimdConfig {
    /// Development only: allow `http://` metadata URLs on loopback hosts, and hosts that
    /// resolve to loopback or private addresses. Never enable this in production: it turns
    /// the gateway into a fetcher of internal URLs.
    pub allow_loopback_http: bool,
    /// Overall time for one fetch: DNS, connect, TLS, response and body. Default 5 s.
    pub timeout: Duration,
    /// Largest document accepted, in bytes. Default 5 KiB.
    pub max_bytes: usize,
    /// How long, in seconds, a document is cached when the response has no `Cache-Control`
    /// `max-age`. Default 300.
    pub default_ttl: u64,
    /// The longest a document is cached, in seconds, whatever `max-age` says. Default 86400.
    pub max_ttl: u64,
}

impl Default for CimdConfig {
    fn default() -> Self {
        Self {
            allow_loopback_http: false,
            timeout: Duration::from_secs(5),
            max_bytes: 5 * 1024,
            default_ttl: 300,
            max_ttl: 86_400,
        }
    }
}

/// Why a metadata document could not be used. The `Display` text is safe to show the client:
/// it never carries a fetched body beyond a short, sanitized quote.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CimdError {
    /// The `client_id` is not an acceptable metadata document URL.
    #[error("client_id is not an acceptable client metadata document URL")]
    NotMetadataUrl,
    /// The host name did not resolve.
    #[error("the client metadata document's host could not be resolved")]
    Dns(#[source] Option<std::io::Error>),
    /// The host is, or resolves to, an address we do not fetch from (SSRF guard).
    #[error("the client metadata document's host resolves to a non-public address")]
    ForbiddenAddress,
    /// The whole fetch took longer than the configured timeout.
    #[error("fetching the client metadata document timed out")]
    Timeout,
    /// Connecting, TLS or reading the response failed.
    #[error("the client metadata document could not be fetched")]
    Fetch(#[source] reqwest::Error),
    /// The server answered with a redirect, which is not followed.
    #[error(
        "the client metadata document URL answered with a redirect ({0}); redirects are not followed"
    )]
    Redirect(u16),
    /// The server answered with a status other than 200.
    #[error("fetching the client metadata document returned status {0}")]
    Status(u16),
    /// The body is larger than the configured limit.
    #[error("the client metadata document is larger than {0} bytes")]
    TooLarge(usize),
    /// The response is not labelled as JSON.
    #[error("the client metadata document is not served as JSON (application/json)")]
    ContentType,
    /// The body is not a JSON object.
    #[error("the client metadata document is not a JSON object")]
    InvalidJson,
    /// The document's `client_id` is not exactly the URL it was fetched from.
    #[error("the client metadata document's client_id does not equal its URL")]
    ClientIdMismatch,
    /// The document carries `client_secret` or `client_secret_expires_at`.
    #[error("a client metadata document must not contain a client secret")]
    ContainsSecret,
    /// `token_endpoint_auth_method` is something other than `none`.
    #[error(
        "token_endpoint_auth_method `{0}` is not supported for metadata document clients; only `none`"
    )]
    UnsupportedAuthMethod(String),
    /// `redirect_uris` is missing, empty, or holds an unacceptable URI.
    #[error("invalid redirect_uris in the client metadata document: {0}")]
    InvalidRedirectUri(String),
    /// Another field is malformed or not supported.
    #[error("invalid client metadata document: {0}")]
    InvalidMetadata(String),
}

impl From<CimdError> for OAuthError {
    /// A document that cannot be used means the client is unknown to us: `invalid_client`.
    fn from(e: CimdError) -> Self {
        OAuthError::InvalidClient {
            message: e.to_string(),
            basic: false,
        }
    }
}

/// A cached, validated document.
#[derive(Debug, Clone)]
struct CacheEntry {
    client: Client,
    expires_at: u64,
}

/// What [`CimdResolver`] shares between its clones.
#[derive(Debug)]
struct Inner {
    config: CimdConfig,
    cache: Mutex<HashMap<String, CacheEntry>>,
    fetches: Semaphore,
}

/// Fetches, validates and caches client metadata documents. Cheap to clone: clones share
/// the cache.
#[derive(Debug, Clone)]
pub struct CimdResolver {
    inner: Arc<Inner>,
}

impl CimdResolver {
    /// A resolver with an empty cache.
    pub fn new(config: CimdConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                cache: Mutex::new(HashMap::new()),
                fetches: Semaphore::new(MAX_CONCURRENT_FETCHES),
            }),
        }
    }

    /// The configuration this resolver was built with.
    pub fn config(&self) -> &CimdConfig {
        &self.inner.config
    }

    /// Whether a `client_id` is a URL that should be resolved as a metadata document: https
    /// scheme, a host, a path other than `/`, no fragment, no user information, no `.` or
    /// `..` path segments, and written in canonical form (what the `url` crate would print).
    /// With [`CimdConfig::allow_loopback_http`], also `http://` on a loopback host.
    pub fn is_metadata_url(&self, client_id: &str) -> bool {
        parse_metadata_url(client_id, self.inner.config.allow_loopback_http).is_some()
    }

    /// Fetch (or take from the cache) and validate the document at `client_id`, giving the
    /// client it describes. `now` is epoch seconds; the cache uses it, so tests control time.
    pub async fn resolve(&self, client_id: &str, now: u64) -> Result<Client, CimdError> {
        let config = &self.inner.config;
        let url = parse_metadata_url(client_id, config.allow_loopback_http)
            .ok_or(CimdError::NotMetadataUrl)?;
        if let Some(client) = self.cached(client_id, now) {
            return Ok(client);
        }
        let fetched = tokio::time::timeout(config.timeout, self.fetch(&url))
            .await
            .map_err(|_| CimdError::Timeout)?;
        let (body, ttl) = match fetched {
            Ok(ok) => ok,
            Err(e) => {
                tracing::info!(client_id, error = %e, cause = ?std::error::Error::source(&e), "client metadata document refused");
                return Err(e);
            }
        };
        let doc: Value = serde_json::from_slice(&body).map_err(|_| CimdError::InvalidJson)?;
        let client = validate_document(client_id, &doc, now).inspect_err(|e| {
            tracing::info!(client_id, error = %e, "client metadata document refused");
        })?;
        if let Some(ttl) = ttl {
            self.store(client_id, &client, now.saturating_add(ttl), now);
        }
        tracing::debug!(client_id, ttl = ?ttl, "client metadata document resolved");
        Ok(client)
    }

    /// A cached, unexpired client.
    fn cached(&self, client_id: &str, now: u64) -> Option<Client> {
        let cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(client_id)
            .filter(|e| now < e.expires_at)
            .map(|e| e.client.clone())
    }

    /// Cache a client until `expires_at`, making room if the cache is full: expired entries
    /// go first, then the one that would expire soonest.
    fn store(&self, client_id: &str, client: &Client, expires_at: u64, now: u64) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES && !cache.contains_key(client_id) {
            cache.retain(|_, e| now < e.expires_at);
            if cache.len() >= MAX_CACHE_ENTRIES
                && let Some(victim) = cache
                    .iter()
                    .min_by_key(|(_, e)| e.expires_at)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&victim);
            }
        }
        cache.insert(
            client_id.to_string(),
            CacheEntry {
                client: client.clone(),
                expires_at,
            },
        );
    }

    /// Fetch the body and the cache lifetime (`None`: do not cache). The caller bounds the
    /// whole call with the timeout.
    async fn fetch(&self, url: &Url) -> Result<(Vec<u8>, Option<u64>), CimdError> {
        let config = &self.inner.config;
        let _permit = self
            .inner
            .fetches
            .acquire()
            .await
            .map_err(|_| CimdError::Timeout)?;
        let port = url
            .port_or_known_default()
            .ok_or(CimdError::NotMetadataUrl)?;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .referer(false)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!(
                "mcp-oauth-gateway/",
                env!("CARGO_PKG_VERSION"),
                " (client metadata document fetcher)"
            ));
        match url.host() {
            Some(Host::Ipv4(ip)) => check_addrs(&[SocketAddr::new(IpAddr::V4(ip), port)], config)?,
            Some(Host::Ipv6(ip)) => check_addrs(&[SocketAddr::new(IpAddr::V6(ip), port)], config)?,
            Some(Host::Domain(domain)) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
                    .await
                    .map_err(|e| CimdError::Dns(Some(e)))?
                    .collect();
                if addrs.is_empty() {
                    return Err(CimdError::Dns(None));
                }
                check_addrs(&addrs, config)?;
                // Pin the connection to the addresses just checked (no second lookup).
                builder = builder.resolve_to_addrs(domain, &addrs);
            }
            None => return Err(CimdError::NotMetadataUrl),
        }
        let http = builder.build().map_err(CimdError::Fetch)?;
        let mut res = http
            .get(url.as_str())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(fetch_error)?;
        let status = res.status();
        if status.is_redirection() {
            return Err(CimdError::Redirect(status.as_u16()));
        }
        if status != reqwest::StatusCode::OK {
            return Err(CimdError::Status(status.as_u16()));
        }
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json_content_type(content_type) {
            return Err(CimdError::ContentType);
        }
        if res
            .content_length()
            .is_some_and(|len| len > config.max_bytes as u64)
        {
            return Err(CimdError::TooLarge(config.max_bytes));
        }
        let cache_control: Vec<&str> = res
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ttl = if cache_control.is_empty() {
            cache_ttl(None, config.default_ttl, config.max_ttl)
        } else {
            cache_ttl(
                Some(&cache_control.join(",")),
                config.default_ttl,
                config.max_ttl,
            )
        };
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > config.max_bytes {
                return Err(CimdError::TooLarge(config.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, ttl))
    }
}

/// A transport error, with timeouts told apart.
fn fetch_error(e: reqwest::Error) -> CimdError {
    if e.is_timeout() {
        CimdError::Timeout
    } else {
        CimdError::Fetch(e.without_url())
    }
}

/// Refuse if any address is not public (unless development mode allows everything).
fn check_addrs(addrs: &[SocketAddr], config: &CimdConfig) -> Result<(), CimdError> {
    if config.allow_loopback_http || addrs.iter().all(|a| is_public_ip(a.ip())) {
        Ok(())
    } else {
        Err(CimdError::ForbiddenAddress)
    }
}

/// Parse a `client_id` as a metadata document URL; `None` if it is not one (see
/// [`CimdResolver::is_metadata_url`]).
fn parse_metadata_url(raw: &str, allow_loopback_http: bool) -> Option<Url> {
    let url = Url::parse(raw).ok()?;
    // The canonical form only: no second spelling of the same client, and the `url` crate's
    // normalization of dot segments (also `%2e`) cannot hide a `.` or `..` segment.
    if url.as_str() != raw || url.cannot_be_a_base() {
        return None;
    }
    if url.fragment().is_some() || raw.contains('#') {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let host = url.host()?;
    match url.scheme() {
        "https" => {}
        "http" if allow_loopback_http && is_loopback_host(&host) => {}
        _ => return None,
    }
    if let Host::Domain(d) = &host
        && d.is_empty()
    {
        return None;
    }
    let path = url.path();
    if path.is_empty() || path == "/" {
        return None;
    }
    if path
        .split('/')
        .any(|seg| seg == "." || seg == ".." || seg.eq_ignore_ascii_case("%2e"))
    {
        return None;
    }
    Some(url)
}

/// Whether a URL host is loopback: an IP literal in the loopback range or `localhost`.
fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether `ip` is a public unicast address we may fetch from. Refused: unspecified, loopback,
/// private (10/8, 172.16/12, 192.168/16, fc00::/7), CGNAT (100.64/10), link-local
/// (169.254/16, fe80::/10), documentation, benchmarking, multicast, broadcast and reserved
/// ranges; an IPv4 address carried in IPv6 (mapped, compatible, NAT64, 6to4) is judged as IPv4.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Whether `ip` lies in `net`/`prefix`.
fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

/// See [`is_public_ip`].
fn is_public_v4(ip: Ipv4Addr) -> bool {
    const REFUSED: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    !REFUSED.iter().any(|(net, prefix)| in_v4(ip, *net, *prefix))
}

/// See [`is_public_ip`].
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let embedded_tail = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    // ::ffff:a.b.c.d (mapped)
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // 64:ff9b::a.b.c.d (NAT64 well-known prefix)
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_tail);
    }
    // 2002:aabb:ccdd::/48 (6to4)
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return is_public_v4(v4);
    }
    // Only global unicast (2000::/3); this excludes ::, ::1, IPv4-compatible ::/96,
    // 64:ff9b:1::/48, 100::/64, fc00::/7, fe80::/10, fec0::/10 and ff00::/8.
    if seg[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = [
        seg[0] == 0x2001 && seg[1] == 0,                 // Teredo 2001::/32
        seg[0] == 0x2001 && seg[1] == 0x0db8,            // documentation 2001:db8::/32
        seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0,  // benchmarking 2001:2::/48
        seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x0010, // ORCHID 2001:10::/28
        seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x0020, // ORCHIDv2 2001:20::/28
        seg[0] == 0x3fff && (seg[1] & 0xf000) == 0,      // documentation 3fff::/20
    ];
    !refused.iter().any(|r| *r)
}

/// Whether a `Content-Type` says JSON: `application/json` or `application/<x>+json`,
/// parameters allowed.
fn is_json_content_type(value: Option<&str>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// How long to cache a response, from its `Cache-Control` (all values joined by commas):
/// `None` means do not cache (`no-store`, `no-cache`, `max-age=0`); otherwise `max-age`
/// capped at `max_ttl`, or `default_ttl` (also capped) when there is no usable `max-age`.
pub fn cache_ttl(cache_control: Option<&str>, default_ttl: u64, max_ttl: u64) -> Option<u64> {
    let mut max_age: Option<u64> = None;
    for directive in cache_control.unwrap_or_default().split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return None;
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Some(secs) = value.and_then(|v| v.parse::<u64>().ok())
        {
            // The most restrictive of repeated max-age directives.
            max_age = Some(max_age.map_or(secs, |m| m.min(secs)));
        }
    }
    let ttl = max_age.unwrap_or(default_ttl).min(max_ttl);
    (ttl > 0).then_some(ttl)
}

/// Strip control and bidirectional-formatting characters and cut to `max` characters, so a
/// quote from a document, or a name a client chose for itself, cannot break logs, pages or
/// messages, nor reorder what the consent page shows. Used for metadata documents and for
/// dynamic registration alike.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(max)
        .collect()
}

/// A name a client gives itself, as the consent page may show it: [`sanitize`]d, cut to 200
/// characters, trimmed; `None` when nothing is left.
pub(crate) fn display_name(raw: &str) -> Option<String> {
    let name = sanitize(raw, MAX_CLIENT_NAME_CHARS).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Characters that reorder displayed text (used to spoof names on consent pages).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// An optional string field: absent or `null` is `None`, a string is kept, anything else is
/// an error.
fn opt_str<'a>(
    doc: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, CimdError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CimdError::InvalidMetadata(format!(
            "{field} must be a string"
        ))),
    }
}

/// An optional array of strings.
fn opt_str_array(
    doc: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<String>>, CimdError> {
    let bad = || CimdError::InvalidMetadata(format!("{field} must be an array of strings"));
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// Check a fetched document (already parsed as JSON) against the URL it came from and turn
/// it into a client record. Pure: no I/O, `now` becomes `created_at`.
///
/// Rules: a JSON object; `client_id` exactly `url`; no `client_secret` or
/// `client_secret_expires_at`; `token_endpoint_auth_method` absent or `none`; `redirect_uris`
/// non-empty, each acceptable to [`validate_redirect_uri`]; `grant_types` (default
/// authorization_code and refresh_token) within those two; `response_types`, if present,
/// only `code`; `client_name` cleaned of control characters and cut to 200 characters;
/// `scope` made of valid scope tokens. The record is public (`none`, no secret hash), not
/// pinned, and counts as used at `now`. Other fields (`client_uri`, `logo_uri`, ...) are
/// ignored.
pub fn validate_document(url: &str, doc: &Value, now: u64) -> Result<Client, CimdError> {
    let doc = doc.as_object().ok_or(CimdError::InvalidJson)?;
    match doc.get("client_id") {
        Some(Value::String(id)) if id == url => {}
        _ => return Err(CimdError::ClientIdMismatch),
    }
    if doc.contains_key("client_secret") || doc.contains_key("client_secret_expires_at") {
        return Err(CimdError::ContainsSecret);
    }
    let method = opt_str(doc, "token_endpoint_auth_method")?.unwrap_or("none");
    if method != "none" {
        return Err(CimdError::UnsupportedAuthMethod(sanitize(
            method,
            MAX_REASON_CHARS,
        )));
    }
    let redirect_uris = opt_str_array(doc, "redirect_uris")
        .map_err(|_| CimdError::InvalidRedirectUri("must be an array of strings".into()))?
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(CimdError::InvalidRedirectUri(
            "at least one redirect URI is required".into(),
        ));
    }
    for uri in &redirect_uris {
        validate_redirect_uri(uri).map_err(|reason| {
            CimdError::InvalidRedirectUri(sanitize(&reason.to_string(), MAX_REASON_CHARS))
        })?;
    }
    let grant_types = opt_str_array(doc, "grant_types")?
        .unwrap_or_else(|| DEFAULT_GRANT_TYPES.iter().map(|g| g.to_string()).collect());
    if grant_types.is_empty() {
        return Err(CimdError::InvalidMetadata(
            "grant_types must not be empty".into(),
        ));
    }
    if let Some(g) = grant_types
        .iter()
        .find(|g| !DEFAULT_GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(CimdError::InvalidMetadata(format!(
            "grant type `{}` is not supported",
            sanitize(g, MAX_REASON_CHARS)
        )));
    }
    if let Some(types) = opt_str_array(doc, "response_types")?
        && types.iter().any(|t| t != "code")
    {
        return Err(CimdError::InvalidMetadata(
            "only the `code` response type is supported".into(),
        ));
    }
    let client_name = opt_str(doc, "client_name")?.and_then(display_name);
    let scope = match opt_str(doc, "scope")? {
        None => None,
        Some(s) => {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), space-separated.
            let valid = s
                .chars()
                .all(|c| c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\'));
            if !valid {
                return Err(CimdError::InvalidMetadata(
                    "scope contains characters not allowed in scope tokens".into(),
                ));
            }
            let tokens: Vec<&str> = s.split(' ').filter(|t| !t.is_empty()).collect();
            (!tokens.is_empty()).then(|| tokens.join(" "))
        }
    };
    Ok(Client {
        client_id: url.to_string(),
        client_name,
        redirect_uris,
        grant_types,
        token_endpoint_auth_method: "none".into(),
        scope,
        created_at: now,
        secret_hash: None,
        last_used_at: now,
        pinned: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "https://app.example.com/oauth/client-metadata.json";

    fn resolver(dev: bool) -> CimdResolver {
        CimdResolver::new(CimdConfig {
            allow_loopback_http: dev,
            ..CimdConfig::default()
        })
    }

    fn good_doc() -> Value {
        json!({
            "client_id": URL,
            "client_name": "Example App",
            "client_uri": "https://app.example.com",
            "logo_uri": "https://app.example.com/logo.png",
            "redirect_uris": ["https://app.example.com/callback", "http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
        })
    }

    #[test]
    fn defaults() {
        let c = CimdConfig::default();
        assert!(!c.allow_loopback_http);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.max_bytes, 5 * 1024);
        assert_eq!(c.default_ttl, 300);
        assert_eq!(c.max_ttl, 86_400);
    }

    #[test]
    fn metadata_url_shape() {
        let r = resolver(false);
        for ok in [
            URL,
            "https://claude.ai/oauth/claude-code-client-metadata",
            "https://app.example.com:8443/meta",
            "https://app.example.com/meta?v=1",
            "https://203.0.113.5/meta",
            "https://[2001:db8::1]/meta",
        ] {
            assert!(r.is_metadata_url(ok), "{ok}");
        }
        for bad in [
            "",
            "abc123randomclientid",
            "https://app.example.com",
            "https://app.example.com/",
            "http://app.example.com/meta",
            "http://127.0.0.1:8080/meta",
            "https://app.example.com/meta#frag",
            "https://app.example.com/meta#",
            "https://user@app.example.com/meta",
            "https://user:pw@app.example.com/meta",
            "https://app.example.com/a/../meta",
            "https://app.example.com/a/./meta",
            "https://app.example.com/a/%2e%2e/meta",
            "https://app.example.com/meta/..",
            "https://APP.example.com/meta",
            "https://app.example.com:443/meta",
            "ftp://app.example.com/meta",
            "urn:example:client",
            "https:///meta",
            " https://app.example.com/meta",
        ] {
            assert!(!r.is_metadata_url(bad), "{bad}");
        }
    }

    #[test]
    fn dev_mode_allows_http_on_loopback_only() {
        let r = resolver(true);
        assert!(r.is_metadata_url("http://127.0.0.1:8080/meta"));
        assert!(r.is_metadata_url("http://localhost:8080/meta"));
        assert!(r.is_metadata_url("http://[::1]:8080/meta"));
        assert!(r.is_metadata_url(URL));
        assert!(!r.is_metadata_url("http://app.example.com/meta"));
        assert!(!r.is_metadata_url("http://10.0.0.1/meta"));
        assert!(!r.is_metadata_url("http://127.0.0.1:8080/"));
    }

    #[test]
    fn ssrf_ipv4_classification() {
        for refused in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_public_ip(ip), "{refused}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public_ip(ip), "{public}");
        }
    }

    #[test]
    fn ssrf_ipv6_classification() {
        for refused in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001::1",
            "2001:db8::1",
            "2001:2::1",
            "2001:10::1",
            "3fff::1",
            "3fff:fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_public_ip(ip), "{refused}");
        }
        for public in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "3ffe::1",
            "3fff:1000::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public_ip(ip), "{public}");
        }
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(cache_ttl(None, 300, 86_400), Some(300));
        assert_eq!(cache_ttl(Some(""), 300, 86_400), Some(300));
        assert_eq!(cache_ttl(Some("public"), 300, 86_400), Some(300));
        assert_eq!(cache_ttl(Some("max-age=60"), 300, 86_400), Some(60));
        assert_eq!(
            cache_ttl(Some("public, MAX-AGE=3600"), 300, 86_400),
            Some(3600)
        );
        assert_eq!(cache_ttl(Some("max-age=\"120\""), 300, 86_400), Some(120));
        assert_eq!(
            cache_ttl(Some("max-age=999999999"), 300, 86_400),
            Some(86_400)
        );
        assert_eq!(
            cache_ttl(Some("max-age=600,max-age=30"), 300, 86_400),
            Some(30)
        );
        assert_eq!(cache_ttl(Some("max-age=0"), 300, 86_400), None);
        assert_eq!(cache_ttl(Some("max-age=junk"), 300, 86_400), Some(300));
        assert_eq!(cache_ttl(Some("no-store"), 300, 86_400), None);
        assert_eq!(cache_ttl(Some("max-age=60, no-cache"), 300, 86_400), None);
        assert_eq!(cache_ttl(Some("No-Store"), 300, 86_400), None);
        assert_eq!(
            cache_ttl(None, 300, 100),
            Some(100),
            "the default is capped too"
        );
        assert_eq!(cache_ttl(None, 0, 100), None);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type(Some("application/json")));
        assert!(is_json_content_type(Some(
            "Application/JSON; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("application/cimd+json")));
        assert!(!is_json_content_type(Some("text/html")));
        assert!(!is_json_content_type(Some("text/json+html")));
        assert!(!is_json_content_type(Some("application/jsonp")));
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn good_document_becomes_a_public_client() {
        let c = validate_document(URL, &good_doc(), 42).unwrap();
        assert_eq!(
            c,
            Client {
                client_id: URL.into(),
                client_name: Some("Example App".into()),
                redirect_uris: vec![
                    "https://app.example.com/callback".into(),
                    "http://127.0.0.1/cb".into()
                ],
                grant_types: vec!["authorization_code".into(), "refresh_token".into()],
                token_endpoint_auth_method: "none".into(),
                scope: None,
                created_at: 42,
                secret_hash: None,
                last_used_at: 42,
                pinned: false,
            }
        );
    }

    #[test]
    fn minimal_document_and_optional_fields() {
        let doc = json!({
            "client_id": URL,
            "redirect_uris": ["https://app.example.com/cb"],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "scope": " mcp:read  mcp:write ",
            "client_name": "  \u{202e}Evil\u{0007}\nName  ",
        });
        let c = validate_document(URL, &doc, 1).unwrap();
        assert_eq!(c.grant_types, vec!["authorization_code".to_string()]);
        assert_eq!(c.scope.as_deref(), Some("mcp:read mcp:write"));
        assert_eq!(c.client_name.as_deref(), Some("EvilName"));
        let long = json!({
            "client_id": URL,
            "redirect_uris": ["https://app.example.com/cb"],
            "client_name": "x".repeat(500),
        });
        let c = validate_document(URL, &long, 1).unwrap();
        assert_eq!(c.client_name.map(|n| n.chars().count()), Some(200));
        let blank = json!({
            "client_id": URL,
            "redirect_uris": ["https://app.example.com/cb"],
            "client_name": " \t ",
            "scope": "",
        });
        let c = validate_document(URL, &blank, 1).unwrap();
        assert_eq!(c.client_name, None);
        assert_eq!(c.scope, None);
    }

    fn with(field: &str, value: Value) -> Value {
        let mut doc = good_doc();
        doc[field] = value;
        doc
    }

    fn without(field: &str) -> Value {
        let mut doc = good_doc();
        doc.as_object_mut().unwrap().remove(field);
        doc
    }

    /// Which error a refused case must give.
    type Check = fn(&CimdError) -> bool;

    #[test]
    fn documents_refused() {
        let cases: Vec<(Value, Check)> = vec![
            (json!([1, 2]), |e| matches!(e, CimdError::InvalidJson)),
            (without("client_id"), |e| {
                matches!(e, CimdError::ClientIdMismatch)
            }),
            (
                with("client_id", json!("https://other.example.com/meta")),
                |e| matches!(e, CimdError::ClientIdMismatch),
            ),
            (with("client_id", json!(format!("{URL}/"))), |e| {
                matches!(e, CimdError::ClientIdMismatch)
            }),
            (with("client_id", json!(7)), |e| {
                matches!(e, CimdError::ClientIdMismatch)
            }),
            (with("client_secret", json!("s3cret")), |e| {
                matches!(e, CimdError::ContainsSecret)
            }),
            (with("client_secret_expires_at", json!(0)), |e| {
                matches!(e, CimdError::ContainsSecret)
            }),
            (
                with("token_endpoint_auth_method", json!("private_key_jwt")),
                |e| matches!(e, CimdError::UnsupportedAuthMethod(m) if m == "private_key_jwt"),
            ),
            (
                with("token_endpoint_auth_method", json!("client_secret_basic")),
                |e| matches!(e, CimdError::UnsupportedAuthMethod(_)),
            ),
            (with("token_endpoint_auth_method", json!(1)), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
            (without("redirect_uris"), |e| {
                matches!(e, CimdError::InvalidRedirectUri(_))
            }),
            (with("redirect_uris", json!([])), |e| {
                matches!(e, CimdError::InvalidRedirectUri(_))
            }),
            (
                with("redirect_uris", json!("https://app.example.com/cb")),
                |e| matches!(e, CimdError::InvalidRedirectUri(_)),
            ),
            (
                with("redirect_uris", json!(["http://evil.example.com/cb"])),
                |e| matches!(e, CimdError::InvalidRedirectUri(_)),
            ),
            (with("redirect_uris", json!(["javascript:alert(1)"])), |e| {
                matches!(e, CimdError::InvalidRedirectUri(_))
            }),
            (
                with("redirect_uris", json!(["https://a.example/cb#x"])),
                |e| matches!(e, CimdError::InvalidRedirectUri(_)),
            ),
            (with("grant_types", json!(["client_credentials"])), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
            (
                with("grant_types", json!(["authorization_code", "implicit"])),
                |e| matches!(e, CimdError::InvalidMetadata(_)),
            ),
            (with("grant_types", json!([])), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
            (with("response_types", json!(["token"])), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
            (with("client_name", json!(["x"])), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
            (with("scope", json!("mcp:read \"quoted\"")), |e| {
                matches!(e, CimdError::InvalidMetadata(_))
            }),
        ];
        for (i, (doc, check)) in cases.into_iter().enumerate() {
            let err = validate_document(URL, &doc, 0).unwrap_err();
            assert!(check(&err), "case {i}: {err:?}");
        }
    }

    #[test]
    fn error_messages_are_short_and_clean() {
        let huge = format!("http://evil.example.com/{}\u{0007}", "a".repeat(4000));
        let err = validate_document(URL, &with("redirect_uris", json!([huge])), 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 400, "{}", msg.len());
        assert!(!msg.contains('\u{0007}'));
        let oauth: OAuthError = err.into();
        assert_eq!(oauth.error_code(), "invalid_client");
    }

    #[tokio::test]
    async fn resolve_refuses_non_urls_and_forbidden_hosts_without_fetching() {
        let r = resolver(false);
        assert!(matches!(
            r.resolve("random-client-id", 0).await,
            Err(CimdError::NotMetadataUrl)
        ));
        assert!(matches!(
            r.resolve("http://127.0.0.1:9/meta", 0).await,
            Err(CimdError::NotMetadataUrl)
        ));
        for literal in [
            "https://127.0.0.1:9/meta",
            "https://10.1.2.3/meta",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]:9/meta",
            "https://[::ffff:7f00:1]:9/meta",
        ] {
            assert!(
                matches!(
                    r.resolve(literal, 0).await,
                    Err(CimdError::ForbiddenAddress)
                ),
                "{literal}"
            );
        }
    }

    #[test]
    fn cache_evicts_when_full() {
        let r = resolver(false);
        let client = validate_document(URL, &good_doc(), 0).unwrap();
        for i in 0..MAX_CACHE_ENTRIES {
            r.store(&format!("{URL}{i}"), &client, 100 + i as u64, 0);
        }
        r.store(URL, &client, 50_000, 0);
        let cache = r.inner.cache.lock().unwrap();
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        assert!(cache.contains_key(URL));
        assert!(
            !cache.contains_key(&format!("{URL}0")),
            "soonest expiry evicted"
        );
    }
}
