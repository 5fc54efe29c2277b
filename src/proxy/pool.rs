//! The network hop's connections to one backend: HTTP/1.1 over TCP, kept open between
//! requests, newest first.
//!
//! Leaner than a general-purpose client pool: the backend's address is known, so there is
//! no key to hash and no connector to resolve; a connection goes back to the pool when the
//! response body it carried has ended (its body hands it back), so no task is spawned per
//! request to wait for that. A request that a kept connection could not take (the backend
//! closed it as it was picked up) is sent once more on a new connection; a connection idle
//! for [`IDLE_TIMEOUT`] is closed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::hop::{SendError, strip_hop_by_hop};

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections kept per backend.
pub const MAX_IDLE: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The kept connections to one backend.
pub struct Pool {
    addr: SocketAddr,
    /// Idle connections and when each went idle, oldest first.
    idle: Mutex<VecDeque<(SendRequest<Body>, Instant)>>,
}

impl Pool {
    /// An empty pool for the backend at `addr`.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Send `req` (its target in origin form, its `Host` set, no hop-by-hop headers) with
    /// `timeout` on the response head only, and drop the response's hop-by-hop headers.
    pub async fn send(
        self: &Arc<Self>,
        timeout: Duration,
        req: Request,
    ) -> Result<Response, SendError> {
        match tokio::time::timeout(timeout, self.exchange(req)).await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err(SendError::Unreachable(e)),
            Err(_) => Err(SendError::TimedOut),
        }
    }

    async fn exchange(self: &Arc<Self>, req: Request) -> Result<Response, BoxError> {
        // A new connection is the rare path: boxed, so that the common one's future stays
        // small (it is moved on every request).
        let (res, sender) = match self.checkout().await {
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(res) => (res, sender),
                // Not sent: the backend closed the kept connection as it was taken.
                Err(mut e) => match e.take_message() {
                    Some(req) => Box::pin(self.on_new_connection(req)).await?,
                    None => return Err(e.into_error().into()),
                },
            },
            None => Box::pin(self.on_new_connection(req)).await?,
        };
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = if hyper::body::Body::is_end_stream(&body) {
            self.checkin(sender);
            Body::new(body)
        } else {
            Body::new(GivesBack {
                body,
                sender: Some(sender),
                pool: self.clone(),
            })
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Send `req` on a new connection.
    async fn on_new_connection(
        &self,
        req: Request,
    ) -> Result<(hyper::Response<Incoming>, SendRequest<Body>), BoxError> {
        let mut sender = self.connect().await?;
        let res = sender.send_request(req).await?;
        Ok((res, sender))
    }

    /// The newest idle connection that can take a request, if any.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let (mut sender, _) = self.idle.lock().ok()?.pop_back()?;
            if sender.is_closed() {
                continue;
            }
            // Back in the pool once its last response ended: ready as soon as its
            // connection's task has seen that end; closed if the backend said so.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keep `sender` for the next request, dropping connections idle for too long.
    fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((sender, now));
        }
    }

    /// A new connection, Nagle's delay off, driven by a task of its own until its sender
    /// is gone and its last exchange is over.
    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }
}

/// A response body that gives its connection back to the pool once it has ended. Dropped
/// before its end, it takes the connection with it (the rest of that response is still on
/// the wire).
struct GivesBack {
    body: Incoming,
    sender: Option<SendRequest<Body>>,
    pool: Arc<Pool>,
}

impl GivesBack {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.checkin(sender);
        }
    }
}

impl hyper::body::Body for GivesBack {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/small", get(|| async { "ok" }))
            .route("/big", get(|| async { "x".repeat(200_000) }))
            .route("/never", get(std::future::pending::<&'static str>));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        use tower::ServiceExt as _;
                        app.clone().oneshot(req.map(Body::new))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    fn get_req(addr: SocketAddr, path: &str) -> Request {
        Request::get(path)
            .header(axum::http::header::HOST, addr.to_string())
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_has_ended_and_not_before() {
        let (addr, conns) = backend().await;
        let pool = Pool::new(addr);
        let timeout = Duration::from_secs(5);
        for _ in 0..3 {
            let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
            let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            assert_eq!(body, "ok");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A body still being read holds its connection: a second request opens another.
        let big = pool.send(timeout, get_req(addr, "/big")).await.unwrap();
        let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
        let _ = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
        let body = axum::body::to_bytes(big.into_body(), 1_000_000)
            .await
            .unwrap();
        assert_eq!(body.len(), 200_000);
        // Both are back: the next two requests open nothing.
        for _ in 0..2 {
            let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
            let _ = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A body dropped half-read takes its connection with it.
        let big = pool.send(timeout, get_req(addr, "/big")).await.unwrap();
        drop(big);
        let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
        let _ = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(pool.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_whose_answer_is_overdue_times_out_and_is_not_kept_again() {
        let (addr, conns) = backend().await;
        let pool = Pool::new(addr);
        let timeout = Duration::from_millis(300);
        let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
        let _ = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let sent = tokio::time::timeout(
            Duration::from_secs(60),
            pool.send(timeout, get_req(addr, "/never")),
        )
        .await
        .expect("the timeout on the head ends the wait");
        assert!(matches!(sent, Err(SendError::TimedOut)), "{sent:?}");
        // That connection is not taken again: the next request opens another.
        let res = pool.send(timeout, get_req(addr, "/small")).await.unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(body, "ok");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_backend_that_is_down_is_unreachable() {
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let pool = Pool::new(addr);
        let sent = pool
            .send(Duration::from_secs(5), get_req(addr, "/small"))
            .await;
        assert!(matches!(sent, Err(SendError::Unreachable(_))));
    }
}
