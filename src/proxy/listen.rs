//! Serving the public listener (plain or TLS) with bounds on what one connection and one
//! source may hold:
//!
//! - `max_connections_per_source`: open connections per peer IP; past it a new connection
//!   is closed as soon as it is accepted (before any TLS handshake). 0: no cap.
//! - `header_read_timeout_seconds`: a connection must send its first request's headers this
//!   long after it opened, and (HTTP/1.1) each next request's headers this long after the
//!   previous response, or it is closed. A connection that sends nothing at all counts too.
//!   One timer per connection keeps this (hyper's own would set and clear one per request).
//! - `idle_timeout_seconds`: a connection with no request in progress for this long is
//!   closed gracefully (for HTTP/1.1 keep-alive the header timeout above comes first);
//!   HTTP/2 also pings an idle peer at this interval and drops one that does not answer.
//!
//! A request in progress (an SSE stream, say) is never cut by these: a connection is idle
//! only once every response body it was sending has ended.
//!
//! An HTTP/1.1 answer given before its request's body was read (a 401 decided on the
//! headers) first reads the rest of that body, up to [`DRAIN_LIMIT`] bytes within
//! [`DRAIN_WAIT`], so the connection stays usable for the client's next request; past
//! either bound it says `Connection: close`. Without this hyper would close the connection
//! silently whenever the body's bytes came after the headers, and a client reusing it would
//! lose its next request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long request headers may take.
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in progress.
    pub idle_timeout: Duration,
    /// Open connections per source address (0: no cap).
    pub max_per_source: usize,
}

impl Limits {
    /// The bounds `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds.max(1)),
            idle_timeout: Duration::from_secs(config.idle_timeout_seconds.max(1)),
            max_per_source: config.max_connections_per_source,
        }
    }
}

/// Open connections per source address.
#[derive(Debug, Default)]
pub struct Sources {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    /// A count capped at `cap` per address (0: no cap).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it already holds the cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.cap == 0 {
            return Some(Slot(None));
        }
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot(Some((self.clone(), ip))))
    }

    fn release(&self, ip: IpAddr) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if let Some(n) = open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// One admitted connection; freed when dropped.
#[derive(Debug)]
pub struct Slot(Option<(Arc<Sources>, IpAddr)>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((sources, ip)) = self.0.take() {
            sources.release(ip);
        }
    }
}

/// An accepted connection, ready for HTTP.
pub struct Accepted<I> {
    /// The stream (TCP, or TLS after its handshake).
    pub io: I,
    /// The peer.
    pub peer: SocketAddr,
    /// Its place in the per-source count.
    pub slot: Slot,
}

/// The next connection on `tcp` that its source may open, with its slot and Nagle's
/// algorithm off (small SSE events and JSON-RPC answers must not wait for it); `None` once
/// `stop` is cancelled. A failed accept backs off; a connection over its source's cap is
/// closed as soon as it is accepted.
pub async fn next_admitted(
    tcp: &TcpListener,
    sources: &Arc<Sources>,
    stop: &CancellationToken,
) -> Option<Accepted<TcpStream>> {
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = stop.cancelled() => return None,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, as axum does.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = sources.admit(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this source; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        return Some(Accepted {
            io: stream,
            peer,
            slot,
        });
    }
}

/// Accept plain TCP connections on `tcp`, admitting them by source.
pub fn accept_plain(
    tcp: TcpListener,
    sources: Arc<Sources>,
    stop: CancellationToken,
) -> mpsc::Receiver<Accepted<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(conn) = next_admitted(&tcp, &sources, &stop).await {
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// What one connection is doing: requests whose response has not ended, and when the last
/// one ended. Requests only count; nothing is woken per request: the connection's task
/// looks at this when its timer fires.
struct Activity {
    in_flight: AtomicUsize,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: AtomicBool,
    /// When the last response ended, in milliseconds since the connection opened.
    idle_since: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new(opened: Instant) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            opened,
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection may be closed for idleness (`None`: a request is in progress).
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::SeqCst));
        Some(self.opened + since + idle)
    }
}

/// One request in progress; its end (the response body dropped) may make the connection idle.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let since = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since.store(since, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's [`InFlight`] until it ends.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The most of an unread request body read through before an early answer.
pub const DRAIN_LIMIT: usize = 256 * 1024;
/// How long an early answer waits for the rest of its request's body.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Where a request body dropped before its end is handed back to the connection.
type Unread = Arc<Mutex<Option<Incoming>>>;

/// A request body that, dropped before its end (the service answered without reading it
/// all), hands itself back through `back`.
struct Returnable {
    inner: Option<Incoming>,
    back: Unread,
}

impl Drop for Returnable {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        if let Some(body) = self.inner.take().filter(|b| !b.is_end_stream())
            && let Ok(mut slot) = self.back.lock()
        {
            *slot = Some(body);
        }
    }
}

impl hyper::body::Body for Returnable {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner
            .as_ref()
            .map(hyper::body::Body::size_hint)
            .unwrap_or_default()
    }
}

/// Read `body` to its end within the bounds; whether it ended.
async fn drain(mut body: Incoming) -> bool {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > DRAIN_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_WAIT, read)
        .await
        .unwrap_or(false)
}

/// What the public listener answers each request with, given the address it came from.
/// Called directly, without a router or middleware between: the proxy does its own routing.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The answer to `req` from `peer`.
    fn handle(
        &self,
        req: Request<Body>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Serve `handler` on the connections `incoming` yields until `stop`; then every connection
/// finishes its requests in progress and closes, and this returns once all have.
pub async fn serve<I, H>(
    mut incoming: mpsc::Receiver<Accepted<I>>,
    handler: H,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1.1: each connection's own timer bounds the wait for the next
    // request's headers (see `serve_one`).
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    // Every connection task holds a sender; when all are gone, they have all ended.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let conn = tokio::select! {
            c = incoming.recv() => c,
            () = stop.cancelled() => None,
        };
        let Some(conn) = conn else { break };
        tokio::spawn(serve_one(
            conn,
            builder.clone(),
            handler.clone(),
            limits,
            stop.clone(),
            alive.clone(),
        ));
    }
    drop(alive);
    drop(incoming);
    let _ = all_closed.recv().await;
    Ok(())
}

async fn serve_one<I, H>(
    conn: Accepted<I>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: H,
    limits: Limits,
    stop: CancellationToken,
    _alive: mpsc::Sender<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let Accepted { io, peer, slot } = conn;
    let _slot = slot;
    let opened = Instant::now();
    let activity = Activity::new(opened);
    let seen_request = Arc::new(AtomicBool::new(false));
    let service = {
        let activity = activity.clone();
        let seen_request = seen_request.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = activity.begin();
            if !seen_request.swap(true, Ordering::Relaxed) && req.version() == Version::HTTP_2 {
                activity.http2.store(true, Ordering::Relaxed);
            }
            let handler = handler.clone();
            async move {
                use hyper::body::Body as _;
                // HTTP/1.1 bodies only: an HTTP/2 stream ends on its own.
                let unread: Option<Unread> = (req.version() <= Version::HTTP_11
                    && !req.body().is_end_stream())
                .then(Arc::default);
                // Such a client sends its body only once told to continue: none will come.
                let awaits_continue = req.headers().contains_key(header::EXPECT);
                let req = match &unread {
                    Some(back) => req.map(|inner| {
                        Body::new(Returnable {
                            inner: Some(inner),
                            back: back.clone(),
                        })
                    }),
                    None => req.map(Body::new),
                };
                let mut res = handler.handle(req, peer).await;
                let left = unread.and_then(|back| back.lock().ok()?.take());
                if let Some(left) = left
                    && (awaits_continue || !drain(left).await)
                {
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(res.map(|inner| TrackedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // One timer for the connection's life, moved only when it fires: first the deadline for
    // the first request's headers, then the deadline for the next request, checked against
    // what the requests recorded meanwhile. With no request in progress, an HTTP/1.1
    // connection has the header timeout (or the idle timeout, if shorter) from the end of
    // its last response to send the next request's headers; an HTTP/2 one, the idle timeout.
    let timer = tokio::time::sleep_until(opened + limits.header_read_timeout);
    tokio::pin!(timer);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // Shutting down, an HTTP/1.1 connection still needs its timer: a graceful
            // shutdown waits for the headers of a request begun, which may never end.
            () = timer.as_mut(), if !shutting_down || !activity.http2.load(Ordering::Relaxed) => {
                if !seen_request.load(Ordering::Relaxed) {
                    // Nothing usable arrived in time: no graceful goodbye owed.
                    tracing::debug!(%peer, "no request headers in time; connection closed");
                    return;
                }
                let now = Instant::now();
                let http2 = activity.http2.load(Ordering::Relaxed);
                let wait = if http2 {
                    limits.idle_timeout
                } else {
                    limits.idle_timeout.min(limits.header_read_timeout)
                };
                match activity.idle_deadline(wait) {
                    // HTTP/1.1: closed at once, like hyper's own header timeout would. A
                    // graceful shutdown would wait for the headers of a request begun.
                    Some(at) if at <= now && !http2 => {
                        tracing::debug!(%peer, "no next request in time; connection closed");
                        return;
                    }
                    Some(at) if at <= now => {
                        tracing::debug!(%peer, "idle connection closed");
                        conn.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                    Some(at) => timer.as_mut().reset(at),
                    // A response in progress: look again a period from now.
                    None => timer.as_mut().reset(now + wait),
                }
            }
            () = &mut stopped, if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_capped_per_address_and_freed_on_drop() {
        let s = Sources::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let one = s.admit(a);
        let two = s.admit(a);
        assert!(one.is_some() && two.is_some());
        assert!(s.admit(a).is_none(), "third from one address");
        assert!(s.admit(b).is_some(), "another address is not affected");
        drop(one);
        assert!(s.admit(a).is_some(), "a closed connection frees its slot");
        let unlimited = Sources::new(0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.admit(a)).collect();
        assert!(held.iter().all(Option::is_some));
    }
}
