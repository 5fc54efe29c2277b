//! Who the user is: the configured users (`[[users]]`, argon2 password hashes), whether
//! they must sign in (more than one user, or any password), the signed-in user of a
//! browser session, and the sign-in form shown before consent.
//!
//! With no users configured the one local user (`user`, default `local-user`) approves
//! consent without signing in, which suits a gateway on loopback.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::state::AuthzState;
use crate::secret::verify_password;
use crate::store::{Client, PendingAuthorization};
use crate::web::pages::{PageError, page_headers};
use crate::web::sessions::cookie_value;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "mog_session";

/// Whether users must sign in: more than one user, or any password.
pub fn login_required(state: &AuthzState) -> bool {
    let users = &state.settings.config.users;
    users.len() > 1
        || users.iter().any(|u| u.password_hash.is_some())
        || !state.providers.is_empty()
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The signed-in user, or the only user when no login is needed.
pub fn current_user(state: &AuthzState, headers: &HeaderMap, now: u64) -> Option<String> {
    if !login_required(state) {
        let config = &state.settings.config;
        return Some(match config.users.first() {
            Some(u) => u.name.clone(),
            None => config.user.clone(),
        });
    }
    session_cookie(headers).and_then(|token| state.sessions.user(token, now))
}

/// Scopes a user may grant; `None` means every offered scope. A person who signed in
/// through an identity provider has what its scope rules gave them then; one the store
/// cannot say about gets nothing.
pub fn user_scopes(state: &AuthzState, sub: &str) -> Option<Vec<String>> {
    if let Some(u) = state.settings.config.users.iter().find(|u| u.name == sub) {
        return u.scopes.clone();
    }
    if state.providers.is_empty() {
        return None;
    }
    match state.store.identity(sub) {
        Ok(Some(identity)) => identity.scopes,
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "reading a person's scopes failed");
            Some(Vec::new())
        }
    }
}

/// The login page for a pending request.
pub fn login_page(
    state: &AuthzState,
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
            passwords => state.settings.config.users.iter().any(|u| u.password_hash.is_some()),
            providers => state.providers.iter().map(|p| context! { id => p.id(), label => &p.label }).collect::<Vec<_>>(),
            provider_action => crate::web::routes::LOGIN_PROVIDER,
            action => crate::web::routes::LOGIN,
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

/// A `Set-Cookie` value for one of our cookies: HTTP only, same-site lax (a provider's
/// redirect back is a top-level GET from another site), `Secure` on an https public URL.
/// `max_age` 0 clears it.
pub(crate) fn cookie_of(
    state: &AuthzState,
    name: &str,
    value: &str,
    max_age: u64,
) -> Option<HeaderValue> {
    let secure = if state.settings.issuer.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// The `Set-Cookie` value that starts a session.
pub(crate) fn cookie(state: &AuthzState, token: &str) -> Option<HeaderValue> {
    cookie_of(
        state,
        SESSION_COOKIE,
        token,
        state.settings.config.session_ttl_seconds,
    )
}

/// The 429 page for a source that has tried to sign in too often, or `None`.
pub(crate) fn sign_in_throttled(state: &AuthzState, source: IpAddr, now: u64) -> Option<Response> {
    let retry = state.login_limiter.check(source, now).err()?;
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
    state: &AuthzState,
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
