//! What every forwarder in the gateway does the same way, whoever it forwards for: the public
//! proxy to its backends ([`super::forward`]) and the MCP connector to an upstream server
//! ([`crate::mcp::upstream`]). The request pointed at the
//! target over HTTP/1.1 with the target's `Host` and without hop-by-hop headers
//! (RFC 9110 §7.6.1), the response head awaited within a timeout while both bodies stream,
//! and the response's hop-by-hop headers dropped. What a caller adds or removes besides, and
//! how it answers a failure, stays with the caller.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, Version, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
    // Most messages carry none of the fixed list: one pass over their names (comparing
    // names is cheap) before any removal by name (a hash and a probe each).
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
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
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()?;
    let host = HeaderValue::from_str(authority)?;
    parts.uri = uri;
    for_next_hop(parts, host);
    Ok(())
}

/// Point a request at the server whose `Host` is `host` over HTTP/1.1, its target in
/// origin form (the path and query only, as a client sends it to a server it is connected
/// to), without hop-by-hop headers.
pub fn retarget_origin_form(parts: &mut Parts, host: HeaderValue) {
    let mut uri = axum::http::uri::Parts::default();
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    // A path and query alone always make a URI.
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
    for_next_hop(parts, host);
}

fn for_next_hop(parts: &mut Parts, host: HeaderValue) {
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, host);
}

/// Why a target gave no response.
#[derive(Debug)]
pub enum SendError {
    /// It could not be reached, or broke off before answering.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
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
        Ok(Err(e)) => Err(SendError::Unreachable(Box::new(e))),
        Err(_) => Err(SendError::TimedOut),
    }
}

/// How long a head is held back for the first frame of its body ([`first_frames`]): long
/// enough for a quick answer, short against any timeout on the head.
pub const FIRST_FRAME_WAIT: Duration = Duration::from_millis(200);

/// Whether a response is an SSE stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// `body` with its frames that are ready: the first awaited, the rest taken while they
/// come without waiting. Sent on, a message's head and those frames leave in one write
/// instead of one write each (an SSE answer: the head, its event, the end of the stream; a
/// request: its head and its JSON). Whoever sends the head waits for the first frame, at
/// most `wait`; after that the head goes alone and the body streams as it comes.
pub async fn first_frames<B>(mut body: B, wait: Duration) -> Prefetched<B>
where
    B: hyper::body::Body + Unpin,
{
    use futures_util::FutureExt as _;
    use http_body_util::BodyExt as _;
    let mut ready = VecDeque::new();
    let mut ended = body.is_end_stream();
    if !ended {
        // Most first frames are there already, or come once the task that makes them (an
        // MCP session) has had its turn: no timer for those. A timer's deadline is usually
        // the runtime's earliest, and setting it wakes the I/O driver (a syscall).
        let first = match (FrameWithinTurns {
            body: &mut body,
            turns: FIRST_FRAME_TURNS,
        })
        .await
        {
            Some(frame) => Ok(frame),
            None => tokio::time::timeout(wait, body.frame()).await,
        };
        match first {
            Ok(Some(frame)) => ready.push_back(frame),
            Ok(None) => ended = true,
            Err(_) => {
                return Prefetched {
                    ready,
                    rest: Some(body),
                };
            }
        }
    }
    while !ended && !matches!(ready.back(), Some(Err(_))) && !body.is_end_stream() {
        match body.frame().now_or_never() {
            Some(Some(frame)) => ready.push_back(frame),
            Some(None) => ended = true,
            None => break,
        }
    }
    let rest = (!ended && !body.is_end_stream()).then_some(body);
    Prefetched { ready, rest }
}

/// How many times [`first_frames`] lets the other ready tasks run before it sets a timer.
const FIRST_FRAME_TURNS: u8 = 2;

/// The next frame of a body, polled again after each of the other ready tasks had a turn,
/// `turns` times at most; `None` when it has not come by then.
struct FrameWithinTurns<'a, B> {
    body: &'a mut B,
    turns: u8,
}

impl<B: hyper::body::Body + Unpin> Future for FrameWithinTurns<'_, B> {
    type Output = Option<Option<Result<hyper::body::Frame<B::Data>, B::Error>>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut *self.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if self.turns > 0 => {
                self.turns -= 1;
                // Woken now, polled again after the tasks already queued: the runtime puts
                // a task that wakes itself at the back of its queue. (`yield_now` would
                // wait for the I/O driver to be polled first, one syscall more.)
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Ready(None),
        }
    }
}

/// A body whose first frames were read already ([`first_frames`]).
pub struct Prefetched<B: hyper::body::Body> {
    ready: VecDeque<Result<hyper::body::Frame<B::Data>, B::Error>>,
    rest: Option<B>,
}

impl<B> hyper::body::Body for Prefetched<B>
where
    B: hyper::body::Body + Unpin,
    B::Data: Unpin,
    B::Error: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        if let Some(frame) = self.ready.pop_front() {
            return std::task::Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        use bytes::Buf as _;
        let held: u64 = self
            .ready
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.remaining() as u64))
            .sum();
        let rest = self.rest.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        );
        // Upper first: a lower bound above the upper one panics.
        let mut hint = hyper::body::SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint.set_lower(rest.lower() + held);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test]
    async fn ready_frames_are_read_ahead_and_the_rest_follows_in_order() {
        use bytes::Bytes;
        use http_body_util::BodyExt as _;
        use hyper::body::Frame;
        let json: &[u8] = b"{\"jsonrpc\":\"2.0\"}";
        let whole = first_frames(Body::from(json), Duration::from_secs(1)).await;
        let hint = hyper::body::Body::size_hint(&whole);
        assert_eq!(hint.exact(), Some(json.len() as u64));
        assert!(
            whole.rest.is_none(),
            "a body that is all there is read whole"
        );
        assert_eq!(whole.collect().await.unwrap().to_bytes(), json);

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tx.send(Ok(Frame::data(Bytes::from("a")))).await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from("b")))).await.unwrap();
        let stream = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        }));
        let body = first_frames(stream, Duration::from_secs(1)).await;
        assert_eq!(body.ready.len(), 2, "both frames that were there are taken");
        assert!(body.rest.is_some(), "the stream is still open");
        tx.send(Ok(Frame::data(Bytes::from("c")))).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");

        // Nothing within the wait: the body is left as it is, to stream.
        let (_tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let silent = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        }));
        let body = first_frames(silent, Duration::from_millis(1)).await;
        assert!(body.ready.is_empty() && body.rest.is_some());
    }

    /// The gateway's runtime: a task that wakes itself is polled again after the tasks
    /// already queued, so an MCP session's answer, queued by the request, comes first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_frame_from_a_task_already_queued_is_awaited_without_a_timer() {
        use bytes::Bytes;
        use hyper::body::Frame;
        tokio::spawn(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            let mut body =
                http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx)
                }));
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from("event"))))
                    .await
                    .unwrap();
                // Held open, as a session holds its stream: the frame alone must come.
                std::future::pending::<()>().await;
            });
            let got = FrameWithinTurns {
                body: &mut body,
                turns: FIRST_FRAME_TURNS,
            }
            .await;
            let frame = got.expect("within the turns").expect("a frame").unwrap();
            assert_eq!(frame.into_data().unwrap(), "event");

            // Nothing after the turns: given up, for the timer to take over.
            let got = FrameWithinTurns {
                body: &mut body,
                turns: FIRST_FRAME_TURNS,
            }
            .await;
            assert!(got.is_none());
        })
        .await
        .unwrap();
    }

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
