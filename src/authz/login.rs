//! The sign-in form's handler, and the page where a user sees and revokes the consents
//! the gateway remembers.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::authorize::{Arrival, proceed, take_pending_form};
use super::params::Params;
use super::state::AuthzState;
use super::users::{check_password, cookie, current_user, login_page, sign_in_throttled};
use crate::audit::{RequestMeta, audit};
use crate::web::client_ip::ClientIp;
use crate::web::pages::{PageError, cross_site_refusal, page_headers};
use crate::web::routes;

/// `POST /login`: check the password, start a session, go on to consent.
pub async fn login_post(
    State(state): State<AuthzState>,
    ClientIp(source): ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    // Password guessing is bounded per source address.
    if let Some(throttled) = sign_in_throttled(&state, source, now) {
        return throttled;
    }
    let (params, pending) = match take_pending_form(&state, &headers, &body, now) {
        Ok(taken) => taken,
        Err(page) => return *page,
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
            &state,
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
pub async fn consents_get(State(state): State<AuthzState>, headers: HeaderMap) -> Response {
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
        context! { user, consents => rows, action => routes::CONSENTS_REVOKE, logout_action => routes::LOGOUT },
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
    State(state): State<AuthzState>,
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
            // Identity-provider tokens kept for the person go with it.
            state.vault.forget(&user, state.clock.now());
            audit!(state, &meta, info, "consent_revoked", client: Some(&client_id), sub: Some(&user);
                sub = %user, %client_id, "consent revoked");
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, routes::CONSENTS)],
            )
                .into_response()
        }
        Err(_) => PageError::unavailable().into_response(),
    }
}
