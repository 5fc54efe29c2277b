//! Who the user is: the configured users (`[[users]]`, argon2 password hashes), a login
//! page before consent when there is more than one user or a password, browser sessions,
//! and the page where a user sees and revokes the consents the gateway remembers.
//!
//! With no users configured the one local user (`user`, default `local-user`) approves
//! consent without logging in, which suits a gateway on loopback.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::authorize::{Arrival, proceed};
use super::params::Params;
use crate::admin::events::{RequestMeta, audit};
use crate::secret::{ct_eq, random_token, sha256_b64};
use crate::state::AppState;
use crate::store::{Client, PendingAuthorization};
use crate::web::client_ip::client_ip;
use crate::web::pages::{PageError, cross_site_refusal, page_headers};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "mog_session";
/// Where the login form posts.
pub const LOGIN_PATH: &str = "/login";
/// The consents page and its revoke form.
pub const CONSENTS_PATH: &str = "/consents";
/// Where the revoke form posts.
pub const CONSENTS_REVOKE_PATH: &str = "/consents/revoke";

/// Browser sessions: hash of the cookie value -> (user, expiry). In memory: a restart
/// asks users to sign in again, nothing else.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, (String, u64)>>,
}

impl Sessions {
    /// Start a session for `sub`; returns the cookie value.
    pub fn create(&self, sub: &str, now: u64, ttl: u64) -> Option<String> {
        let token = random_token(32)?;
        let mut map = self.inner.lock().ok()?;
        map.retain(|_, (_, exp)| *exp > now);
        map.insert(sha256_b64(&token), (sub.to_string(), now + ttl));
        Some(token)
    }

    /// End a session (signing out).
    pub fn end(&self, token: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&sha256_b64(token));
        }
    }

    /// The user of a live session.
    pub fn user(&self, token: &str, now: u64) -> Option<String> {
        let map = self.inner.lock().ok()?;
        map.get(&sha256_b64(token))
            .filter(|(_, exp)| *exp > now)
            .map(|(sub, _)| sub.clone())
    }
}

/// Hash a password for the config file (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "random source failed".to_string())?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches an argon2 `hash` (false for anything unparsable).
pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Whether users must sign in: more than one user, or any password.
pub fn login_required(state: &AppState) -> bool {
    let users = &state.settings.config.users;
    users.len() > 1 || users.iter().any(|u| u.password_hash.is_some())
}

/// The value of the cookie `name`, if the request carries it.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The signed-in user, or the only user when no login is needed.
pub fn current_user(state: &AppState, headers: &HeaderMap, now: u64) -> Option<String> {
    if !login_required(state) {
        let config = &state.settings.config;
        return Some(match config.users.first() {
            Some(u) => u.name.clone(),
            None => config.user.clone(),
        });
    }
    session_cookie(headers).and_then(|token| state.sessions.user(token, now))
}

/// Scopes a user may grant; `None` means every offered scope.
pub fn user_scopes(state: &AppState, sub: &str) -> Option<Vec<String>> {
    state
        .settings
        .config
        .users
        .iter()
        .find(|u| u.name == sub)
        .and_then(|u| u.scopes.clone())
}

/// The login page for a pending request.
pub fn login_page(
    pending: &PendingAuthorization,
    client: &Client,
    username: &str,
    error: Option<&str>,
) -> Response {
    let client_name = client
        .client_name
        .clone()
        .unwrap_or_else(|| format!("Client {}", client.client_id));
    let html = crate::web::pages::render(
        "login.html",
        context! {
            client_name,
            error,
            username,
            action => LOGIN_PATH,
            request_id => &pending.id,
            csrf_token => &pending.csrf_token,
        },
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    match html {
        Ok(html) => (status, page_headers(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "login template failed");
            PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "try again",
            )
            .into_response()
        }
    }
}

/// The `Set-Cookie` value that starts a session.
pub(crate) fn cookie(state: &AppState, token: &str) -> Option<HeaderValue> {
    let secure = if state.settings.issuer.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        state.settings.config.session_ttl_seconds
    ))
    .ok()
}

/// The 429 page for a source that has tried to sign in too often, or `None`.
pub(crate) fn sign_in_throttled(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    now: u64,
) -> Option<Response> {
    let retry = state
        .login_limiter
        .check(client_ip(peer, headers), now)
        .err()?;
    let mut res = PageError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        "too many sign-in attempts; wait a minute",
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(res)
}

/// The configured user named `username`, and whether `password` matches their hash. An
/// unknown user, or one without a hash, is checked against a fixed hash all the same, so
/// timing does not tell names apart.
pub(crate) async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
) -> (Option<crate::config::UserConfig>, bool) {
    let user = state
        .settings
        .config
        .users
        .iter()
        .find(|u| u.name == username)
        .cloned();
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| state.settings.dummy_password_hash.clone());
    let password = password.to_string();
    let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    (user, verified)
}

/// `POST /login`: check the password, start a session, go on to consent.
pub async fn login_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    // Password guessing is bounded per source address.
    if let Some(throttled) = sign_in_throttled(&state, peer, &headers, now) {
        return throttled;
    }
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, &headers) {
        return refused;
    }
    let Ok(params) = Params::parse(&body) else {
        return PageError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is malformed",
        )
        .into_response();
    };
    let (Some(id), Some(csrf)) = (params.get("request_id"), params.get("csrf_token")) else {
        return PageError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is incomplete",
        )
        .into_response();
    };
    let pending = match state.store.take_pending(id) {
        Ok(Some(p)) if p.expires_at > now && ct_eq(csrf, &p.csrf_token) => p,
        Ok(_) => {
            return PageError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this sign-in form has expired or was already used",
            )
            .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "pending lookup failed");
            return PageError::unavailable().into_response();
        }
    };
    let client = match state.lookup_client(&pending.client_id, now).await {
        Ok(Some(c)) => c,
        _ => {
            return PageError::new(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "the client is gone",
            )
            .into_response();
        }
    };
    let username = params.get("username").unwrap_or_default().to_string();
    let password = params.get("password").unwrap_or_default();
    let (user, ok) = check_password(&state, &username, password).await;
    let ok = match &user {
        Some(u) if u.password_hash.is_none() => password.is_empty(),
        Some(_) => ok,
        None => false,
    };
    if !ok {
        audit!(state, &meta, warn, "login_failed", client: Some(&pending.client_id), sub: None;
            client_id = %pending.client_id, "login failed");
        // The same form may be tried again.
        if let Err(e) = state.store.insert_pending(pending.clone(), now) {
            tracing::error!(error = %e, "storing pending authorization failed");
        }
        return login_page(
            &pending,
            &client,
            &username,
            Some("Wrong user or password."),
        );
    }
    audit!(state, &meta, info, "login", client: Some(&pending.client_id), sub: Some(&username);
        sub = %username, "user signed in");
    let Some(token) =
        state
            .sessions
            .create(&username, now, state.settings.config.session_ttl_seconds)
    else {
        return PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        )
        .into_response();
    };
    let mut res = proceed(
        &state,
        pending,
        &client,
        Some(username),
        now,
        &meta,
        Arrival::Admitted,
    );
    if let Some(v) = cookie(&state, &token) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `GET /consents`: the signed-in user's remembered consents.
pub async fn consents_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let now = state.clock.now();
    let Some(user) = current_user(&state, &headers, now) else {
        return PageError::new(
            StatusCode::UNAUTHORIZED,
            "login_required",
            "sign in through a client's authorization first",
        )
        .into_response();
    };
    let consents = match state.store.consents(&user, now) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "consent lookup failed");
            return PageError::unavailable().into_response();
        }
    };
    let rows: Vec<_> = consents
        .iter()
        .map(|c| context! { client_id => &c.client_id, scopes => c.scopes.join(" ") })
        .collect();
    let html = crate::web::pages::render(
        "consents.html",
        context! { user, consents => rows, action => CONSENTS_REVOKE_PATH },
    );
    match html {
        Ok(html) => (StatusCode::OK, page_headers(), Html(html)).into_response(),
        Err(_) => PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        )
        .into_response(),
    }
}

/// `POST /consents/revoke`: forget a remembered consent; the client will ask again.
pub async fn consents_revoke_post(
    State(state): State<AppState>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, &headers) {
        return refused;
    }
    let Some(user) = current_user(&state, &headers, now) else {
        return PageError::new(StatusCode::UNAUTHORIZED, "login_required", "sign in first")
            .into_response();
    };
    let Some(client_id) = Params::parse(&body)
        .ok()
        .and_then(|p| p.get("client_id").map(str::to_string))
    else {
        return PageError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is missing",
        )
        .into_response();
    };
    match state.store.forget_consent(&user, &client_id) {
        Ok(_) => {
            audit!(state, &meta, info, "consent_revoked", client: Some(&client_id), sub: Some(&user);
                sub = %user, %client_id, "consent revoked");
            (StatusCode::SEE_OTHER, [(header::LOCATION, CONSENTS_PATH)]).into_response()
        }
        Err(_) => PageError::unavailable().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_and_refuse() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::default();
        let t = s.create("alice", 100, 10).unwrap();
        assert_eq!(s.user(&t, 105).as_deref(), Some("alice"));
        assert_eq!(s.user(&t, 110), None);
        assert_eq!(s.user("forged", 105), None);
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mog_session=xyz; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("xyz"));
    }
}
