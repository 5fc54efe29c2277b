//! The resource server (:3001): every MCP request (POST, GET for SSE, DELETE) must carry a
//! valid bearer token in the Authorization header; the JSON-RPC body decides
//! which scope it needs; failures get RFC 6750 challenges. The verified
//! identity travels to the MCP server in request extensions, never the token itself.

pub mod api_keys;
pub mod error;
pub mod metadata;
pub mod policy;
pub mod sessions;
pub mod state;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use tower::Service;

use error::{BearerError, BearerErrorCode};
use sessions::{Owner, SessionOwners};
pub use state::ResourceState;

/// The MCP session header (streamable HTTP).
const SESSION_HEADER: &str = "mcp-session-id";

/// What the bearer layer works with: the shared state and who owns which MCP session.
/// Shared behind one `Arc` (axum clones a layer's state for every request).
pub struct Gate {
    state: ResourceState,
    sessions: SessionOwners,
}

/// Largest JSON-RPC body accepted on the MCP endpoint.
pub const MAX_MCP_BODY: usize = 4 * 1024 * 1024;

/// The JSON-RPC methods of a POST body, for the MCP server behind the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpcMethods(pub Vec<String>);

/// The id of a single JSON-RPC request, so errors produced for it can answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpcId(pub Value);

/// Who is calling, as established from a verified token. Put in request extensions for the
/// MCP server; it never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub sub: String,
    /// The client.
    pub client_id: Option<String>,
    /// Scopes as granted.
    pub scopes: Vec<String>,
    /// Scopes including those the hierarchy implies.
    pub effective: BTreeSet<String>,
    /// The person's email and name, when the token names them (they signed in through an
    /// identity provider).
    pub email: Option<String>,
    /// Their name.
    pub name: Option<String>,
}

/// The resource server router: `/mcp` behind the bearer layer, plus its metadata. Every
/// answer is given with its request id in scope, so error bodies can name it.
pub fn router<S>(state: ResourceState, mcp: S) -> Router
where
    S: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    let gate = Gate {
        state: state.clone(),
        sessions: SessionOwners::default(),
    };
    let protected =
        Router::new()
            .nest_service(&state.route.path, mcp)
            .layer(middleware::from_fn_with_state(
                Arc::new(gate),
                require_bearer,
            ));
    metadata_router(state)
        .merge(protected)
        .layer(middleware::from_fn(
            crate::web::request_id::request_id_scope,
        ))
}

/// The protected resource metadata routes (RFC 9728 §3.1): the path-suffixed form for
/// this route, and the root form for the first (the one a request naming none gets).
pub fn metadata_router(state: ResourceState) -> Router {
    let suffixed = format!(
        "{}{}",
        crate::web::routes::RESOURCE_METADATA,
        state.route.path
    );
    let mut router = Router::new().route(&suffixed, get(metadata::protected_resource_get));
    if state.settings.routes.first() == Some(&state.route) {
        router = router.route(
            crate::web::routes::RESOURCE_METADATA,
            get(metadata::protected_resource_get),
        );
    }
    router.with_state(state)
}

fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, axum::Json(error::jsonrpc_error_body(code, message))).into_response()
}

/// The bearer token from the one Authorization header, if it uses the Bearer scheme
/// (case-insensitive). `Err` for a malformed header.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let Some((scheme, token)) = value.split_once(' ') else {
        // The scheme alone, with no token after it.
        return match value.trim().eq_ignore_ascii_case("bearer") {
            true => Err("malformed bearer token"),
            false => Ok(None),
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err("malformed bearer token");
    }
    Ok(Some(token))
}

/// Why one JSON-RPC message is refused: the JSON-RPC error code and a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Invalid(i64, &'static str);

/// The id to answer `message` with: its own when it is a valid id, else null.
fn reply_id(message: &Value) -> Value {
    match message.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

/// Check one JSON-RPC 2.0 message: a request or notification with a string `method` and
/// structured `params`, or a response; and for the methods that name what they act on
/// (`tools/call`, `prompts/get`: `params.name`; `resources/read`: `params.uri`), that
/// name as a string, since the scope policy decides on it.
fn check_message(m: &Value) -> Result<(), Invalid> {
    const INVALID: i64 = -32600;
    const PARAMS: i64 = -32602;
    let Value::Object(o) = m else {
        return Err(Invalid(
            INVALID,
            "invalid request: a JSON-RPC message is an object",
        ));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Invalid(INVALID, "invalid request: jsonrpc must be \"2.0\""));
    }
    if o.get("id")
        .is_some_and(|id| !matches!(id, Value::String(_) | Value::Number(_) | Value::Null))
    {
        return Err(Invalid(
            INVALID,
            "invalid request: id must be a string, a number or null",
        ));
    }
    let method = match o.get("method") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(Invalid(INVALID, "invalid request: method must be a string")),
        None => {
            let response =
                o.contains_key("id") && (o.contains_key("result") != o.contains_key("error"));
            return match response {
                true => Ok(()),
                false => Err(Invalid(
                    INVALID,
                    "invalid request: neither a request nor a response",
                )),
            };
        }
    };
    let params = o.get("params");
    if params.is_some_and(|p| !matches!(p, Value::Object(_) | Value::Array(_))) {
        return Err(Invalid(
            INVALID,
            "invalid request: params must be an object or an array",
        ));
    }
    let (field, problem) = match method {
        "tools/call" => (
            "name",
            "invalid params: tools/call needs params.name, a string",
        ),
        "prompts/get" => (
            "name",
            "invalid params: prompts/get needs params.name, a string",
        ),
        "resources/read" => (
            "uri",
            "invalid params: resources/read needs params.uri, a string",
        ),
        _ => return Ok(()),
    };
    match params.and_then(|p| p.get(field)) {
        Some(Value::String(_)) if params.is_some_and(Value::is_object) => Ok(()),
        _ => Err(Invalid(PARAMS, problem)),
    }
}

/// Check a POST body, one message or a batch (each element on its own). `Err` is the whole
/// answer: one error, or for a batch an array with an error per invalid element (and, for
/// the valid requests in it, a note that they were not executed).
fn check_body(body: &Value) -> Result<(), Value> {
    match body {
        Value::Array(items) if items.is_empty() => Err(error::jsonrpc_error_reply(
            Value::Null,
            -32600,
            "invalid request: an empty batch",
        )),
        Value::Array(items) => {
            let checked: Vec<_> = items.iter().map(check_message).collect();
            if checked.iter().all(Result::is_ok) {
                return Ok(());
            }
            let replies = items
                .iter()
                .zip(checked)
                .filter_map(|(m, c)| match c {
                    Err(Invalid(code, why)) => {
                        Some(error::jsonrpc_error_reply(reply_id(m), code, why))
                    }
                    Ok(()) if m.get("method").is_some() && m.get("id").is_some() => {
                        Some(error::jsonrpc_error_reply(
                            reply_id(m),
                            -32600,
                            "not executed: another message in this batch is invalid",
                        ))
                    }
                    Ok(()) => None,
                })
                .collect();
            Err(Value::Array(replies))
        }
        single => check_message(single)
            .map_err(|Invalid(code, why)| error::jsonrpc_error_reply(reply_id(single), code, why)),
    }
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
fn is_json_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// Check `Mcp-Method` / `Mcp-Name` headers against the body: authorizing on headers while
/// the server executes the body would be a confused deputy.
fn headers_match_body(headers: &HeaderMap, body: &Value) -> bool {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    let (method_h, name_h) = (header("mcp-method"), header("mcp-name"));
    if method_h.is_none() && name_h.is_none() {
        return true;
    }
    let Value::Object(_) = body else {
        return false;
    };
    let method = body.get("method").and_then(Value::as_str);
    if method_h.is_some_and(|m| Some(m) != method) {
        return false;
    }
    if let Some(name) = name_h {
        let field = match method {
            Some("resources/read") => "/params/uri",
            _ => "/params/name",
        };
        return body.pointer(field).and_then(Value::as_str) == Some(name);
    }
    true
}

enum Refusal {
    /// The token is not acceptable; the reason is safe to show, the kind is for metrics.
    Token(&'static str, String),
    /// We could not check it.
    Unavailable,
}

/// Who a bearer token stands for: an API key (when enabled; keys are not JWTs), or a JWT
/// that verifies and was not revoked.
async fn identify(state: &ResourceState, token: &str, now: u64) -> Result<Identity, Refusal> {
    let (sub, client_id, scopes, person) = match &state.api_keys {
        Some(keys) if !token.contains('.') => {
            let key = keys
                .find(token, now)
                .ok_or_else(|| Refusal::Token("unknown_api_key", "unknown API key".into()))?;
            (key.name.clone(), None, key.scopes.clone(), (None, None))
        }
        // An external issuer's opaque token: ask the issuer (RFC 7662).
        _ if state.introspector.is_some() && token.split('.').count() != 3 => {
            let introspector = state.introspector.as_ref().ok_or(Refusal::Unavailable)?;
            let claims = introspector
                .introspect(token, now)
                .await
                .map_err(|why| Refusal::Token("inactive", why.to_string()))?;
            let scopes = claims.scopes().map(str::to_string).collect();
            (claims.sub, claims.client_id, scopes, (None, None))
        }
        _ => {
            let claims = state
                .verifier
                .verify(token, now)
                .await
                .map_err(|e| Refusal::Token(e.kind(), e.to_string()))?;
            if let Some(jti) = &claims.jti {
                // From memory: the store is read only when the view has gone stale.
                match state.revocations.check_or_catch_up(&*state.store, jti, now) {
                    Ok(false) => {}
                    Ok(true) => {
                        return Err(Refusal::Token(
                            "revoked",
                            "the token has been revoked".into(),
                        ));
                    }
                    Err(stale) => {
                        tracing::error!(error = %stale, "revocation check failed");
                        return Err(Refusal::Unavailable);
                    }
                }
            }
            let scopes = claims.scopes().map(str::to_string).collect();
            (
                claims.sub,
                claims.client_id,
                scopes,
                (claims.email, claims.name),
            )
        }
    };
    let effective = state.policy.effective(scopes.iter().map(String::as_str));
    Ok(Identity {
        sub,
        client_id,
        scopes,
        effective,
        email: person.0,
        name: person.1,
    })
}

/// The server's own part of a session id the client sent: all of it on a lone gateway;
/// behind a balancer, what follows this replica's `<replica_id>.` (another replica's session
/// is not found here).
fn own_session<'a>(replica: Option<&str>, sid: &'a str) -> Option<&'a str> {
    match replica {
        None => Some(sid),
        Some(r) => sid.strip_prefix(r)?.strip_prefix('.'),
    }
}

/// The answer for a session this identity may not use: exactly that for an unknown one.
fn session_not_found(id: Value) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(error::jsonrpc_error_reply(id, -32001, "Session not found")),
    )
        .into_response()
}

/// The bearer layer in front of the MCP service.
pub async fn require_bearer(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let state = &gate.state;
    let s = &state.settings;
    let refuse = |code: Option<BearerErrorCode>, description: Option<&str>, scope: String| {
        BearerError {
            code,
            description: description.map(str::to_string),
            scope,
            resource_metadata: state.route.metadata_url.clone(),
        }
        .into_response()
    };
    let default_scope = s.config.scopes.default_method.clone();

    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| {
            crate::web::origin::origin_allowed(
                o,
                &state.settings.public_origin,
                &state.settings.config.allowed_origins,
            )
        });
        if !ok {
            return jsonrpc_error(StatusCode::FORBIDDEN, -32600, "origin not allowed");
        }
    }
    let query_token = req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token")
    });
    if query_token {
        return refuse(
            Some(BearerErrorCode::InvalidRequest),
            Some("tokens are accepted only in the Authorization header"),
            default_scope,
        );
    }
    let token = match bearer_token(req.headers()) {
        Ok(Some(t)) => t,
        Ok(None) => return refuse(None, None, default_scope),
        Err(why) => {
            return refuse(
                Some(BearerErrorCode::InvalidRequest),
                Some(why),
                default_scope,
            );
        }
    };
    let now = state.clock.now();
    let started = std::time::Instant::now();
    let checked = identify(state, token, now).await;
    let outcome = match &checked {
        Ok(_) => "ok",
        Err(Refusal::Token(kind, _)) => kind,
        Err(Refusal::Unavailable) => "unavailable",
    };
    state
        .metrics
        .validated(outcome, started.elapsed().as_secs_f64());
    let identity = match checked {
        Ok(identity) => identity,
        Err(Refusal::Token(_, why)) => {
            tracing::debug!(reason = %why, "bearer token refused");
            return refuse(
                Some(BearerErrorCode::InvalidToken),
                Some(&why),
                default_scope,
            );
        }
        Err(Refusal::Unavailable) => {
            return jsonrpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                "temporarily unavailable",
            );
        }
    };

    let is_post = req.method() == Method::POST;
    let mut reply_to = Value::Null;
    let mut req = if is_post {
        let (parts, body) = req.into_parts();
        if !is_json_content(&parts.headers) {
            return jsonrpc_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                -32600,
                "unsupported media type: send application/json",
            );
        }
        let bytes: Bytes = match axum::body::to_bytes(body, MAX_MCP_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return jsonrpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    -32600,
                    "request body too large",
                );
            }
        };
        let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                "parse error: body is not JSON",
            );
        };
        if let Err(answer) = check_body(&message) {
            return (StatusCode::BAD_REQUEST, axum::Json(answer)).into_response();
        }
        reply_to = reply_id(&message);
        if !headers_match_body(&parts.headers, &message) {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(error::jsonrpc_error_reply(
                    reply_to,
                    -32600,
                    "Mcp-Method or Mcp-Name header does not match the request body",
                )),
            )
                .into_response();
        }
        if let Some(missing) = state.policy.missing(&message, &identity.effective) {
            state.metrics.insufficient_scope();
            return refuse(
                Some(BearerErrorCode::InsufficientScope),
                Some("the token lacks a scope this request needs"),
                missing.join(" "),
            );
        }
        let methods = match &message {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        }
        .into_iter()
        .filter_map(|m| m.get("method").and_then(Value::as_str).map(str::to_string))
        .collect();
        let id = message.get("id").cloned();
        let mut req = Request::from_parts(parts, Body::from(bytes));
        req.extensions_mut().insert(JsonRpcMethods(methods));
        if let Some(id) = id {
            req.extensions_mut().insert(JsonRpcId(id));
        }
        req
    } else {
        req
    };

    // A session belongs to the identity that opened it: to anyone else, and for a session
    // we never saw open, it does not exist.
    let owner = Owner {
        sub: identity.sub.clone(),
        client_id: identity.client_id.clone(),
    };
    // Behind a balancer the ids we hand out name this replica (`<replica_id>.<id>`); the
    // server behind us sees only its own part.
    let replica = state.settings.config.replica_id.as_deref();
    let session = match req.headers().get(SESSION_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|sid| own_session(replica, sid)) {
            Some(sid) if gate.sessions.check(sid, &owner, now) => Some(sid.to_string()),
            _ => return session_not_found(reply_to),
        },
    };
    if let (Some(_), Some(sid)) = (replica, &session)
        && let Ok(inner) = HeaderValue::from_str(sid)
    {
        req.headers_mut().insert(SESSION_HEADER, inner);
    }
    let deleting = req.method() == Method::DELETE;

    // No token passthrough: what follows sees the identity, not the credential.
    req.headers_mut().remove(header::AUTHORIZATION);
    req.extensions_mut().insert(identity);
    let mut res = next.run(req).await;

    match &session {
        // A new session, opened by this request: it is this identity's.
        None => {
            if res.status().is_success()
                && let Some(sid) = res
                    .headers()
                    .get(SESSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                && !gate.sessions.bind(sid, &owner, now)
            {
                tracing::warn!("the MCP server reused a session id bound to another identity");
                return session_not_found(reply_to);
            }
        }
        Some(sid) => {
            if deleting && (res.status().is_success() || res.status() == StatusCode::NOT_FOUND) {
                gate.sessions.forget(sid);
            }
        }
    }
    if let Some(replica) = replica
        && let Some(sid) = res
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        && let Ok(named) = HeaderValue::from_str(&format!("{replica}.{sid}"))
    {
        res.headers_mut().insert(SESSION_HEADER, named);
    }
    // rmcp answers 415 for a body it cannot read as an MCP message; the Content-Type was
    // checked above, so this is the client's malformed request, and a JSON-RPC error.
    if is_post && res.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        res = (
            StatusCode::BAD_REQUEST,
            axum::Json(error::jsonrpc_error_reply(
                reply_to,
                -32600,
                "invalid request: not a valid MCP message",
            )),
        )
            .into_response();
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_replica_serves_only_the_sessions_it_named() {
        assert_eq!(own_session(None, "abc"), Some("abc"));
        assert_eq!(own_session(Some("r1"), "r1.abc"), Some("abc"));
        assert_eq!(own_session(Some("r1"), "r2.abc"), None);
        assert_eq!(own_session(Some("r1"), "r1abc"), None);
        assert_eq!(own_session(Some("r1"), "abc"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR abc"),
        );
        assert_eq!(bearer_token(&h), Ok(Some("abc")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), Ok(None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert!(bearer_token(&h).is_err());
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(bearer_token(&h).is_err());
    }

    #[test]
    fn jsonrpc_shapes() {
        for ok in [
            json!({"jsonrpc":"2.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            json!({"jsonrpc":"2.0","id":"a","result":{}}),
            json!([{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}]),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}),
            json!({"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}),
            json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x://y"}}),
        ] {
            assert_eq!(check_body(&ok), Ok(()), "{ok}");
        }
        for (bad, code, id) in [
            (json!({"jsonrpc":"2.0","id":1,"method":5}), -32600, json!(1)),
            (json!({"jsonrpc":"2.0","id":1}), -32600, json!(1)),
            (
                json!({"jsonrpc":"2.0","id":1,"method":"x","params":"s"}),
                -32600,
                json!(1),
            ),
            (
                json!({"jsonrpc":"2.0","id":{},"method":"x"}),
                -32600,
                Value::Null,
            ),
            (
                json!({"jsonrpc":"2.0","id":[1],"method":"x"}),
                -32600,
                Value::Null,
            ),
            (
                json!({"jsonrpc":"1.0","id":"a","method":"x"}),
                -32600,
                json!("a"),
            ),
            (json!({"id":2,"method":"x"}), -32600, json!(2)),
            (
                json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}}),
                -32600,
                json!(1),
            ),
            (json!([]), -32600, Value::Null),
            (json!("x"), -32600, Value::Null),
            (json!(null), -32600, Value::Null),
            (
                json!({"jsonrpc":"2.0","id":3,"method":"tools/call"}),
                -32602,
                json!(3),
            ),
            (
                json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":5}}),
                -32602,
                json!(3),
            ),
            (
                json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":["echo"]}),
                -32602,
                json!(3),
            ),
            (
                json!({"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{}}),
                -32602,
                json!(3),
            ),
            (
                json!({"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"name":"x"}}),
                -32602,
                json!(3),
            ),
            (
                json!({"jsonrpc":"2.0","method":"tools/call","params":{"name":null}}),
                -32602,
                Value::Null,
            ),
        ] {
            let answer = check_body(&bad).expect_err("refused");
            assert_eq!(answer["error"]["code"], code, "{bad}");
            assert_eq!(answer["id"], id, "{bad}");
        }
    }

    #[test]
    fn batches_are_checked_per_element() {
        let batch = json!([
            {"jsonrpc":"2.0","id":1,"method":"ping"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":7}},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            5,
            {"jsonrpc":"2.0","id":"r","method":"resources/read","params":{}}
        ]);
        let answer = check_body(&batch).expect_err("refused");
        let replies = answer.as_array().expect("an array");
        let got: Vec<(Value, Value)> = replies
            .iter()
            .map(|r| (r["id"].clone(), r["error"]["code"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (json!(1), json!(-32600)),
                (json!(2), json!(-32602)),
                (Value::Null, json!(-32600)),
                (json!("r"), json!(-32602)),
            ]
        );
    }

    #[test]
    fn mcp_headers_must_match_body() {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}});
        let mut h = HeaderMap::new();
        assert!(headers_match_body(&h, &body));
        h.insert("mcp-method", HeaderValue::from_static("tools/call"));
        h.insert("mcp-name", HeaderValue::from_static("echo"));
        assert!(headers_match_body(&h, &body));
        h.insert("mcp-name", HeaderValue::from_static("add_note"));
        assert!(!headers_match_body(&h, &body));
        h.remove("mcp-name");
        h.insert("mcp-method", HeaderValue::from_static("tools/list"));
        assert!(!headers_match_body(&h, &body));
        assert!(!headers_match_body(&h, &json!([body])));
    }
}
