//! Finding the authorization server, as a client: the `WWW-Authenticate` challenge
//! (RFC 6750 §3, `resource_metadata` of RFC 9728 §5.1), protected resource metadata
//! (RFC 9728 §3), authorization server metadata (RFC 8414 §3 and OIDC
//! Discovery in the MCP order, b3/c2, with the `issuer` check of RFC 8414 §3.3), and the
//! 2025-03-26 fallbacks for servers that have neither.

use serde::{Deserialize, Serialize};
use url::Url;

use super::ClientError;
use super::http::Http;
pub use crate::web::wellknown::as_metadata_urls;

/// The parameters of a `Bearer` challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub resource_metadata: Option<String>,
    pub scope: Option<String>,
    pub error: Option<String>,
}

/// Parse `WWW-Authenticate` values; the `Bearer` challenge's parameters, if there is one.
/// Several challenges may share one header (`DPoP …, Bearer …`), so the scheme is found by
/// walking the auth-params (RFC 9110 §11.6.1), honouring quoted strings.
pub fn parse_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    for value in values {
        let mut scheme: Option<String> = None;
        let mut found: Option<Challenge> = None;
        let mut rest = value.trim();
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            let token = &rest[..end];
            let after = rest[end..].trim_start();
            if let Some(after_eq) = after.strip_prefix('=') {
                let after_eq = after_eq.trim_start();
                let (val, remaining) = if let Some(q) = after_eq.strip_prefix('"') {
                    parse_quoted(q)
                } else {
                    let e = after_eq.find(',').unwrap_or(after_eq.len());
                    (after_eq[..e].trim().to_string(), &after_eq[e..])
                };
                if let Some(c) = found.as_mut()
                    && scheme.as_deref() == Some("bearer")
                {
                    match token.to_ascii_lowercase().as_str() {
                        "resource_metadata" => c.resource_metadata = Some(val),
                        "scope" => c.scope = Some(val),
                        "error" => c.error = Some(val),
                        _ => {}
                    }
                }
                rest = remaining.trim_start().trim_start_matches(',').trim_start();
            } else if token.is_empty() {
                rest = after.trim_start_matches(',').trim_start();
            } else {
                // A new scheme. Stop once the Bearer challenge is complete.
                if scheme.as_deref() == Some("bearer") {
                    break;
                }
                scheme = Some(token.to_ascii_lowercase());
                if scheme.as_deref() == Some("bearer") {
                    found = Some(Challenge::default());
                }
                rest = after.trim_start_matches(',').trim_start();
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

fn parse_quoted(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '"' => return (out, &s[i + 1..]),
            _ => out.push(c),
        }
    }
    (out, "")
}

/// RFC 9728 protected resource metadata (the fields a client uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceMetadata {
    pub resource: Option<String>,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Option<Vec<String>>,
}

/// RFC 8414 authorization server metadata (the fields a client uses).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AsMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub registration_endpoint: Option<String>,
    /// RFC 7009; absent from caches written before `logout` existed.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    pub grant_types_supported: Option<Vec<String>>,
    pub code_challenge_methods_supported: Option<Vec<String>>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    pub token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl AsMetadata {
    pub fn supports(list: &Option<Vec<String>>, value: &str) -> bool {
        list.as_ref().is_some_and(|l| l.iter().any(|v| v == value))
    }
}

/// Everything discovery found.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The `resource` to send (RFC 8707): the metadata's, checked against the server URL;
    /// the canonical server URL when there is no metadata.
    pub resource: String,
    /// Scopes the protected resource lists.
    pub resource_scopes: Option<Vec<String>>,
    pub metadata: AsMetadata,
    /// No protected resource metadata: a 2025-03-26 server that is its own authorization
    /// server.
    pub legacy: bool,
}

/// The canonical form of the MCP server URL (RFC 8707 §2: no fragment; lower-case scheme
/// and host, which `Url` does; no trailing slash on a non-root path).
pub fn canonical(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    let s = u.to_string();
    if u.query().is_none() {
        s.trim_end_matches('/').to_string()
    } else {
        s
    }
}

/// The protected resource metadata URLs to try, in the MCP order (c1).
fn resource_metadata_urls(server: &Url, challenge: Option<&Challenge>) -> Vec<Url> {
    let mut urls = Vec::new();
    if let Some(u) = challenge
        .and_then(|c| c.resource_metadata.as_deref())
        .and_then(|u| server.join(u).ok())
    {
        urls.push(u);
    }
    let path = server.path().trim_end_matches('/');
    let origin = origin(server);
    if !path.is_empty()
        && let Ok(u) = Url::parse(&format!(
            "{origin}/.well-known/oauth-protected-resource{path}"
        ))
    {
        urls.push(u);
    }
    if let Ok(u) = Url::parse(&format!("{origin}/.well-known/oauth-protected-resource")) {
        urls.push(u);
    }
    urls.dedup();
    urls
}

fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// Is `resource` (from the metadata) allowed for the server at `server`: same origin, and
/// its path a prefix of the server's path on a segment boundary.
pub fn resource_matches(server: &Url, resource: &str) -> bool {
    let Ok(r) = Url::parse(resource) else {
        return false;
    };
    if r.origin() != server.origin() {
        return false;
    }
    let rp = r.path().trim_end_matches('/');
    let sp = server.path().trim_end_matches('/');
    rp.is_empty() || sp == rp || sp.starts_with(&format!("{rp}/"))
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Discover the authorization server for the MCP server at `server`.
pub async fn discover(
    http: &Http,
    server: &Url,
    challenge: Option<&Challenge>,
) -> Result<Discovered, ClientError> {
    let mut prm: Option<ResourceMetadata> = None;
    for url in resource_metadata_urls(server, challenge) {
        let reply = http.get_json(&url).await?;
        if reply.status.is_success() {
            match serde_json::from_slice::<ResourceMetadata>(&reply.body) {
                Ok(m) => {
                    prm = Some(m);
                    break;
                }
                Err(e) => http.trace(&format!("unusable resource metadata at {url}: {e}")),
            }
        }
    }
    let canonical_server = canonical(server);
    let (resource, resource_scopes, issuer, legacy) = match prm {
        Some(m) => {
            let resource = match m.resource {
                Some(r) if resource_matches(server, &r) => r,
                Some(r) => {
                    return Err(ClientError::Protocol(format!(
                        "the protected resource metadata is for {r}, not for {canonical_server}; refusing to authorize"
                    )));
                }
                None => {
                    return Err(ClientError::Protocol(
                        "the protected resource metadata has no \"resource\"".into(),
                    ));
                }
            };
            let Some(issuer) = m.authorization_servers.first().cloned() else {
                return Err(ClientError::Protocol(
                    "the protected resource metadata lists no authorization server".into(),
                ));
            };
            (resource, m.scopes_supported, issuer, false)
        }
        // 2025-03-26: the MCP server's origin is the authorization server.
        None => (canonical_server, None, origin(server), true),
    };
    let issuer_url = Url::parse(&issuer).map_err(|_| {
        ClientError::Protocol(format!("the authorization server {issuer:?} is not a URL"))
    })?;
    for url in as_metadata_urls(&issuer_url) {
        let reply = http.get_json(&url).await?;
        if reply.status.is_client_error() {
            continue;
        }
        if !reply.status.is_success() {
            return Err(ClientError::Protocol(format!(
                "authorization server metadata at {url}: HTTP {}",
                reply.status
            )));
        }
        let metadata: AsMetadata = serde_json::from_slice(&reply.body).map_err(|e| {
            ClientError::Protocol(format!("authorization server metadata at {url}: {e}"))
        })?;
        // RFC 8414 §3.3: the issuer must be the one the URL was built from. A 2025-03-26
        // server only guessed at (its origin) may name a longer issuer; nothing to check.
        if !legacy && !same_issuer(&metadata.issuer, &issuer) {
            return Err(ClientError::Protocol(format!(
                "authorization server metadata at {url} names issuer {}, expected {issuer}",
                metadata.issuer
            )));
        }
        return Ok(Discovered {
            resource,
            resource_scopes,
            metadata,
            legacy,
        });
    }
    if !legacy {
        return Err(ClientError::Protocol(format!(
            "no authorization server metadata found for {issuer}"
        )));
    }
    // 2025-03-26 fallback: default endpoints at the server's origin.
    http.trace("no metadata anywhere: using /authorize, /token and /register at the origin");
    Ok(Discovered {
        resource,
        resource_scopes,
        metadata: AsMetadata {
            issuer: issuer.clone(),
            authorization_endpoint: Some(format!("{issuer}/authorize")),
            token_endpoint: format!("{issuer}/token"),
            registration_endpoint: Some(format!("{issuer}/register")),
            code_challenge_methods_supported: Some(vec!["S256".into()]),
            ..AsMetadata::default()
        },
        legacy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c1_challenge_parameters_are_read() {
        let c = parse_challenge([
            r#"Bearer error="insufficient_scope", scope="mcp:read mcp:write", resource_metadata="http://h/.well-known/oauth-protected-resource/mcp""#,
        ])
        .unwrap();
        assert_eq!(c.error.as_deref(), Some("insufficient_scope"));
        assert_eq!(c.scope.as_deref(), Some("mcp:read mcp:write"));
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("http://h/.well-known/oauth-protected-resource/mcp")
        );
    }

    #[test]
    fn c1_bearer_is_found_among_other_schemes() {
        let c = parse_challenge([r#"DPoP algs="ES256", Bearer scope="a\"b", realm=x"#]).unwrap();
        assert_eq!(c.scope.as_deref(), Some("a\"b"));
        assert!(parse_challenge(["Basic realm=\"x\""]).is_none());
        assert_eq!(parse_challenge(["Bearer"]), Some(Challenge::default()));
    }

    #[test]
    fn c1_prm_urls_in_order() {
        let server = Url::parse("http://h:1/public/mcp/").unwrap();
        let urls: Vec<String> = resource_metadata_urls(&server, None)
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            urls,
            [
                "http://h:1/.well-known/oauth-protected-resource/public/mcp",
                "http://h:1/.well-known/oauth-protected-resource"
            ]
        );
    }

    #[test]
    fn resource_must_be_this_server() {
        let server = Url::parse("http://localhost:5/mcp").unwrap();
        assert!(resource_matches(&server, "http://localhost:5/mcp"));
        assert!(resource_matches(&server, "http://localhost:5"));
        assert!(!resource_matches(&server, "http://localhost:5/mc"));
        assert!(!resource_matches(&server, "https://evil.example.com/mcp"));
        assert!(!resource_matches(&server, "http://localhost:6/mcp"));
    }

    #[test]
    fn canonical_urls() {
        let c = |s: &str| canonical(&Url::parse(s).unwrap());
        assert_eq!(c("HTTP://Example.COM/mcp/"), "http://example.com/mcp");
        assert_eq!(c("http://example.com/"), "http://example.com");
        assert_eq!(c("http://example.com/mcp#frag"), "http://example.com/mcp");
    }
}
