//! MCP sessions without per-session worker channels (issue 17).
//!
//! rmcp's `LocalSessionManager` runs a worker task per session behind four tokio channels
//! that carry whole JSON-RPC messages (about 376 bytes each). A tokio channel allocates its
//! slots 32 at a time whatever its capacity, so those four cost about 48 KB per session
//! before the first call and about 96 KB once 32 messages have passed (BENCHMARKS.md,
//! "Memory per MCP session"). [`Sessions`] keeps a session to what routing needs: one
//! bounded channel of boxed client messages into the session's service, and a small table
//! that sends each server message straight to the HTTP stream it belongs to:
//!
//! - a response or error goes to the stream of the request it answers, which then ends;
//! - a progress notification goes to the stream of the request that named its token, a
//!   cancellation to the stream of the request it cancels;
//! - a server request made while handling a client request rides that request's stream
//!   (SEP-2260), anything else the standalone `GET` stream, when one is open.
//!
//! Events carry no ids, so clients do not resume streams by `Last-Event-ID`: every answer is
//! on the stream of the request that asked, and a `GET` that names one gets a fresh
//! standalone stream. A session ends on `DELETE`, when its service stops, or after
//! [`Sessions::idle`] without a request while nothing is in flight and no standalone stream
//! is open (checked whenever a session is created, so an idle gateway runs no timer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rmcp::RoleServer;
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, GetExtensions as _, GetMeta as _, ProgressToken,
    RequestId, ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::OriginatingRequestId;
use rmcp::transport::Transport;
use rmcp::transport::common::server_side_http::session_id;
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use tokio::sync::{mpsc, oneshot};

/// Messages a session's stream or inbox holds before the sender waits (rmcp's default).
const CAPACITY: usize = 16;

/// Why a session could not take a message.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session, or it ended.
    #[error("session not found")]
    NotFound,
    /// The session's service stopped before it answered.
    #[error("the session ended before it answered")]
    Ended,
}

/// The session manager of the gateway's MCP services.
pub struct Sessions {
    sessions: RwLock<HashMap<SessionId, Handle>>,
    /// How long a session with nothing in flight lives without a request.
    idle: Duration,
    /// The clock sessions are aged by: seconds since `epoch`.
    epoch: Instant,
    /// When the last sweep for idle sessions ran, in seconds since `epoch`.
    swept: AtomicU64,
}

/// What the manager keeps of a session: its inbox and its routing table.
#[derive(Clone)]
struct Handle {
    inbox: mpsc::Sender<Box<ClientJsonRpcMessage>>,
    routes: Arc<Routes>,
}

/// Where a session's server messages go.
struct Routes {
    table: Mutex<Table>,
    /// When the session last saw a request, in seconds since the manager's epoch.
    active: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// Client requests in flight, by JSON-RPC id.
    requests: HashMap<RequestId, Outlet>,
    /// Progress tokens of requests in flight, to the request that named them.
    progress: HashMap<ProgressToken, RequestId>,
    /// The standalone `GET` stream.
    standalone: Option<mpsc::Sender<ServerSseMessage>>,
    /// Further `GET` streams while the first is open: kept open (rmcp sends their
    /// keep-alives) and sent nothing, so competing clients do not reconnect in a loop.
    shadows: Vec<mpsc::Sender<ServerSseMessage>>,
}

/// Where the answer to one client request goes.
enum Outlet {
    /// The `initialize` request, answered as one message.
    Initialize(oneshot::Sender<ServerJsonRpcMessage>),
    /// The request's SSE stream, with the progress token it named.
    Stream {
        tx: mpsc::Sender<ServerSseMessage>,
        progress: Option<ProgressToken>,
    },
}

/// One server message on its way, decided under the table's lock and sent after it.
enum Delivery {
    Once(oneshot::Sender<ServerJsonRpcMessage>, ServerJsonRpcMessage),
    Stream(mpsc::Sender<ServerSseMessage>, ServerJsonRpcMessage),
    Nowhere,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl Sessions {
    /// A manager whose sessions end after `idle` without a request (rmcp's default is five
    /// minutes).
    pub fn new(idle: Duration) -> Self {
        Self {
            sessions: RwLock::default(),
            idle,
            epoch: Instant::now(),
            swept: AtomicU64::new(0),
        }
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn handle(&self, id: &SessionId) -> Result<Handle, SessionError> {
        let handle = self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or(SessionError::NotFound)?;
        handle.routes.active.store(self.now(), Ordering::Relaxed);
        Ok(handle)
    }

    /// End the sessions that have been idle for longer than `idle`, at most once per
    /// quarter of it. Dropping a session's handle closes its inbox, which stops its service.
    fn sweep(&self) {
        self.sweep_at(self.now());
    }

    fn sweep_at(&self, now: u64) {
        let every = (self.idle.as_secs() / 4).max(1);
        let last = self.swept.load(Ordering::Relaxed);
        if now < last + every
            || self
                .swept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let idle = self.idle.as_secs();
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, h| {
                now.saturating_sub(h.routes.active.load(Ordering::Relaxed)) < idle
                    || h.routes.busy()
            });
    }
}

impl Handle {
    async fn push(&self, message: ClientJsonRpcMessage) -> Result<(), SessionError> {
        self.inbox
            .send(Box::new(message))
            .await
            .map_err(|_| SessionError::Ended)
    }
}

impl Routes {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the session has a request in flight or a standalone stream open.
    fn busy(&self) -> bool {
        let t = self.table();
        !t.requests.is_empty() || t.standalone.as_ref().is_some_and(|s| !s.is_closed())
    }

    fn forget(&self, id: &RequestId) {
        let mut t = self.table();
        if let Some(Outlet::Stream {
            progress: Some(token),
            ..
        }) = t.requests.remove(id)
        {
            t.progress.remove(&token);
        }
    }

    /// Where `message` goes.
    fn route(&self, message: ServerJsonRpcMessage) -> Delivery {
        let mut t = self.table();
        let answers = match &message {
            ServerJsonRpcMessage::Response(r) => Some(r.id.clone()),
            ServerJsonRpcMessage::Error(e) => e.id.clone(),
            _ => None,
        };
        if let Some(id) = answers {
            return match t.requests.remove(&id) {
                Some(Outlet::Initialize(tx)) => Delivery::Once(tx, message),
                Some(Outlet::Stream { tx, progress }) => {
                    if let Some(token) = progress {
                        t.progress.remove(&token);
                    }
                    Delivery::Stream(tx, message)
                }
                None => t.standalone(message),
            };
        }
        let during = match &message {
            ServerJsonRpcMessage::Request(r) => r
                .request
                .extensions()
                .get::<OriginatingRequestId>()
                .map(|o| o.0.clone()),
            ServerJsonRpcMessage::Notification(n) => match &n.notification {
                ServerNotification::ProgressNotification(p) => {
                    t.progress.get(&p.params.progress_token).cloned()
                }
                ServerNotification::CancelledNotification(c) => c.params.request_id.clone(),
                _ => None,
            },
            _ => None,
        };
        match during.and_then(|id| t.requests.get(&id)) {
            Some(Outlet::Stream { tx, .. }) => Delivery::Stream(tx.clone(), message),
            _ => t.standalone(message),
        }
    }
}

impl Table {
    fn standalone(&self, message: ServerJsonRpcMessage) -> Delivery {
        match &self.standalone {
            Some(tx) if !tx.is_closed() => Delivery::Stream(tx.clone(), message),
            _ => Delivery::Nowhere,
        }
    }
}

impl Delivery {
    async fn deliver(self) {
        // A receiver that is gone is a client that went away: nothing to tell the service.
        match self {
            Delivery::Once(tx, message) => {
                let _ = tx.send(message);
            }
            Delivery::Stream(tx, message) => {
                let _ = tx.send(ServerSseMessage::from_message(message)).await;
            }
            Delivery::Nowhere => {}
        }
    }
}

/// A receiver as the stream of SSE events rmcp writes out.
fn events(
    mut rx: mpsc::Receiver<ServerSseMessage>,
) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The transport a session's service runs over.
pub struct SessionTransport {
    inbox: mpsc::Receiver<Box<ClientJsonRpcMessage>>,
    routes: Arc<Routes>,
}

impl Transport<RoleServer> for SessionTransport {
    type Error = SessionError;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let delivery = self.routes.route(item);
        async move {
            delivery.deliver().await;
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<ClientJsonRpcMessage> {
        self.inbox.recv().await.map(|m| *m)
    }

    async fn close(&mut self) -> Result<(), SessionError> {
        self.inbox.close();
        Ok(())
    }
}

impl SessionManager for Sessions {
    type Error = SessionError;
    type Transport = SessionTransport;

    async fn create_session(&self) -> Result<(SessionId, SessionTransport), SessionError> {
        self.sweep();
        let id = session_id();
        let (inbox_tx, inbox) = mpsc::channel(CAPACITY);
        let routes = Arc::new(Routes {
            table: Mutex::default(),
            active: AtomicU64::new(self.now()),
        });
        let handle = Handle {
            inbox: inbox_tx,
            routes: routes.clone(),
        };
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), handle);
        Ok((id, SessionTransport { inbox, routes }))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, SessionError> {
        let handle = self.handle(id)?;
        let ClientJsonRpcMessage::Request(request) = &message else {
            return Err(SessionError::Ended);
        };
        let (tx, rx) = oneshot::channel();
        let request_id = request.id.clone();
        handle
            .routes
            .table()
            .requests
            .insert(request_id.clone(), Outlet::Initialize(tx));
        if let Err(e) = handle.push(message).await {
            handle.routes.forget(&request_id);
            return Err(e);
        }
        rx.await.map_err(|_| SessionError::Ended)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, SessionError> {
        Ok(self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id))
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), SessionError> {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        let handle = self.handle(id)?;
        let (tx, rx) = mpsc::channel(CAPACITY);
        let request_id = match &message {
            ClientJsonRpcMessage::Request(request) => {
                let request_id = request.id.clone();
                let progress = request.request.get_meta().get_progress_token();
                let mut t = handle.routes.table();
                if let Some(token) = &progress {
                    t.progress.insert(token.clone(), request_id.clone());
                }
                t.requests
                    .insert(request_id.clone(), Outlet::Stream { tx, progress });
                Some(request_id)
            }
            // rmcp sends only requests here; anything else gets an empty stream.
            _ => None,
        };
        if let Err(e) = handle.push(message).await {
            if let Some(request_id) = request_id {
                handle.routes.forget(&request_id);
            }
            return Err(e);
        }
        Ok(events(rx))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), SessionError> {
        let handle = self.handle(id)?;
        // A cancelled request's stream ends now: its answer will not come.
        if let ClientJsonRpcMessage::Notification(n) = &message
            && let ClientNotification::CancelledNotification(c) = &n.notification
            && let Some(request_id) = &c.params.request_id
        {
            handle.routes.forget(request_id);
        }
        handle.push(message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        let handle = self.handle(id)?;
        let (tx, rx) = mpsc::channel(CAPACITY);
        let mut t = handle.routes.table();
        t.shadows.retain(|s| !s.is_closed());
        match &t.standalone {
            Some(open) if !open.is_closed() => t.shadows.push(tx),
            _ => t.standalone = Some(tx),
        }
        Ok(events(rx))
    }

    /// Events carry no ids, so there is nothing to replay: a fresh standalone stream.
    async fn resume(
        &self,
        id: &SessionId,
        _last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, SessionError> {
        self.create_standalone_stream(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use rmcp::model::{
        CallToolResult, ClientRequest, JsonRpcNotification, JsonRpcRequest, JsonRpcResponse,
        JsonRpcVersion2_0, NumberOrString, PingRequest, ProgressNotificationParam, ServerResult,
    };

    fn ping(id: i64) -> ClientJsonRpcMessage {
        ClientJsonRpcMessage::Request(JsonRpcRequest::new(
            RequestId::Number(id),
            ClientRequest::PingRequest(PingRequest::default()),
        ))
    }

    fn answer(id: i64) -> ServerJsonRpcMessage {
        ServerJsonRpcMessage::Response(JsonRpcResponse {
            jsonrpc: JsonRpcVersion2_0,
            id: RequestId::Number(id),
            result: ServerResult::CallToolResult(CallToolResult::success(vec![])),
        })
    }

    fn answered(event: &ServerSseMessage) -> Option<RequestId> {
        match event.message.as_deref() {
            Some(ServerJsonRpcMessage::Response(r)) => Some(r.id.clone()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_answer_goes_to_the_stream_of_its_request_and_ends_it() {
        let sessions = Sessions::default();
        let (id, mut transport) = sessions.create_session().await.unwrap();
        let mut one = Box::pin(sessions.create_stream(&id, ping(1)).await.unwrap());
        let mut two = Box::pin(sessions.create_stream(&id, ping(2)).await.unwrap());
        assert!(transport.receive().await.is_some());
        assert!(transport.receive().await.is_some());
        // Answered out of order: each answer finds its own stream.
        transport.send(answer(2)).await.unwrap();
        transport.send(answer(1)).await.unwrap();
        assert_eq!(
            answered(&two.next().await.unwrap()),
            Some(RequestId::Number(2))
        );
        assert!(
            two.next().await.is_none(),
            "the stream ends with its answer"
        );
        assert_eq!(
            answered(&one.next().await.unwrap()),
            Some(RequestId::Number(1))
        );
        assert!(one.next().await.is_none());
    }

    #[tokio::test]
    async fn progress_rides_the_stream_of_the_request_that_named_its_token() {
        let sessions = Sessions::default();
        let (id, mut transport) = sessions.create_session().await.unwrap();
        let mut request = JsonRpcRequest::new(
            RequestId::Number(7),
            ClientRequest::PingRequest(PingRequest::default()),
        );
        let token = ProgressToken(NumberOrString::String("t".into()));
        request
            .request
            .get_meta_mut()
            .set_progress_token(token.clone());
        let mut stream = Box::pin(
            sessions
                .create_stream(&id, ClientJsonRpcMessage::Request(request))
                .await
                .unwrap(),
        );
        let mut standalone = Box::pin(sessions.create_standalone_stream(&id).await.unwrap());
        transport.receive().await.unwrap();
        let progress = ServerJsonRpcMessage::Notification(JsonRpcNotification {
            jsonrpc: JsonRpcVersion2_0,
            notification: ServerNotification::ProgressNotification(rmcp::model::Notification::new(
                ProgressNotificationParam::new(token, 0.5),
            )),
        });
        transport.send(progress).await.unwrap();
        let list_changed = ServerJsonRpcMessage::Notification(JsonRpcNotification {
            jsonrpc: JsonRpcVersion2_0,
            notification: ServerNotification::ToolListChangedNotification(Default::default()),
        });
        transport.send(list_changed).await.unwrap();
        transport.send(answer(7)).await.unwrap();
        let first = stream.next().await.unwrap();
        assert!(matches!(
            first.message.as_deref(),
            Some(ServerJsonRpcMessage::Notification(_))
        ));
        assert_eq!(
            answered(&stream.next().await.unwrap()),
            Some(RequestId::Number(7))
        );
        assert!(stream.next().await.is_none());
        // What belongs to no request goes to the standalone stream.
        let other = standalone.next().await.unwrap();
        assert!(matches!(
            other.message.as_deref(),
            Some(ServerJsonRpcMessage::Notification(n))
                if matches!(n.notification, ServerNotification::ToolListChangedNotification(_))
        ));
    }

    #[tokio::test]
    async fn closing_a_session_stops_its_service_and_forgets_it() {
        let sessions = Sessions::default();
        let (id, mut transport) = sessions.create_session().await.unwrap();
        assert!(sessions.has_session(&id).await.unwrap());
        sessions.close_session(&id).await.unwrap();
        assert!(!sessions.has_session(&id).await.unwrap());
        assert!(
            transport.receive().await.is_none(),
            "the service sees its inbox close"
        );
        assert!(matches!(
            sessions.create_stream(&id, ping(1)).await.err(),
            Some(SessionError::NotFound)
        ));
    }

    #[tokio::test]
    async fn idle_sessions_end_unless_a_request_is_in_flight() {
        let sessions = Sessions::new(Duration::from_secs(300));
        let (idle, _t1) = sessions.create_session().await.unwrap();
        let (busy, mut t2) = sessions.create_session().await.unwrap();
        let _stream = sessions.create_stream(&busy, ping(1)).await.unwrap();
        t2.receive().await.unwrap();
        sessions.sweep_at(299);
        assert!(
            sessions.has_session(&idle).await.unwrap(),
            "not idle long enough"
        );
        sessions.sweep_at(1_000);
        assert!(!sessions.has_session(&idle).await.unwrap());
        assert!(sessions.has_session(&busy).await.unwrap());
        assert_eq!(sessions.len(), 1);
    }
}
