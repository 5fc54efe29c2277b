//! Redirect URIs and resource identifiers: what may be registered (RFC 8252 §7),
//! how a presented redirect URI matches a registered one (exactly, except the port of an
//! http loopback URI, RFC 8252 §7.3), and the canonical form of `resource` (RFC 8707).

use url::{Host, Url};

/// Whether a host is loopback, by IP literal or the name `localhost`.
fn is_loopback(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Why a redirect URI is refused, in words for the client's developer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedirectUriRefused(String);

impl From<String> for RedirectUriRefused {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for RedirectUriRefused {
    fn from(reason: &str) -> Self {
        Self(reason.to_string())
    }
}

/// Check a redirect URI offered at registration. `Err` says why it is refused.
pub fn validate_redirect_uri(raw: &str) -> Result<(), RedirectUriRefused> {
    // The URL parser silently drops tabs and newlines; a URI never contains them.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a redirect URI must not contain spaces or control characters".into());
    }
    let url = Url::parse(raw)
        .map_err(|e| RedirectUriRefused(format!("`{raw}` is not an absolute URI: {e}")))?;
    if url.fragment().is_some() || raw.contains('#') {
        return Err(format!("`{raw}` must not contain a fragment").into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{raw}` must not contain user information").into());
    }
    match url.scheme() {
        "https" => {
            if url.host().is_none() {
                return Err(format!("`{raw}` has no host").into());
            }
            Ok(())
        }
        "http" => {
            if is_loopback(url.host()) {
                Ok(())
            } else {
                Err(format!(
                    "`{raw}`: http redirect URIs must use a loopback host (127.0.0.1, [::1] or localhost)"
                ).into())
            }
        }
        // Schemes a browser or the OS gives other meanings (a page's source, the browser's
        // own pages, archives, mail, scripts, inline documents, files, the retired
        // out-of-band value): never a place to deliver a code.
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "ftp" | "ws" | "wss"
        | "view-source" | "chrome" | "chrome-extension" | "jar" | "filesystem" | "mailto"
        | "urn" => Err(format!("`{raw}`: scheme `{}` is not allowed", url.scheme()).into()),
        // Private-use URI schemes of native apps, in reverse-domain form (RFC 8252 §7.1):
        // `com.example.app:/cb`. A scheme without a period is not one an app can claim as
        // its own, and may be one a browser or another app handles.
        scheme if scheme.contains('.') => Ok(()),
        scheme => Err(format!(
            "`{raw}`: scheme `{scheme}` is not allowed; use https, http on a loopback host, or a private-use scheme in reverse-domain form such as com.example.app:/callback (RFC 8252 §7.1)"
        ).into()),
    }
}

/// Whether `presented` matches `registered`: the same string, or both http loopback URIs
/// equal in all but the port (RFC 8252 §7.3).
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (Url::parse(registered), Url::parse(presented)) else {
        return false;
    };
    // Only the port may differ: the presented URI must already be in the parser's
    // canonical form (no case games, dot segments or stripped characters).
    p.as_str() == presented
        && r.scheme() == "http"
        && p.scheme() == "http"
        && is_loopback(r.host())
        && r.host() == p.host()
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
        && p.username().is_empty()
        && p.password().is_none()
        && !presented.contains('#')
}

/// The canonical form of a resource URI: lower-case scheme and host (the `url` crate does
/// that), no fragment, no trailing slash on the path. `None` if it is not a URL.
pub fn canonical_resource(raw: &str) -> Option<String> {
    let url = Url::parse(raw).ok()?;
    if url.fragment().is_some() || url.cannot_be_a_base() {
        return None;
    }
    let s = url.as_str();
    Some(s.strip_suffix('/').unwrap_or(s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_accepts_https_loopback_and_private_schemes() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "http://127.0.0.1:33418/callback",
            "http://localhost/callback",
            "http://[::1]:8080/cb",
            "com.example.app:/oauth2redirect",
            "com.example.app://oauth2redirect",
        ] {
            assert!(validate_redirect_uri(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn registration_refuses_the_rest() {
        for bad in [
            "http://example.com/cb",
            "https://example.com/cb#frag",
            "https://user:pw@example.com/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "/relative",
            "http://127.0.0.1.evil.com/cb",
            "https://app.example/cb\r\nX-Injected: yes",
            "https://app.example/c b",
            "view-source:https://app.example/cb",
            "chrome://settings",
            "chrome-extension://abc/cb",
            "jar:https://app.example/x.jar!/cb",
            "filesystem:https://app.example/temporary/cb",
            "mailto:someone@example.com",
            "file:///etc/passwd",
            "urn:ietf:wg:oauth:2.0:oob",
            "myapp:/callback",
            "cursor://anysphere.cursor-retrieval/oauth/cb",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_match_with_floating_loopback_port() {
        let reg = "http://127.0.0.1/callback";
        assert!(redirect_uri_matches(reg, "http://127.0.0.1:51234/callback"));
        assert!(redirect_uri_matches(
            "http://localhost:1/cb",
            "http://localhost:2/cb"
        ));
        assert!(!redirect_uri_matches(reg, "http://127.0.0.1:5/other"));
        assert!(
            !redirect_uri_matches(reg, "http://localhost:5/callback"),
            "host must be the same"
        );
        assert!(!redirect_uri_matches(reg, "http://127.0.0.1:5/callback#x"));
        assert!(!redirect_uri_matches(reg, "http://u@127.0.0.1:5/callback"));
        let https = "https://app.example/cb";
        assert!(redirect_uri_matches(https, https));
        assert!(
            !redirect_uri_matches(https, "https://app.example:444/cb"),
            "ports float only on loopback http"
        );
        assert!(!redirect_uri_matches(https, "https://APP.example/cb/"));
        assert!(!redirect_uri_matches(https, "https://app.example/cb?x=1"));
        for tricky in [
            "HTTP://127.0.0.1:5/callback",
            "http://127.0.0.1:5/x/../callback",
            "http://127.0.0.1:5/call\tback",
            "http://127.0.0.1:5/callback\n",
        ] {
            assert!(!redirect_uri_matches(reg, tricky), "{tricky:?}");
        }
    }

    #[test]
    fn resource_is_canonicalized() {
        assert_eq!(
            canonical_resource("HTTP://LocalHost:3002/mcp/").as_deref(),
            Some("http://localhost:3002/mcp")
        );
        assert_eq!(
            canonical_resource("http://127.0.0.1:3002/mcp").as_deref(),
            Some("http://127.0.0.1:3002/mcp")
        );
        assert_eq!(canonical_resource("http://h/mcp#x"), None);
        assert_eq!(canonical_resource("not a url"), None);
    }
}
