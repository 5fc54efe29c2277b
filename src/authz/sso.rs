//! Sign-in at an identity provider before consent (`[[identity_providers]]`): the sign-in
//! page's button posts to [`provider_post`], which sends the browser to the provider with
//! a fresh `state`, `nonce` and PKCE verifier; the provider sends it back to
//! [`callback_get`], which checks all three, lets the provider module verify who the
//! person is, applies the provider's access rules, records the person (and, when an
//! upstream wants them, the provider's tokens, sealed), starts a browser session and goes
//! on to consent. [`logout_post`] ends the session.
//!
//! What the round trip needs is carried in a cookie sealed with AES-256-GCM under a key
//! every replica derives alike: bound to this browser (a sign-in started elsewhere cannot
//! be finished here), readable by whichever replica the provider sends the browser back to,
//! and never in a URL.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::authorize::{Arrival, proceed, take_pending_form};
use super::params::Params;
use super::state::AuthzState;
use super::users::{SESSION_COOKIE, cookie, cookie_of, sign_in_throttled};
use crate::audit::{RequestMeta, audit};
use crate::idp::{SignInError, rules};
use crate::secret::{ct_eq, random_token, sha256_b64};
use crate::store::Identity;
use crate::tokens::keys::KeyEncryptionKey;
use crate::web::pages::{PageError, cross_site_refusal};
use crate::web::sessions::cookie_value;

/// The cookie carrying a sign-in in flight.
const FLIGHT_COOKIE: &str = "mog_login";
/// How long a person has at the provider, seconds.
const FLIGHT_SECONDS: u64 = 600;
/// The additional data the flight cookie is sealed under.
const FLIGHT_AAD: &str = "login-flight";

/// A sign-in in flight, sealed into [`FLIGHT_COOKIE`].
#[derive(Serialize, Deserialize)]
struct Flight {
    /// Provider id.
    p: String,
    /// `state` sent to the provider.
    s: String,
    /// `nonce`.
    n: String,
    /// PKCE verifier.
    v: String,
    /// The pending authorization's id and CSRF token.
    r: String,
    c: String,
    /// Expiry.
    e: u64,
}

fn sealer(state: &AuthzState) -> Option<KeyEncryptionKey> {
    let secret = state
        .keys
        .local_secret("mog-login-flight")
        .inspect_err(|e| tracing::error!(error = %e, "the sign-in cookie key is unavailable"))
        .ok()?;
    KeyEncryptionKey::from_bytes(&secret).ok()
}

fn seal_flight(state: &AuthzState, flight: &Flight) -> Option<String> {
    let plain = serde_json::to_vec(flight).ok()?;
    let sealed = sealer(state)?.seal(FLIGHT_AAD, &plain).ok()?;
    Some(URL_SAFE_NO_PAD.encode(sealed))
}

fn open_flight(state: &AuthzState, headers: &HeaderMap) -> Option<Flight> {
    let sealed = URL_SAFE_NO_PAD
        .decode(cookie_value(headers, FLIGHT_COOKIE)?)
        .ok()?;
    let plain = sealer(state)?.open(FLIGHT_AAD, &sealed).ok()?;
    serde_json::from_slice(&plain).ok()
}

fn flight_cookie(state: &AuthzState, value: &str, max_age: u64) -> Option<HeaderValue> {
    cookie_of(state, FLIGHT_COOKIE, value, max_age)
}

fn page(status: StatusCode, error: &'static str, description: impl Into<String>) -> Response {
    PageError::new(status, error, description.into()).into_response()
}

fn with_cleared_flight(state: &AuthzState, mut res: Response) -> Response {
    if let Some(v) = flight_cookie(state, "", 0) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

fn failure_page(e: &SignInError) -> Response {
    match e {
        SignInError::Unreachable(_) => page(
            StatusCode::BAD_GATEWAY,
            "temporarily_unavailable",
            "the identity provider could not be reached; try again later",
        ),
        SignInError::Refused(_) => page(
            StatusCode::BAD_GATEWAY,
            "access_denied",
            "the identity provider refused the sign-in; start again from your application",
        ),
        SignInError::Invalid(_) => page(
            StatusCode::BAD_REQUEST,
            "access_denied",
            "the identity provider's answer did not verify; start again from your application",
        ),
    }
}

/// `POST /login/provider`: leave for the chosen provider's sign-in page.
pub async fn provider_post(
    State(state): State<AuthzState>,
    crate::web::client_ip::ClientIp(source): crate::web::client_ip::ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    if let Some(throttled) = sign_in_throttled(&state, source, now) {
        return throttled;
    }
    let (params, pending) = match take_pending_form(&state, &headers, &body, now) {
        Ok(taken) => taken,
        Err(page) => return *page,
    };
    // The request waits for the person to come back from the provider.
    if let Err(e) = state.store.insert_pending(pending.clone(), now) {
        tracing::error!(error = %e, "storing pending authorization failed");
        return PageError::unavailable().into_response();
    }
    let Some(provider) = params
        .get("provider")
        .and_then(|id| state.providers.get(id))
    else {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no such identity provider",
        );
    };
    let (Some(st), Some(nonce), Some(verifier)) =
        (random_token(32), random_token(32), random_token(32))
    else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        );
    };
    let url = match provider
        .authorization_url(&st, &nonce, &sha256_b64(&verifier))
        .await
    {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(provider = %provider.id(), error = %e, "identity provider unavailable");
            return failure_page(&e);
        }
    };
    let flight = Flight {
        p: provider.id().to_string(),
        s: st,
        n: nonce,
        v: verifier,
        r: pending.id.clone(),
        c: pending.csrf_token.clone(),
        e: now + FLIGHT_SECONDS,
    };
    let (Some(sealed), Ok(location)) = (seal_flight(&state, &flight), HeaderValue::from_str(&url))
    else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        );
    };
    audit!(state, &meta, info, "login_redirect", client: Some(&pending.client_id), sub: None;
        provider = %provider.id(), client_id = %pending.client_id, "sent to the identity provider");
    let mut res = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response();
    if let Some(v) = flight_cookie(&state, &sealed, FLIGHT_SECONDS) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `GET /login/callback`: the provider's answer.
pub async fn callback_get(
    State(state): State<AuthzState>,
    meta: RequestMeta,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let res = callback(
        &state,
        &meta,
        &headers,
        query.as_deref().unwrap_or_default(),
    )
    .await;
    with_cleared_flight(&state, res)
}

async fn callback(
    state: &AuthzState,
    meta: &RequestMeta,
    headers: &HeaderMap,
    query: &str,
) -> Response {
    let now = state.clock.now();
    let Ok(params) = Params::parse(query.as_bytes()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed answer",
        );
    };
    let Some(flight) = open_flight(state, headers).filter(|f| f.e > now) else {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this sign-in was not started in this browser, or it took too long; start again from your application",
        );
    };
    if !params.get("state").is_some_and(|s| ct_eq(s, &flight.s)) {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the answer is not for the sign-in this browser started; start again from your application",
        );
    }
    let Some(provider) = state.providers.get(&flight.p) else {
        return page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the identity provider is no longer configured",
        );
    };
    let pending = match state.store.take_pending(&flight.r) {
        Ok(Some(p)) if p.expires_at > now && ct_eq(&p.csrf_token, &flight.c) => p,
        Ok(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this authorization request has expired or was already answered",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "pending lookup failed");
            return PageError::unavailable().into_response();
        }
    };
    if let Some(error) = params.get("error") {
        // Only a code from a fixed alphabet is repeated, never the provider's free text.
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        audit!(state, meta, warn, "login_failed", client: Some(&pending.client_id), sub: None;
            provider = %provider.id(), %error, "the identity provider answered with an error");
        return page(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("the identity provider did not sign you in ({error})"),
        );
    }
    let outcome = async {
        provider.check_response_issuer(params.get("iss")).await?;
        let code = params
            .get("code")
            .ok_or_else(|| SignInError::Invalid("the answer has no code".into()))?;
        provider.finish(code, &flight.v, &flight.n, now).await
    }
    .await;
    let (person, tokens) = match outcome {
        Ok(done) => done,
        Err(e) => {
            audit!(state, meta, warn, "login_failed", client: Some(&pending.client_id), sub: None;
                provider = %provider.id(), error = %e, "sign-in at the identity provider failed");
            return failure_page(&e);
        }
    };
    let sub = person.sub();
    let who = person
        .email
        .clone()
        .or_else(|| person.name.clone())
        .unwrap_or_else(|| sub.clone());
    if !rules::admitted(&provider.config, &person) {
        audit!(state, meta, warn, "login_refused", client: Some(&pending.client_id), sub: Some(&sub);
            provider = %provider.id(), %sub, email = person.email.as_deref().unwrap_or(""), "the access rules refuse this person");
        return page(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("{who} may not use this server. Ask its operator for access."),
        );
    }
    let client = match state.lookup_client(&pending.client_id, now).await {
        Ok(Some(c)) => c,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "the client is gone",
            );
        }
    };
    let identity = Identity {
        sub: sub.clone(),
        provider: provider.id().to_string(),
        email: person.email.clone(),
        name: person.name.clone(),
        scopes: rules::scopes_for(&provider.config, &person),
        upstream: state.vault.seal(&sub, &tokens),
        updated_at: now,
    };
    if let Err(e) = state.store.put_identity(identity) {
        tracing::error!(error = %e, "recording the signed-in person failed");
        return PageError::unavailable().into_response();
    }
    state.vault.forget_cached(&sub);
    audit!(state, meta, info, "login", client: Some(&pending.client_id), sub: Some(&sub);
        provider = %provider.id(), %sub, email = person.email.as_deref().unwrap_or(""), "signed in at the identity provider");
    let Some(token) = state
        .sessions
        .create(&sub, now, state.settings.config.session_ttl_seconds)
    else {
        return PageError::unavailable().into_response();
    };
    let mut res = proceed(
        state,
        pending,
        &client,
        Some(sub),
        now,
        meta,
        Arrival::Admitted,
    );
    if let Some(v) = cookie(state, &token) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `POST /logout`: end this browser's session; a person who signed in through a provider
/// also loses the provider tokens the gateway kept for them.
pub async fn logout_post(
    State(state): State<AuthzState>,
    meta: RequestMeta,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, &headers) {
        return refused;
    }
    let now = state.clock.now();
    if let Some(token) = cookie_value(&headers, SESSION_COOKIE) {
        if let Some(sub) = state.sessions.user(token, now) {
            state.vault.forget(&sub, state.clock.now());
            audit!(state, &meta, info, "logout", client: None, sub: Some(&sub);
                %sub, "signed out");
        }
        state.sessions.end(token);
    }
    let mut res = page(
        StatusCode::OK,
        "signed_out",
        "You are signed out of the gateway.",
    );
    let secure = if state.settings.issuer.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
    )) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}
