//! Where a browser request comes from and which name it was sent to: the effective
//! authority (HTTP/1.1 `Host` or HTTP/2 `:authority`), same-origin form posts, and the
//! origins allowed to call the MCP endpoint (DNS-rebinding defence).

use axum::http::{HeaderMap, Uri, header};
use url::Url;

/// The authority a request was sent to: its target's (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target) or else its one `Host` header. More than one `Host`
/// (RFC 9112 §3.2), a `Host` that contradicts the target (RFC 9113 §8.3.1), user info, or a
/// value that is not text are errors.
pub fn effective_authority<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let host = match host {
        Some(v) => Some(v.to_str().map_err(|_| "the Host header is not text")?),
        None => None,
    };
    let authority = match (uri.authority(), host) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => {
            return Err("the Host header does not match the request target");
        }
        (Some(a), _) => Some(a.as_str()),
        (None, h) => h,
    };
    match authority {
        Some(a) if a.is_empty() || a.contains('@') => Err("the request's host is malformed"),
        a => Ok(a),
    }
}

/// Whether a form post comes from our own page: browsers send `Sec-Fetch-Site` and `Origin`
/// on POST; a cross-site value means a forged submission.
pub fn same_origin_post(public_origin: &str, headers: &HeaderMap) -> bool {
    // Fetch metadata is set by the browser and cannot be forged by a page. A same-origin
    // post may still carry `Origin: null` (privacy settings), so this answer is final.
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin") => return true,
        Some("cross-site" | "same-site") => return false,
        _ => {}
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if origin == public_origin {
        return true;
    }
    // The page may be reached under another name of the same host (localhost vs 127.0.0.1).
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok());
    match (Url::parse(origin), host) {
        (Ok(o), Some(host)) => {
            o.host_str().map(|h| match o.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            }) == Some(host.to_string())
        }
        _ => false,
    }
}

/// Whether a browser origin may call the MCP endpoint: loopback origins, the public
/// origin, and the configured extras.
pub fn origin_allowed(origin: &str, public_origin: &str, extra: &[String]) -> bool {
    if origin == public_origin || extra.iter().any(|o| o == origin) {
        return true;
    }
    match Url::parse(origin) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        }
        Err(_) => false,
    }
}
