//! Forwarding one request to its backend with a pooled hyper client, streaming both bodies.
//! Phases: choose the backend, rewrite the request (target URI, `Host`, hop-by-hop headers,
//! `X-Forwarded-*`), send with a timeout on the response head only, rewrite the response,
//! log without secrets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::hop::{self, SendError};
use super::pool::Pool;
use super::trace::{RequestTrace, TraceEntry, redacted_headers};
use super::{Backend, Backends, backend_for, cors};
use crate::shared::Shared;
use crate::web::routes::route_name;

/// What the proxy needs.
#[derive(Clone)]
pub struct ProxyState {
    metrics_public: bool,
    metrics: Arc<crate::metrics::Metrics>,
    trace: Option<Arc<RequestTrace>>,
    backends: Backends,
    /// The network hop's connections to each backend.
    pools: [Arc<Pool>; 3],
    scheme: &'static str,
    timeout: Duration,
    /// The backends' routers, when the hop is in-process (`proxy_hop`).
    local: Option<Arc<LocalBackends>>,
    /// Write the access log (`access_log`), telling clients apart through these proxies.
    access_log: Option<Arc<crate::web::client_ip::TrustedProxies>>,
    /// Each backend's `Host`, made once.
    hosts: [Option<HeaderValue>; 3],
    cors: cors::Cors,
}

/// The gateway's own listeners' routers, called in memory by the proxy: the same router
/// (middleware included) each listener serves, without loopback TCP or a second HTTP parse.
#[derive(Clone)]
pub struct LocalBackends {
    /// What :3001 serves.
    pub mcp: Router,
    /// What :3003 serves.
    pub routes: Router,
    /// What :3004 serves.
    pub jwks: Router,
}

impl LocalBackends {
    fn of(&self, backend: Backend) -> Router {
        match backend {
            Backend::Mcp => self.mcp.clone(),
            Backend::Routes => self.routes.clone(),
            Backend::Jwks => self.jwks.clone(),
        }
    }
}

/// The backends, in the order of [`ProxyState`]'s arrays.
const BACKENDS: [Backend; 3] = [Backend::Mcp, Backend::Routes, Backend::Jwks];

fn index(backend: Backend) -> usize {
    match backend {
        Backend::Mcp => 0,
        Backend::Routes => 1,
        Backend::Jwks => 2,
    }
}

/// The public proxy: what the public listener answers every request with. Cheap to clone.
#[derive(Clone)]
pub struct Proxy(Arc<ProxyState>);

impl Proxy {
    /// A proxy to `backends`; with `local`, the backends are called in memory.
    pub fn new(
        shared: &Shared,
        trace: Option<Arc<RequestTrace>>,
        backends: Backends,
        local: Option<LocalBackends>,
    ) -> Self {
        let scheme = if shared.settings.issuer.starts_with("https:") {
            "https"
        } else {
            "http"
        };
        Self(Arc::new(ProxyState {
            metrics_public: shared.settings.config.metrics_public,
            metrics: shared.metrics.clone(),
            trace,
            pools: BACKENDS.map(|b| Pool::new(backends.addr(b))),
            scheme,
            timeout: Duration::from_secs(shared.settings.config.upstream_timeout_seconds),
            local: local.map(Arc::new),
            access_log: shared
                .settings
                .config
                .access_log
                .then(|| shared.settings.trusted_proxies.clone()),
            hosts: BACKENDS.map(|b| HeaderValue::from_str(&backends.addr(b).to_string()).ok()),
            backends,
            cors: cors::layer(shared.settings.clone()),
        }))
    }

    /// Answer `req` from `peer`: size limits first, then CORS where the route has a policy,
    /// then the backend.
    pub async fn handle(&self, req: Request, peer: SocketAddr) -> Response {
        if let Some(refused) = size_limits(&req) {
            return refused;
        }
        let route = route_name(req.uri().path());
        if !self.0.cors.applies(route, req.headers()) {
            return forward(&self.0, req, peer, route).await;
        }
        // Browsers' cross-origin requests, the rare path: boxed, so that the common one's
        // future stays small (it is moved on every request).
        let this = self.clone();
        let inner = tower::service_fn(move |req: Request| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(forward(&this.0, req, peer, route).await) }
        });
        Box::pin(self.0.cors.wrap(inner, req)).await
    }
}

impl super::listen::Handler for Proxy {
    fn handle(&self, req: Request, peer: SocketAddr) -> impl Future<Output = Response> + Send {
        Proxy::handle(self, req, peer)
    }
}

/// The proxy as an axum router, for serving it with `axum::serve` (it needs the peer's
/// address: `into_make_service_with_connect_info::<SocketAddr>`). The gateway's public
/// listener calls [`Proxy::handle`] directly ([`super::listen::serve`]).
pub fn router(
    shared: &Shared,
    trace: Option<Arc<RequestTrace>>,
    backends: Backends,
    local: Option<LocalBackends>,
) -> Router {
    let proxy = Proxy::new(shared, trace, backends, local);
    Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| async move {
            proxy.handle(req, peer).await
        },
    )
}

/// Longest request target accepted (authorization URLs carry a few parameters; 8 KiB is the
/// common floor servers support, RFC 9110 §4.1).
pub const MAX_URI: usize = 8 * 1024;
/// Most header bytes accepted (names and values): room for a JWT, cookies and tracing
/// headers, not for a memory exhaustion attempt.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// 414 and 431 (RFC 9110 §15.5.15, RFC 6585 §5) before anything else looks at the request.
fn size_limits(req: &Request) -> Option<Response> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI {
        return Some((StatusCode::URI_TOO_LONG, "request target too long").into_response());
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            )
                .into_response(),
        );
    }
    None
}

/// A 400 for a request the proxy cannot forward, in the backend's error format.
fn bad_request(backend: Backend, message: &str, request_id: &str) -> Response {
    let body = match backend {
        Backend::Mcp => json!({"jsonrpc": "2.0", "id": null, "error": {
            "code": -32600, "message": message, "data": {"request_id": request_id}}}),
        _ => json!({"error": "invalid_request", "error_description": message,
                    "request_id": request_id}),
    };
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// A body for the authorization server, read whole: at most [`crate::web::MAX_FORM_BODY`]
/// bytes, within `timeout`.
async fn read_form_body(body: Body, timeout: Duration) -> Result<Body, (StatusCode, String)> {
    let limit = crate::web::MAX_FORM_BODY;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(Body::from(bytes)),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.into_inner().is::<http_body_util::LengthLimitError>();
            Err(if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {} KiB", limit / 1024),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read".into(),
                )
            })
        }
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time".into(),
        )),
    }
}

/// An RFC 6749 §5.2 `invalid_request` answered by the proxy itself.
fn oauth_error(status: StatusCode, message: String, request_id: &str) -> Response {
    let body = json!({"error": "invalid_request", "error_description": message,
                      "request_id": request_id});
    let mut res = (status, axum::Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn failure(backend: Backend, status: StatusCode, message: &str, request_id: &str) -> Response {
    let body = match backend {
        Backend::Mcp => json!({"jsonrpc": "2.0", "id": null, "error": {
            "code": -32603, "message": message, "data": {"request_id": request_id}}}),
        _ => json!({"error": "temporarily_unavailable", "error_description": message,
                    "request_id": request_id}),
    };
    (status, axum::Json(body)).into_response()
}

/// Hand `req` to a backend's router in memory, as its listener would: the peer is the
/// loopback address the proxy's connection would have come from, and the response head must
/// come within `timeout` (bodies stream).
async fn in_process(
    router: Router,
    timeout: Duration,
    mut req: Request,
    backend: SocketAddr,
) -> Result<Response, SendError> {
    use tower::ServiceExt as _;
    let loopback = match backend.ip() {
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    };
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(loopback, 0)));
    match tokio::time::timeout(timeout, router.oneshot(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            hop::strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        }
        Ok(Err(never)) => match never {},
        Err(_) => Err(SendError::TimedOut),
    }
}

/// Headers the proxy sets or reads on every request, parsed once.
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Forward one request from `peer` to the backend of its route (named `route`).
async fn forward(ps: &ProxyState, req: Request, peer: SocketAddr, route: &'static str) -> Response {
    let started = Instant::now();
    let backend = backend_for(route, ps.metrics_public);
    let addr = ps.backends.addr(backend);
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    // The request target as the client sent it (a cheap clone: its parts are shared bytes).
    let target = parts.uri.clone();
    let path = target.path();
    // Every request gets an id, kept when the client sent a sane one, passed to the
    // backend, returned to the client, and in the log and the trace.
    let request_id_value = crate::web::request_id::assign(&mut parts.headers);
    let request_id = request_id_value.to_str().unwrap_or_default();
    // W3C trace context: a well-formed `traceparent` travels on to the backend and the
    // upstream, and its trace id into the logs; a malformed one is dropped (the next hop
    // starts a trace of its own).
    let trace_id = match parts
        .headers
        .get(&TRACEPARENT)
        .map(|v| trace_id_of(v.as_bytes()))
    {
        Some(Some(id)) => id,
        Some(None) => {
            parts.headers.remove(&TRACEPARENT);
            parts.headers.remove(&TRACESTATE);
            String::new()
        }
        None => String::new(),
    };
    let traced_headers = match &ps.trace {
        Some(_) if path != crate::web::routes::DEBUG_REQUESTS => {
            Some(redacted_headers(&parts.headers))
        }
        _ => None,
    };
    // The client's own forwarding headers, for the access log's client address.
    let client_headers = if ps.access_log.is_some() {
        parts.headers.clone()
    } else {
        axum::http::HeaderMap::new()
    };
    // Read before anything is rewritten: the backends' host checks (the operator pages'
    // loopback rule, same-origin form posts) see it as `X-Forwarded-Host`.
    let forwarded_host = match crate::web::origin::effective_authority(&parts.uri, &parts.headers) {
        // The client's `Host` (an origin-form target), passed on as it came.
        Ok(Some(_)) if parts.uri.authority().is_none() => parts.headers.get(header::HOST).cloned(),
        Ok(a) => a.and_then(|a| HeaderValue::from_str(a).ok()),
        Err(message) => return bad_request(backend, message, request_id),
    };
    let Some(host) = ps.hosts[index(backend)].clone() else {
        return failure(
            backend,
            StatusCode::BAD_GATEWAY,
            "upstream unavailable",
            request_id,
        );
    };
    hop::retarget_origin_form(&mut parts, host);
    let h = &mut parts.headers;
    match forwarded_host {
        Some(v) => {
            h.insert(&X_FORWARDED_HOST, v);
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
    // Every line of the header, in order: a load balancer may append its own line, and the
    // client's address it names must not be dropped for a line the client wrote. A line
    // that is not text becomes `unknown`, which stops the backends' walk there.
    let mut xff = String::with_capacity(48);
    for line in h.get_all(&X_FORWARDED_FOR) {
        xff.push_str(line.to_str().unwrap_or("unknown"));
        xff.push_str(", ");
    }
    let _ = write!(xff, "{}", peer.ip());
    // The string's buffer becomes the value's, not copied.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        h.insert(&X_FORWARDED_FOR, v);
    }
    h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(ps.scheme));

    // The authorization server's bodies are small forms and JSON: read them here, whole and
    // bounded, so an oversized one gets the same RFC 6749 answer however it was sent (the
    // backend would answer before reading a chunked body to its end, and the proxy could not
    // finish sending it), and a slow upload holds no backend connection.
    let body = match backend {
        Backend::Routes => match read_form_body(body, ps.timeout).await {
            Ok(b) => b,
            Err((status, message)) => return oauth_error(status, message, request_id),
        },
        _ => body,
    };
    let req = Request::from_parts(parts, body);
    let sent = match &ps.local {
        Some(local) => in_process(local.of(backend), ps.timeout, req, addr).await,
        None if backend == Backend::Mcp && method == axum::http::Method::POST => {
            // A JSON-RPC message: its head and body to the backend in one write, and the
            // answer's head and first events (the backend holds an SSE answer back until
            // its first event) back to the client in one.
            let (parts, body) = req.into_parts();
            let body = Body::new(hop::first_frames(body, hop::FIRST_FRAME_WAIT).await);
            let pool = &ps.pools[index(backend)];
            match pool
                .send(ps.timeout, Request::from_parts(parts, body))
                .await
            {
                Ok(res) if hop::is_event_stream(res.headers()) => {
                    let (parts, body) = res.into_parts();
                    Ok(Response::from_parts(
                        parts,
                        Body::new(hop::first_frames(body, hop::FIRST_FRAME_WAIT).await),
                    ))
                }
                sent => sent,
            }
        }
        None => ps.pools[index(backend)].send(ps.timeout, req).await,
    };
    let res = match sent {
        Ok(res) => res,
        Err(SendError::Unreachable(e)) => {
            tracing::warn!(backend = backend.name(), error = %e, "backend unreachable");
            failure(
                backend,
                StatusCode::BAD_GATEWAY,
                "upstream unavailable",
                request_id,
            )
        }
        Err(SendError::TimedOut) => {
            tracing::warn!(backend = backend.name(), "backend timed out");
            failure(
                backend,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out",
                request_id,
            )
        }
    };
    ps.metrics.proxied(
        backend.name(),
        route,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if let (Some(trace), Some(request_headers)) = (&ps.trace, traced_headers) {
        trace.record(TraceEntry {
            id: 0,
            method: method.to_string(),
            path: path.to_string(),
            backend: backend.name(),
            backend_addr: addr.to_string(),
            status: res.status().as_u16(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            request_headers,
            response_headers: redacted_headers(res.headers()),
        });
    }
    // The path only: query strings carry codes and state.
    let mut res = res;
    res.headers_mut().insert(
        &crate::web::request_id::REQUEST_ID,
        request_id_value.clone(),
    );
    tracing::debug!(
        %method,
        path = %path,
        request_id = %request_id,
        trace_id = %trace_id,
        backend = backend.name(),
        status = res.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "proxied"
    );
    if let Some(trusted) = &ps.access_log {
        let client = crate::web::client_ip::client_ip(peer, &client_headers, trusted);
        tracing::info!(
            target: "access",
            %method,
            path = %path,
            route,
            status = res.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            client = %client,
            request_id = %request_id,
            trace_id = %trace_id,
            "request"
        );
    }
    res
}

/// The trace id of a W3C `traceparent` (version 00: `00-<32 hex>-<16 hex>-<2 hex>`, ids
/// not all zero), or `None` when it is not one.
fn trace_id_of(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    ok.then(|| trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(res: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn only_a_well_formed_traceparent_names_a_trace() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(trace_id_of(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn the_proxys_own_errors_carry_the_request_id() {
        let res = failure(Backend::Mcp, StatusCode::BAD_GATEWAY, "down", "req-1");
        assert_eq!(res.status(), 502);
        let v = body_json(res).await;
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(v["error"]["data"]["request_id"], "req-1");
        let res = failure(
            Backend::Routes,
            StatusCode::GATEWAY_TIMEOUT,
            "slow",
            "req-2",
        );
        let v = body_json(res).await;
        assert_eq!(v["error"], "temporarily_unavailable");
        assert_eq!(v["request_id"], "req-2");
    }
}
