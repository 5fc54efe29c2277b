//! The authorization endpoint and the consent page (RFC 6749 §4.1.1-4.1.2, OAuth 2.1
//! §4.1, RFC 9207 `iss`, RFC 8707 `resource`).
//!
//! Client and redirect URI are checked first: if either is wrong the user sees an error
//! page and is never redirected. Every later error goes back to the redirect URI.
//!
//! Pending requests and unredeemed codes are capped (`max_pending_authorizations`,
//! `max_pending_per_client`), but a new request is never refused: at a cap the oldest
//! waiting request gives way (the client's own at its cap; pending requests before codes),
//! and its consent page then says it expired. Abandoned requests cannot lock a client out.

use axum::extract::{RawQuery, State};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;
use url::Url;

use super::params::{ParamError, Params, split_scopes};
use super::pkce;
use super::state::{AuthzState, ClientLookupError};
use super::token::within_client_scope;
use super::users;
use crate::audit::{RequestMeta, audit};
use crate::secret::{ct_eq, random_token, sha256_b64};
use crate::store::{Admission, AuthCode, Client, Consent, PendingAuthorization, StoreResult};
use crate::web::client_ip::ClientIp;
use crate::web::pages::{PageError, cross_site_refusal, page_headers};
use crate::web::uris::{canonical_resource, redirect_uri_matches};

/// Why an authorization request failed.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Client or redirect URI cannot be trusted: show a page, never redirect.
    Page {
        /// Error code.
        error: &'static str,
        /// Description.
        description: String,
    },
    /// Tell the client through its (validated) redirect URI.
    Redirect {
        /// Where.
        redirect_uri: String,
        /// The client's state.
        state: Option<String>,
        /// Error code.
        error: &'static str,
        /// Description.
        description: String,
    },
}

/// A request that passed every check and awaits consent.
#[derive(Debug, PartialEq, Eq)]
pub struct ValidRequest {
    /// The client.
    pub client: Client,
    /// The redirect URI as presented (it matched a registered one).
    pub redirect_uri: String,
    /// Client state.
    pub state: Option<String>,
    /// Scopes to grant.
    pub scopes: Vec<String>,
    /// Canonical resource.
    pub resource: String,
    /// S256 challenge.
    pub code_challenge: String,
}

/// Check an authorization request (pure: the client is looked up by the caller).
pub fn validate_request(
    params: Result<Params, ParamError>,
    client: Option<Client>,
    supported_scopes: &[String],
    default_scopes: &[String],
    resources: &[&str],
) -> Result<ValidRequest, AuthorizeError> {
    let page = |error, description: String| AuthorizeError::Page { error, description };
    let params = params.map_err(|d| page("invalid_request", d.to_string()))?;
    if params.get("client_id").is_none() {
        return Err(page("invalid_request", "client_id is missing".into()));
    }
    let client = client.ok_or_else(|| page("invalid_client", "unknown client_id".into()))?;
    let redirect_uri = match params.get("redirect_uri") {
        Some(uri)
            if client
                .redirect_uris
                .iter()
                .any(|r| redirect_uri_matches(r, uri)) =>
        {
            uri.to_string()
        }
        Some(_) => {
            return Err(page(
                "invalid_request",
                "redirect_uri is not registered for this client".into(),
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return Err(page("invalid_request", "redirect_uri is missing".into())),
    };
    let state = params.get("state").map(str::to_string);
    let redirect = |error, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description: description.to_string(),
    };
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(redirect("invalid_request", "response_type is missing")),
        Some(_) => {
            return Err(redirect(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
    }
    let challenge = params
        .get("code_challenge")
        .ok_or_else(|| redirect("invalid_request", "PKCE code_challenge is required"))?;
    if params.get("code_challenge_method") != Some("S256") {
        return Err(redirect(
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    if challenge.len() != 43 || !pkce::is_well_formed(challenge) {
        return Err(redirect(
            "invalid_request",
            "code_challenge is not an S256 challenge",
        ));
    }
    let scopes = match params.get("scope") {
        Some(scope) => split_scopes(scope),
        None => match &client.scope {
            Some(registered) => split_scopes(registered),
            None => default_scopes.to_vec(),
        },
    };
    // offline_access is how some clients ask for refresh tokens; refresh tokens are always
    // issued here, so it is accepted and dropped.
    let scopes: Vec<String> = scopes
        .into_iter()
        .filter(|s| s != "offline_access")
        .collect();
    if let Some(bad) = scopes.iter().find(|s| !supported_scopes.contains(s)) {
        return Err(redirect(
            "invalid_scope",
            &format!("scope `{bad}` is not offered"),
        ));
    }
    let scopes = if scopes.is_empty() {
        match &client.scope {
            Some(registered) => split_scopes(registered),
            None => default_scopes.to_vec(),
        }
    } else {
        scopes
    };
    // The client's registered (or configured) scope bounds what it may be granted: narrow
    // the request to it, or refuse when nothing is left (RFC 6749 §4.1.2.1).
    let scopes = within_client_scope(&client, scopes).map_err(|_| {
        redirect(
            "invalid_scope",
            "none of the requested scopes is within the scope this client registered",
        )
    })?;
    let resource = match params.get("resource") {
        // The first resource is what a request that names none gets.
        None => resources.first().map(|r| r.to_string()).unwrap_or_default(),
        Some(r) => match canonical_resource(r) {
            Some(c) if resources.contains(&c.as_str()) => c,
            _ => {
                return Err(redirect(
                    "invalid_target",
                    "resource is not served by this authorization server",
                ));
            }
        },
    };
    Ok(ValidRequest {
        client,
        redirect_uri,
        state,
        scopes,
        resource,
        code_challenge: challenge.to_string(),
    })
}

/// Add response parameters to a redirect URI, keeping its own query (RFC 6749 §3.1.2).
pub fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, v),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "invalid redirect URI").into_response(),
    }
}

fn scope_words(scope: &str) -> &'static str {
    match scope {
        "mcp:read" => "See the server's tools, resources and prompts, and call read-only tools",
        "mcp:write" => "Call tools that change data",
        "mcp:admin" => "Administer the server",
        _ => "Access",
    }
}

/// Why an approved request got no code.
enum ApproveError {
    /// Our fault (random source, store, an unusable redirect URI).
    Failed,
}

/// Whether a request is new (from `/authorize`: the pending caps apply, and may evict the
/// oldest waiting request) or continues one already admitted (after sign-in or consent: it
/// only changes form, and evicts nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// A new authorization request.
    New,
    /// One already admitted.
    Admitted,
}

/// Issue a code for an approved request and build the success redirect.
fn approve(
    state: &AuthzState,
    p: &PendingAuthorization,
    now: u64,
    meta: &RequestMeta,
    arrival: Arrival,
) -> Result<String, ApproveError> {
    let failed = |_| ApproveError::Failed;
    let code = random_token(32).ok_or(ApproveError::Failed)?;
    let grant_id = random_token(16).ok_or(ApproveError::Failed)?;
    let record = AuthCode {
        grant_id,
        client_id: p.client_id.clone(),
        redirect_uri: p.redirect_uri.clone(),
        code_challenge: p.code_challenge.clone(),
        scopes: p.scopes.clone(),
        resource: p.resource.clone(),
        sub: p
            .sub
            .clone()
            .unwrap_or_else(|| state.settings.config.user.clone()),
        expires_at: now + state.settings.config.code_ttl,
    };
    let hash = sha256_b64(&code);
    match arrival {
        Arrival::New => {
            let admission = state
                .store
                .admit_code(hash, record, now, state.pending_limits())
                .map_err(failed)?;
            note_eviction(state, p, admission);
        }
        Arrival::Admitted => state.store.insert_code(hash, record).map_err(failed)?,
    }
    audit!(state, meta, info, "code_issued", client: Some(&p.client_id), sub: p.sub.as_deref();
        client_id = %p.client_id, sub = p.sub.as_deref().unwrap_or(""), scopes = %p.scopes.join(" "), "authorization code issued");
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = &p.state {
        pairs.push(("state", s));
    }
    pairs.push(("iss", &state.settings.issuer));
    redirect_with(&p.redirect_uri, &pairs).ok_or(ApproveError::Failed)
}

/// Store a request awaiting the user: under the pending caps when it is new (the oldest
/// waiting request gives way when a cap is reached).
fn keep_pending(
    state: &AuthzState,
    pending: &PendingAuthorization,
    now: u64,
    arrival: Arrival,
) -> StoreResult<()> {
    match arrival {
        Arrival::New => {
            let admission =
                state
                    .store
                    .admit_pending(pending.clone(), now, state.pending_limits())?;
            note_eviction(state, pending, admission);
            Ok(())
        }
        Arrival::Admitted => state.store.insert_pending(pending.clone(), now),
    }
}

/// A new request arrived over a pending cap and the oldest waiting one was evicted to make
/// room (its consent page now says it expired): count it and say which cap.
fn note_eviction(state: &AuthzState, p: &PendingAuthorization, admission: Admission) {
    let which = match admission {
        Admission::Admitted => return,
        Admission::EvictedForClient => "client",
        Admission::EvictedForTotal => "total",
    };
    state.metrics.over_pending_limit();
    tracing::warn!(client_id = %p.client_id, limit = which, "too many authorization requests pending: the oldest was evicted");
}

fn error_redirect(
    issuer: &str,
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Option<String> {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    pairs.push(("iss", issuer));
    redirect_with(redirect_uri, &pairs)
}

/// `GET /authorize`.
pub async fn authorize_get(
    State(state): State<AuthzState>,
    ClientIp(source): ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let s = &state.settings;
    let now = state.clock.now();
    if let Err(retry) = state.authorize_limiter.check(source, now) {
        let mut res = PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "too many authorization requests; wait a minute",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let client = match params.as_ref().ok().and_then(|p| p.get("client_id")) {
        Some(id) => match state.lookup_client(id, now).await {
            Ok(c) => c,
            // The redirect URI cannot be trusted before the document is: a page, no redirect.
            Err(ClientLookupError::Cimd(e)) => {
                return PageError::new(StatusCode::BAD_REQUEST, "invalid_client", e.to_string())
                    .into_response();
            }
            Err(ClientLookupError::Store(e)) => {
                tracing::error!(error = %e, "client lookup failed");
                return PageError::unavailable().into_response();
            }
        },
        None => None,
    };
    let req = match validate_request(
        params,
        client,
        &s.config.scopes.supported,
        &s.config.scopes.default,
        &s.routes
            .iter()
            .map(|r| r.resource.as_str())
            .collect::<Vec<_>>(),
    ) {
        Ok(r) => r,
        Err(AuthorizeError::Page { error, description }) => {
            return PageError::new(StatusCode::BAD_REQUEST, error, description.to_string())
                .into_response();
        }
        Err(AuthorizeError::Redirect {
            redirect_uri,
            state: st,
            error,
            description,
        }) => {
            return match error_redirect(
                &s.issuer,
                &redirect_uri,
                st.as_deref(),
                error,
                &description,
            ) {
                Some(loc) => found(&loc),
                None => PageError::new(StatusCode::BAD_REQUEST, error, description.to_string())
                    .into_response(),
            };
        }
    };
    let (Some(id), Some(csrf)) = (random_token(24), random_token(24)) else {
        return PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        )
        .into_response();
    };
    let pending = PendingAuthorization {
        id,
        csrf_token: csrf,
        client_id: req.client.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        state: req.state.clone(),
        scopes: req.scopes.clone(),
        resource: req.resource.clone(),
        code_challenge: req.code_challenge.clone(),
        expires_at: now + s.config.consent_ttl,
        sub: None,
    };
    let user = users::current_user(&state, &headers, now);
    proceed(&state, pending, &req.client, user, now, &meta, Arrival::New)
}

/// Go on with a validated request: ask who the user is, or skip the consent page when
/// development auto-approval is on or the user already approved these scopes for this
/// client; otherwise show the consent page.
pub(crate) fn proceed(
    state: &AuthzState,
    mut pending: PendingAuthorization,
    client: &Client,
    user: Option<String>,
    now: u64,
    meta: &RequestMeta,
    arrival: Arrival,
) -> Response {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "storing pending authorization failed");
        PageError::unavailable().into_response()
    };
    let Some(sub) = user else {
        return match keep_pending(state, &pending, now, arrival) {
            Ok(()) => users::login_page(state, &pending, client, "", None),
            Err(e) => unavailable(&e),
        };
    };
    if let Some(allowed) = users::user_scopes(state, &sub) {
        pending.scopes.retain(|s| allowed.contains(s));
        if pending.scopes.is_empty() {
            let loc = error_redirect(
                &state.settings.issuer,
                &pending.redirect_uri,
                pending.state.as_deref(),
                "access_denied",
                "the user may not grant any of the requested scopes",
            );
            return loc.map_or_else(
                || {
                    PageError::new(StatusCode::FORBIDDEN, "access_denied", "not allowed")
                        .into_response()
                },
                |l| found(&l),
            );
        }
    }
    pending.sub = Some(sub.clone());
    let remembered = state
        .store
        .consent(&sub, &client.client_id, now)
        .ok()
        .flatten()
        .is_some_and(|c| pending.scopes.iter().all(|s| c.scopes.contains(s)));
    if state.settings.config.auto_approve || remembered {
        return match approve(state, &pending, now, meta, arrival) {
            Ok(loc) => found(&loc),
            Err(ApproveError::Failed) => PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "try again",
            )
            .into_response(),
        };
    }
    match keep_pending(state, &pending, now, arrival) {
        Ok(()) => consent_page(state, &pending, client, &sub),
        Err(e) => unavailable(&e),
    }
}

fn consent_page(
    state: &AuthzState,
    pending: &PendingAuthorization,
    client: &Client,
    sub: &str,
) -> Response {
    // A person who signed in at an identity provider is shown as their email or name, not
    // as the `issuer#subject` the tokens carry.
    let person = if state.providers.is_empty() {
        None
    } else {
        state.store.identity(sub).ok().flatten()
    };
    let user = person
        .and_then(|p| match (p.name, p.email) {
            (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
            (n, e) => e.or(n),
        })
        .unwrap_or_else(|| sub.to_string());
    let redirect_host = Url::parse(&pending.redirect_uri)
        .ok()
        .map(|u| match u.host_str() {
            Some(h) => h.to_string(),
            None => format!("{}:", u.scheme()),
        })
        .unwrap_or_default();
    let scopes: Vec<_> = pending
        .scopes
        .iter()
        .map(|n| context! { name => n, words => scope_words(n) })
        .collect();
    let client_name = client
        .client_name
        .clone()
        .unwrap_or_else(|| format!("Client {}", client.client_id));
    // A metadata-document client names itself; show where the document lives.
    let client_host = Url::parse(&client.client_id)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    // A client that registered itself chose its own name: nobody vouched for it, so say so
    // and show what identifies it (its id; where it sends the user is shown for all).
    let unverified = !client.pinned && client_host.is_none();
    let html = crate::web::pages::render(
        "consent.html",
        context! {
            client_name,
            client_host,
            unverified,
            client_id => &client.client_id,
            redirect_host,
            scopes,
            resource => &pending.resource,
            user,
            action => crate::web::routes::CONSENT,
            request_id => &pending.id,
            csrf_token => &pending.csrf_token,
            minutes => state.settings.config.consent_ttl / 60,
        },
    );
    match html {
        Ok(html) => (StatusCode::OK, page_headers(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "consent template failed");
            PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "try again",
            )
            .into_response()
        }
    }
}

/// A form that answers a pending authorization request (the consent or the sign-in form):
/// posted from our own page, naming the request and carrying its CSRF token. The request is
/// taken from the store, so each works once; a post with the wrong token puts it back, so
/// whoever learns a request id cannot spend the user's request. `Err` is the page to answer.
pub(crate) fn take_pending_form(
    state: &AuthzState,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(Params, PendingAuthorization), Box<Response>> {
    let page = |status, error, description: &'static str| {
        Box::new(PageError::new(status, error, description).into_response())
    };
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, headers) {
        return Err(Box::new(refused));
    }
    let params = Params::parse(body).map_err(|d| {
        Box::new(
            PageError::new(StatusCode::BAD_REQUEST, "invalid_request", d.to_string())
                .into_response(),
        )
    })?;
    let (Some(id), Some(csrf)) = (params.get("request_id"), params.get("csrf_token")) else {
        return Err(page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is incomplete",
        ));
    };
    let pending = match state.store.take_pending(id) {
        Ok(Some(p)) if p.expires_at > now => p,
        Ok(_) => {
            return Err(page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "this authorization request has expired or was already answered",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "pending lookup failed");
            return Err(Box::new(PageError::unavailable().into_response()));
        }
    };
    if !ct_eq(csrf, &pending.csrf_token) {
        put_back(state, &pending, now);
        return Err(page(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the form's security token does not match",
        ));
    }
    Ok((params, pending))
}

/// Put a pending request back after a post that did not answer it.
fn put_back(state: &AuthzState, pending: &PendingAuthorization, now: u64) {
    if let Err(e) = state.store.insert_pending(pending.clone(), now) {
        tracing::warn!(error = %e, "could not keep the pending request");
    }
}

/// `POST /consent`: the user's decision on a pending request. Each request id works once.
pub async fn consent_post(
    State(state): State<AuthzState>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = &state.settings;
    let now = state.clock.now();
    let (params, pending) = match take_pending_form(&state, &headers, &body, now) {
        Ok(taken) => taken,
        Err(page) => return *page,
    };
    let Some(sub) = pending.sub.clone() else {
        return PageError::new(StatusCode::BAD_REQUEST, "invalid_request", "sign in first")
            .into_response();
    };
    if users::login_required(&state)
        && users::current_user(&state, &headers, now).as_deref() != Some(sub.as_str())
    {
        // Not this user's to answer: the real user keeps the pending request.
        put_back(&state, &pending, now);
        return PageError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "this approval belongs to another sign-in",
        )
        .into_response();
    }
    let location = match params.get("decision") {
        Some("approve") => {
            let ttl = s.config.remember_consent_seconds;
            if ttl > 0 {
                // What was approved before for this client still stands: remember the union.
                let mut scopes = state
                    .store
                    .consent(&sub, &pending.client_id, now)
                    .ok()
                    .flatten()
                    .map(|c| c.scopes)
                    .unwrap_or_default();
                for s in &pending.scopes {
                    if !scopes.contains(s) {
                        scopes.push(s.clone());
                    }
                }
                let consent = Consent {
                    sub,
                    client_id: pending.client_id.clone(),
                    scopes,
                    expires_at: now + ttl,
                };
                if let Err(e) = state.store.remember_consent(consent) {
                    tracing::warn!(error = %e, "could not remember consent");
                }
            }
            audit!(state, &meta, info, "consent_granted", client: Some(&pending.client_id), sub: pending.sub.as_deref();
                client_id = %pending.client_id, sub = pending.sub.as_deref().unwrap_or(""), scopes = %pending.scopes.join(" "), "consent granted");
            approve(&state, &pending, now, &meta, Arrival::Admitted).ok()
        }
        _ => {
            audit!(state, &meta, info, "consent_denied", client: Some(&pending.client_id), sub: pending.sub.as_deref();
                client_id = %pending.client_id, sub = pending.sub.as_deref().unwrap_or(""), "consent denied");
            error_redirect(
                &s.issuer,
                &pending.redirect_uri,
                pending.state.as_deref(),
                "access_denied",
                "the user denied the request",
            )
        }
    };
    match location {
        Some(loc) => found(&loc),
        None => PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RES: &str = "http://127.0.0.1:9/mcp";
    const CHALLENGE: &str = "aR08vLrMr-Hy7JDIQ78iMyVuRP4ZwjqTrMzHmJL04PM";

    fn client() -> Client {
        Client {
            client_id: "c1".into(),
            client_name: None,
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            grant_types: vec![],
            token_endpoint_auth_method: "none".into(),
            scope: None,
            created_at: 0,
            ..Client::default()
        }
    }

    fn check(query: &str, client: Option<Client>) -> Result<ValidRequest, AuthorizeError> {
        let supported = vec!["mcp:read".to_string(), "mcp:write".to_string()];
        validate_request(
            Params::parse(query.as_bytes()),
            client,
            &supported,
            &["mcp:read".into()],
            &[RES],
        )
    }

    fn q(extra: &str) -> String {
        format!(
            "client_id=c1&redirect_uri=http%3A%2F%2F127.0.0.1%3A5555%2Fcb&response_type=code&code_challenge={CHALLENGE}&code_challenge_method=S256&state=xyz{extra}"
        )
    }

    fn code_of(r: Result<ValidRequest, AuthorizeError>) -> &'static str {
        match r {
            Err(AuthorizeError::Redirect { error, .. }) => error,
            Err(AuthorizeError::Page { error, .. }) => error,
            Ok(_) => "ok",
        }
    }

    #[test]
    fn valid_request_defaults_scope_and_resource() {
        let r = check(&q(""), Some(client())).unwrap();
        assert_eq!(r.scopes, ["mcp:read"]);
        assert_eq!(r.resource, RES);
        assert_eq!(r.redirect_uri, "http://127.0.0.1:5555/cb");
        assert_eq!(r.state.as_deref(), Some("xyz"));
    }

    #[test]
    fn unknown_client_or_redirect_never_redirects() {
        assert!(matches!(
            check(&q(""), None),
            Err(AuthorizeError::Page { .. })
        ));
        let other = q("").replace("127.0.0.1%3A5555%2Fcb", "evil.example%2Fcb");
        assert!(matches!(
            check(&other, Some(client())),
            Err(AuthorizeError::Page { .. })
        ));
    }

    #[test]
    fn pkce_s256_is_required() {
        let plain = q("").replace("code_challenge_method=S256", "code_challenge_method=plain");
        assert_eq!(code_of(check(&plain, Some(client()))), "invalid_request");
        let missing = q("").replace(&format!("code_challenge={CHALLENGE}&"), "");
        assert_eq!(code_of(check(&missing, Some(client()))), "invalid_request");
        let no_method = q("").replace("&code_challenge_method=S256", "");
        assert_eq!(
            code_of(check(&no_method, Some(client()))),
            "invalid_request"
        );
    }

    #[test]
    fn resource_must_be_ours() {
        assert_eq!(
            code_of(check(
                &q("&resource=http%3A%2F%2Fother%2Fmcp"),
                Some(client())
            )),
            "invalid_target"
        );
        assert_eq!(
            code_of(check(
                &q("&resource=HTTP%3A%2F%2F127.0.0.1%3A9%2Fmcp%2F"),
                Some(client())
            )),
            "ok"
        );
    }

    #[test]
    fn scope_and_response_type_errors_redirect() {
        assert_eq!(
            code_of(check(&q("&scope=root"), Some(client()))),
            "invalid_scope"
        );
        let token = q("").replace("response_type=code", "response_type=token");
        assert_eq!(
            code_of(check(&token, Some(client()))),
            "unsupported_response_type"
        );
        assert_eq!(
            code_of(check(&q("&state=again"), Some(client()))),
            "invalid_request"
        );
    }

    #[test]
    fn the_registered_scope_bounds_the_request() {
        let read_only = Client {
            scope: Some("mcp:read".into()),
            ..client()
        };
        let r = check(
            &q("&scope=mcp%3Aread%20mcp%3Awrite"),
            Some(read_only.clone()),
        )
        .unwrap();
        assert_eq!(r.scopes, ["mcp:read"], "narrowed to the intersection");
        let r = check(&q(""), Some(read_only.clone())).unwrap();
        assert_eq!(r.scopes, ["mcp:read"]);
        let r = check(&q("&scope=offline_access"), Some(read_only.clone())).unwrap();
        assert_eq!(r.scopes, ["mcp:read"]);
        match check(&q("&scope=mcp%3Awrite"), Some(read_only)) {
            Err(AuthorizeError::Redirect {
                error, description, ..
            }) => {
                assert_eq!(error, "invalid_scope");
                assert!(description.contains("registered"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        let unbounded = check(&q("&scope=mcp%3Awrite"), Some(client())).unwrap();
        assert_eq!(
            unbounded.scopes,
            ["mcp:write"],
            "no registered scope: no bound"
        );
    }

    #[test]
    fn redirect_keeps_query_and_encodes() {
        let loc = redirect_with(
            "http://127.0.0.1:1/cb?x=1",
            &[("code", "a b"), ("iss", "http://h")],
        )
        .unwrap();
        assert_eq!(loc, "http://127.0.0.1:1/cb?x=1&code=a+b&iss=http%3A%2F%2Fh");
    }
}
