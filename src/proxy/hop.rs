//! What every forwarder in the gateway does the same way, whoever it forwards for: the public
//! proxy to its backends ([`super::forward`]) and the MCP connector to an upstream server
//! ([`crate::mcp::upstream`]). A pooled plain-HTTP client, the request pointed at the
//! target over HTTP/1.1 with the target's `Host` and without hop-by-hop headers
//! (RFC 9110 §7.6.1), the response head awaited within a timeout while both bodies stream,
//! and the response's hop-by-hop headers dropped. What a caller adds or removes besides, and
//! how it answers a failure, stays with the caller.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, Version, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client forwarders send with.
pub type HttpClient = Client<HttpConnector, Body>;

/// The client for targets that may be https (an upstream MCP server): the same pool and
/// connector, with TLS verified per `tls` when the target's scheme asks for it.
pub type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A pooled client for http and https targets; see [`client`].
pub fn tls_client(tls: rustls::ClientConfig) -> TlsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A pooled client for plain-HTTP targets beside the gateway, without Nagle's delay (small
/// SSE events and JSON-RPC answers must not wait). `pool_idle_timeout`: how long an idle
/// pooled connection is kept (`None`: hyper's default).
pub fn client(pool_idle_timeout: Option<Duration>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if let Some(idle) = pool_idle_timeout {
        builder.pool_idle_timeout(idle);
    }
    builder.build(connector)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// Parsed once: removing by name would parse each one again on every request.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Headers a `Connection` list may not remove: what the backends use to tell where a request
/// comes from and which name it was sent to. Letting a client strip them would let it hide
/// its host name or its address from the operator pages' checks.
const NEVER_HOP_BY_HOP: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// Remove the hop-by-hop headers: the fixed list, those the `Connection` header names, and
/// `Transfer-Encoding` (the client frames the body again).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty() && !NEVER_HOP_BY_HOP.contains(&s.as_str()))
            .collect();
        for name in &listed {
            headers.remove(name.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Point a request at `{scheme}://{authority}{path_and_query}` over HTTP/1.1: its
/// hop-by-hop headers dropped and its `Host` the target's (the servers behind check it).
/// Fails, leaving `parts` as they were, when that is not a URI.
pub fn retarget(
    parts: &mut Parts,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
) -> Result<(), axum::http::Error> {
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    h.remove(header::HOST);
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    Ok(())
}

/// Why a target gave no response.
#[derive(Debug)]
pub enum SendError {
    /// It could not be reached, or broke off before answering.
    Unreachable(hyper_util::client::legacy::Error),
    /// Its response head did not arrive in time.
    TimedOut,
}

/// Send `req` with `timeout` on the response head only (the bodies stream for as long as
/// they take), and drop the response's hop-by-hop headers.
pub async fn send<C>(
    client: &Client<C, Body>,
    timeout: Duration,
    req: Request,
) -> Result<Response, SendError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Ok(Err(e)) => Err(SendError::Unreachable(e)),
        Err(_) => Err(SendError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_including_connection_listed_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn a_retargeted_request_names_the_target_in_its_uri_and_host() {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri("http://public.example/mcp?x=1")
            .version(Version::HTTP_2)
            .header(header::HOST, "public.example")
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "1")
            .header(header::AUTHORIZATION, "Bearer t")
            .body(())
            .unwrap()
            .into_parts();
        retarget(&mut parts, "http", "127.0.0.1:3001", "/mcp?x=1").unwrap();
        assert_eq!(parts.uri, "http://127.0.0.1:3001/mcp?x=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers[header::HOST], "127.0.0.1:3001");
        assert!(!parts.headers.contains_key("x-hop"));
        assert!(parts.headers.contains_key(header::AUTHORIZATION));
        assert!(retarget(&mut parts, "http", "bad host", "/").is_err());
        assert_eq!(parts.uri, "http://127.0.0.1:3001/mcp?x=1");
    }
}
