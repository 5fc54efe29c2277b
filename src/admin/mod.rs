//! The operator's page (`/admin` on the routes listener, and through the proxy): the
//! registered clients, the live grants of each user, the last security events, and a
//! Revoke button on every client and grant. Server-rendered, no JavaScript.
//!
//! Who may see it:
//!
//! - With no admin user configured, only a request from this machine: the connection's
//!   peer, every `X-Forwarded-For` hop and the `Host` name must all be loopback (or the
//!   public host). A remote client behind our proxy (which appends its address) is refused,
//!   so is one behind another proxy on this host that says where the client is, and so is a
//!   page that rebinds its own DNS name to 127.0.0.1.
//! - With admin users (`admin = true` in `[[users]]`), everyone signs in with an admin's
//!   password first, from anywhere, loopback included. Sessions are the login page's
//!   ([`crate::authz::crate::web::sessions::Sessions`]). The page is served with the authorization
//!   server, on its state ([`AdminState`] derefs to [`AuthzState`]).
//!
//! The Revoke forms post a CSRF token: an HMAC, under a per-process random key, of the
//! admin's session (or, loopback-only, of a random cookie set with the page), compared in
//! constant time. Cross-site posts (`Origin`, `Sec-Fetch-Site`) are refused as on the
//! consent page. A Revoke button asks first: its post (without `confirm=yes`) renders a page
//! naming what would be revoked, whose own Revoke button posts the same form again with
//! `confirm=yes`; only that post revokes. Revoking a grant revokes its refresh tokens and denies its access tokens,
//! so the client's next MCP request is a 401, and forgets the user's remembered approval
//! of that client, so the user is asked again; revoking a client deletes it and revokes all
//! its grants. Each revocation is a security event.

pub mod cli;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minijinja::context;

use crate::audit::{RequestMeta, audit};
use crate::authz::AuthzState;
use crate::authz::params::Params;
use crate::authz::users;
use crate::secret::{ct_eq, random_token};
use crate::store::{Client, Grant};
use crate::web::MAX_FORM_BODY;
use crate::web::client_ip::{self, ClientIp};
use crate::web::pages::{PageError, cross_site_refusal, page_headers, render};
use crate::web::request_id::request_id_scope;
use crate::web::routes::ADMIN;

/// Where its sign-in form posts.
pub const LOGIN_PATH: &str = "/admin/login";
/// Where a grant's Revoke button posts.
pub const REVOKE_GRANT_PATH: &str = "/admin/grants/revoke";
/// Where a client's Revoke button posts.
pub const REVOKE_CLIENT_PATH: &str = "/admin/clients/revoke";
/// Where a signed-in admin's Sign out button posts.
pub const LOGOUT_PATH: &str = "/admin/logout";
/// The cookie a loopback-only page (and the sign-in form) binds its CSRF token to.
pub const CSRF_COOKIE: &str = "mog_admin_csrf";

/// Rows shown per table; the page says how many more there are.
const MAX_ROWS: usize = 500;

/// The operator's page's state: the authorization server's, and the key of its CSRF
/// tokens. Derefs to [`AuthzState`].
#[derive(Clone)]
pub struct AdminState {
    /// The authorization server's state (users, sessions, store).
    pub authz: AuthzState,
    /// The per-process secret that binds the page's CSRF tokens.
    pub admin_key: Arc<AdminKey>,
}

impl Deref for AdminState {
    type Target = AuthzState;
    fn deref(&self) -> &AuthzState {
        &self.authz
    }
}

impl AdminState {
    /// The page's state over `authz`, with a fresh CSRF key (the fleet's, on a shared
    /// store, so a form from one replica may be posted to another); `None` if the random
    /// source fails.
    pub fn new(authz: AuthzState) -> Option<Self> {
        let key = match authz.keys.fleet_secret("mog-admin-csrf") {
            Some(bytes) => AdminKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
            None => AdminKey::generate()?,
        };
        Some(Self {
            admin_key: Arc::new(key),
            authz,
        })
    }
}

/// The operator's page and its forms, under the same body limit and request-id scope as
/// the authorization server.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(ADMIN, get(admin_get))
        .route(LOGIN_PATH, post(login_post))
        .route(REVOKE_GRANT_PATH, post(revoke_grant_post))
        .route(REVOKE_CLIENT_PATH, post(revoke_client_post))
        .route(LOGOUT_PATH, post(logout_post))
        .layer(DefaultBodyLimit::max(MAX_FORM_BODY))
        .layer(middleware::from_fn_with_state(
            state.settings.trusted_proxies.clone(),
            client_ip::resolve,
        ))
        .layer(middleware::from_fn(request_id_scope))
        .with_state(state)
}

/// The key of the CSRF tokens: per process (a restart invalidates open pages, nothing
/// else), or the fleet's.
pub struct AdminKey(hmac::Key);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey([redacted])")
    }
}

impl AdminKey {
    /// A fresh random key; `None` if the random source fails.
    pub fn generate() -> Option<Self> {
        hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
            .ok()
            .map(Self)
    }

    /// The CSRF token for a form bound to `binding`.
    fn token(&self, binding: &Binding) -> String {
        let (kind, value) = match binding {
            Binding::Session(v) => ("session", v),
            Binding::Cookie(v) => ("cookie", v),
        };
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in [
            b"mog-admin-csrf".as_slice(),
            kind.as_bytes(),
            value.as_bytes(),
        ] {
            ctx.update(part);
            ctx.update(&[0]);
        }
        URL_SAFE_NO_PAD.encode(ctx.sign())
    }
}

/// What a form's CSRF token is bound to.
enum Binding {
    /// The admin's session cookie.
    Session(String),
    /// The page's own random cookie (loopback-only, or the sign-in form).
    Cookie(String),
}

/// Who is looking at the page.
enum Viewer {
    /// Anyone on this machine (no admin user configured).
    Loopback,
    /// A signed-in admin, and the session they signed in with.
    Admin {
        /// The admin's name.
        name: String,
        /// Their session cookie.
        session: String,
    },
}

impl Viewer {
    fn name(&self) -> &str {
        match self {
            Self::Loopback => "loopback",
            Self::Admin { name, .. } => name,
        }
    }
}

/// Why the page is not shown.
enum Refused {
    /// Loopback-only, and the request is not from loopback.
    Remote,
    /// An admin must sign in; the message says why the current sign-in does not do.
    SignIn(Option<&'static str>),
}

/// Whether any user may sign in as an admin (then everyone must).
pub fn admins_configured(state: &AdminState) -> bool {
    state.settings.config.users.iter().any(|u| u.admin)
}

fn is_admin(state: &AdminState, name: &str) -> bool {
    state
        .settings
        .config
        .users
        .iter()
        .any(|u| u.name == name && u.admin && u.password_hash.is_some())
}

/// Whether a `Host` value names this machine: a loopback address, `localhost`, or the
/// public host (a request through our proxy keeps the name the client used).
fn host_is_local(state: &AdminState, host: &str) -> bool {
    let Ok(url) = url::Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    let public = url::Url::parse(&state.settings.issuer).ok();
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || public
                    .as_ref()
                    .and_then(|p| p.host_str())
                    .is_some_and(|p| p.eq_ignore_ascii_case(d))
        }
        None => false,
    }
}

/// Whether a request comes from this machine: the peer, every forwarded hop and the host
/// name are all loopback. Stricter than [`client_ip`] (which believes the last hop and the
/// trusted proxies): a proxy on this host in front of ours makes the peer loopback, but it
/// names the real client in `X-Forwarded-For`, and that must count.
pub fn from_loopback(state: &AdminState, peer: SocketAddr, headers: &HeaderMap) -> bool {
    if !peer.ip().is_loopback() {
        return false;
    }
    let hops_local = |name: &str| {
        headers.get_all(name).iter().all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').all(|hop| {
                    hop.trim()
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
                })
            })
        })
    };
    // `Forwarded` (RFC 7239) is not parsed: its presence means another proxy we cannot
    // vouch for.
    if !hops_local("x-forwarded-for")
        || !hops_local("x-real-ip")
        || headers.contains_key("forwarded")
    {
        return false;
    }
    ["x-forwarded-host", header::HOST.as_str()]
        .into_iter()
        .flat_map(|name| headers.get_all(name).iter())
        .all(|v| v.to_str().is_ok_and(|h| host_is_local(state, h)))
}

/// Whether a host name is a loopback address or `localhost` (not the public name).
fn host_is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Whether `origin` is the gateway's own: its public origin, or the loopback name the
/// request itself was sent to (`localhost` and `127.0.0.1` are both this machine). A name
/// that is neither (a page that rebinds its DNS name to us) is someone else's, even when
/// the request was sent to it.
fn own_origin(state: &AdminState, origin: &str, authority: &str) -> bool {
    if origin == state.settings.public_origin {
        return true;
    }
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host_port = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    host_is_loopback(url.host()) && host_port.eq_ignore_ascii_case(authority)
}

/// The name an operator page was asked for: what our proxy forwarded as
/// `X-Forwarded-Host` (the client's `Host` or HTTP/2 `:authority`), or this request's own.
fn operator_authority(req: &axum::extract::Request) -> Result<Option<String>, &'static str> {
    let mut forwarded = req.headers().get_all("x-forwarded-host").iter();
    match (forwarded.next(), forwarded.next()) {
        (Some(_), Some(_)) => Err("more than one X-Forwarded-Host header"),
        (Some(v), None) => v
            .to_str()
            .map(|v| Some(v.to_string()))
            .map_err(|_| "the X-Forwarded-Host header is not text"),
        (None, _) => crate::web::origin::effective_authority(req.uri(), req.headers())
            .map(|a| a.map(str::to_string)),
    }
}

/// Whether a path is an operator page: `/admin*`, `/consents*`, `/debug/requests`.
pub fn is_operator_path(path: &str) -> bool {
    matches!(
        crate::web::routes::route_name(path),
        "admin" | "consents" | "debug"
    )
}

/// Every operator page (`/admin*`, `/consents*`, `/debug/requests`) answers only requests
/// sent to the gateway's own name (a loopback name or the public host), never one a
/// browser marks cross-site (`Sec-Fetch-Site`), never one from another `Origin`. A
/// request that names no host, or two, is a 400.
pub async fn operator_guard(
    State(state): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !is_operator_path(req.uri().path()) {
        return next.run(req).await;
    }
    let refuse = |why: &str| {
        PageError::new(StatusCode::FORBIDDEN, "access_denied", why.to_string()).into_response()
    };
    let authority = match operator_authority(&req) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return PageError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request names no host",
            )
            .into_response();
        }
        Err(why) => {
            return PageError::new(StatusCode::BAD_REQUEST, "invalid_request", why).into_response();
        }
    };
    if !host_is_local(&state, &authority) {
        return refuse(
            "the operator's pages answer only under the gateway's own name (its public URL \
             or a loopback address)",
        );
    }
    let headers = req.headers();
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|site| matches!(site.to_str(), Ok("cross-site" | "same-site") | Err(_)));
    if cross_site {
        return refuse("cross-site request refused");
    }
    let foreign = headers.get(header::ORIGIN).is_some_and(|origin| {
        !origin
            .to_str()
            .is_ok_and(|o| own_origin(&state, o, &authority))
    });
    if foreign {
        return refuse("cross-origin request refused");
    }
    next.run(req).await
}

fn viewer(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
    now: u64,
) -> Result<Viewer, Refused> {
    if !admins_configured(state) {
        return if from_loopback(state, peer, headers) {
            Ok(Viewer::Loopback)
        } else {
            Err(Refused::Remote)
        };
    }
    let Some(session) = crate::web::sessions::cookie_value(headers, users::SESSION_COOKIE) else {
        return Err(Refused::SignIn(None));
    };
    match state.sessions.user(session, now) {
        Some(name) if is_admin(state, &name) => Ok(Viewer::Admin {
            name,
            session: session.to_string(),
        }),
        Some(_) => Err(Refused::SignIn(Some(
            "You are signed in as a user who is not an admin.",
        ))),
        None => Err(Refused::SignIn(None)),
    }
}

/// The page's CSRF cookie if the browser sent a well-formed one.
fn csrf_cookie(headers: &HeaderMap) -> Option<&str> {
    crate::web::sessions::cookie_value(headers, CSRF_COOKIE).filter(|v| {
        v.len() == 43
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The CSRF cookie to bind a form to: the browser's, or a new one to set.
fn csrf_cookie_or_new(headers: &HeaderMap) -> Option<(String, bool)> {
    match csrf_cookie(headers) {
        Some(v) => Some((v.to_string(), false)),
        None => random_token(32).map(|v| (v, true)),
    }
}

fn set_csrf_cookie(state: &AdminState, res: &mut Response, value: &str) {
    let secure = if state.settings.issuer.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={value}; Path={ADMIN}; HttpOnly; SameSite=Strict{secure}"
    )) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn see_other(location: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response()
}

fn server_error() -> Response {
    PageError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "try again",
    )
    .into_response()
}

fn remote_refusal() -> Response {
    PageError::new(
        StatusCode::FORBIDDEN,
        "access_denied",
        "The operator's page answers only requests from this machine. To use it from \
         elsewhere, make a user an admin (admin = true in [[users]], with a password) and \
         sign in.",
    )
    .into_response()
}

/// The sign-in form (the login page's template), its CSRF token bound to the page cookie.
fn login_form(
    state: &AdminState,
    headers: &HeaderMap,
    username: &str,
    error: Option<&str>,
) -> Response {
    let Some((cookie, new)) = csrf_cookie_or_new(headers) else {
        return server_error();
    };
    let csrf_token = state.admin_key.token(&Binding::Cookie(cookie.clone()));
    let html = render(
        "login.html",
        context! {
            client_name => "the operator's page",
            error,
            username,
            action => LOGIN_PATH,
            request_id => "",
            csrf_token,
        },
    );
    let mut res = match html {
        Ok(html) => (StatusCode::UNAUTHORIZED, page_headers(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin login template failed");
            return server_error();
        }
    };
    if new {
        set_csrf_cookie(state, &mut res, &cookie);
    }
    res
}

/// A time for people: RFC 3339 in UTC, or a dash when unknown.
fn when(t: u64) -> String {
    rfc3339(t).unwrap_or_else(|| "—".into())
}

/// A time in RFC 3339 (UTC), or `None` when unknown (0).
fn rfc3339(t: u64) -> Option<String> {
    i64::try_from(t)
        .ok()
        .filter(|t| *t > 0)
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

/// Everything the page shows.
struct PageData {
    clients: Vec<Client>,
    grants: Vec<Grant>,
}

fn page_data(state: &AdminState, now: u64) -> Result<PageData, crate::store::StoreError> {
    let mut clients = state.store.clients()?;
    let mut pinned: Vec<Client> = state.settings.pinned_clients.values().cloned().collect();
    pinned.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    clients.splice(0..0, pinned);
    Ok(PageData {
        clients,
        grants: state.store.live_grants(now)?,
    })
}

fn render_page(state: &AdminState, viewer: &Viewer, csrf_token: &str, now: u64) -> Response {
    let data = match page_data(state, now) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "admin page: store unavailable");
            return PageError::unavailable().into_response();
        }
    };
    let names: HashMap<&str, &str> = data
        .clients
        .iter()
        .filter_map(|c| Some((c.client_id.as_str(), c.client_name.as_deref()?)))
        .collect();
    let mut per_client: HashMap<&str, usize> = HashMap::new();
    for g in &data.grants {
        *per_client.entry(g.client_id.as_str()).or_default() += 1;
    }
    let clients: Vec<_> = data
        .clients
        .iter()
        .take(MAX_ROWS)
        .map(|c| {
            context! {
                id => &c.client_id,
                name => &c.client_name,
                redirect_uris => &c.redirect_uris,
                auth_method => &c.token_endpoint_auth_method,
                created => if c.pinned { "config".to_string() } else { when(c.created_at) },
                last_used => if c.pinned { "—".to_string() } else { when(c.last_used_at) },
                pinned => c.pinned,
                grants => per_client.get(c.client_id.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    let grants: Vec<_> = data
        .grants
        .iter()
        .take(MAX_ROWS)
        .map(|g| {
            context! {
                id => &g.id,
                sub => &g.sub,
                client_id => &g.client_id,
                client_name => names.get(g.client_id.as_str()).copied(),
                scopes => g.scopes.join(" "),
                created => when(g.created_at),
                expires => when(g.expires_at),
            }
        })
        .collect();
    let events: Vec<_> = state
        .events
        .recent()
        .into_iter()
        .map(|e| {
            context! {
                at => when(e.at),
                event => e.event,
                client_id => e.client_id,
                sub => e.sub,
                source => e.source.map(|s| s.to_string()),
                request_id => e.request_id,
            }
        })
        .collect();
    let html = render(
        "admin.html",
        context! {
            viewer => viewer.name(),
            signed_in => matches!(viewer, Viewer::Admin { .. }),
            csrf_token,
            revoke_grant_action => REVOKE_GRANT_PATH,
            revoke_client_action => REVOKE_CLIENT_PATH,
            logout_action => LOGOUT_PATH,
            clients,
            clients_total => data.clients.len(),
            grants,
            grants_total => data.grants.len(),
            events,
            max_rows => MAX_ROWS,
        },
    );
    match html {
        Ok(html) => (StatusCode::OK, page_headers(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin template failed");
            server_error()
        }
    }
}

/// `GET /admin`: the page, the sign-in form, or a refusal.
pub async fn admin_get(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let now = state.clock.now();
    match viewer(&state, peer, &headers, now) {
        Err(Refused::Remote) => remote_refusal(),
        Err(Refused::SignIn(why)) => login_form(&state, &headers, "", why),
        Ok(viewer) => {
            // The page's forms are bound to the admin's session, or (loopback-only) to the
            // page's own cookie, made now if the browser has none.
            let (binding, new_cookie) = match &viewer {
                Viewer::Admin { session, .. } => (Binding::Session(session.clone()), None),
                Viewer::Loopback => match csrf_cookie_or_new(&headers) {
                    Some((cookie, new)) => (Binding::Cookie(cookie.clone()), new.then_some(cookie)),
                    None => return server_error(),
                },
            };
            let token = state.admin_key.token(&binding);
            let mut res = render_page(&state, &viewer, &token, now);
            if let Some(cookie) = new_cookie {
                set_csrf_cookie(&state, &mut res, &cookie);
            }
            res
        }
    }
}

/// `POST /admin/login`: an admin signs in; on success, back to the page with a session.
pub async fn login_post(
    State(state): State<AdminState>,
    ClientIp(source): ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    if let Some(throttled) = users::sign_in_throttled(&state, source, now) {
        return throttled;
    }
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, &headers) {
        return refused;
    }
    if !admins_configured(&state) {
        return see_other(ADMIN);
    }
    let Ok(params) = Params::parse(&body) else {
        return PageError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is malformed",
        )
        .into_response();
    };
    let csrf_ok = match (csrf_cookie(&headers), params.get("csrf_token")) {
        (Some(cookie), Some(sent)) => ct_eq(
            sent,
            &state.admin_key.token(&Binding::Cookie(cookie.to_string())),
        ),
        _ => false,
    };
    if !csrf_ok {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the form's security token does not match; reload the page",
        )
        .into_response();
    }
    let username = params.get("username").unwrap_or_default().to_string();
    // Verified even for unknown users and non-admins, so timing does not tell them apart.
    let (user, verified) = users::check_password(
        &state,
        &username,
        params.get("password").unwrap_or_default(),
    )
    .await;
    let ok = verified
        && user
            .as_ref()
            .is_some_and(|u| u.admin && u.password_hash.is_some());
    if !ok {
        audit!(state, &meta, warn, "admin_login_failed", client: None, sub: None;
            "operator sign-in failed");
        return login_form(
            &state,
            &headers,
            &username,
            Some("Wrong user or password, or not an admin."),
        );
    }
    let Some(token) =
        state
            .sessions
            .create(&username, now, state.settings.config.session_ttl_seconds)
    else {
        return server_error();
    };
    audit!(state, &meta, info, "admin_login", client: None, sub: Some(&username);
        sub = %username, "operator signed in");
    let mut res = see_other(ADMIN);
    if let Some(v) = users::cookie(&state, &token) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `POST /admin/logout`: end the admin's session.
pub async fn logout_post(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.clock.now();
    let viewer = match authorized_post(&state, peer, &headers, &body, now) {
        Ok((viewer, _)) => viewer,
        Err(res) => return *res,
    };
    let Viewer::Admin { name, session } = viewer else {
        return see_other(ADMIN);
    };
    state.sessions.end(&session);
    audit!(state, &meta, info, "admin_logout", client: None, sub: Some(&name);
        sub = %name, "operator signed out");
    let mut res = see_other(ADMIN);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
        users::SESSION_COOKIE
    )) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// Check a Revoke post: same-site, a viewer allowed to see the page, a matching CSRF
/// token. The refusal is the response to send.
fn authorized_post(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(Viewer, Params), Box<Response>> {
    if let Some(refused) = cross_site_refusal(&state.settings.public_origin, headers) {
        return Err(Box::new(refused));
    }
    let viewer = match viewer(state, peer, headers, now) {
        Ok(v) => v,
        Err(Refused::Remote) => return Err(Box::new(remote_refusal())),
        Err(Refused::SignIn(_)) => {
            return Err(Box::new(
                PageError::new(
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "sign in as an admin first",
                )
                .into_response(),
            ));
        }
    };
    let params = Params::parse(body).map_err(|d| {
        Box::new(
            PageError::new(StatusCode::BAD_REQUEST, "invalid_request", d.to_string())
                .into_response(),
        )
    })?;
    let binding = match &viewer {
        Viewer::Admin { session, .. } => Some(Binding::Session(session.clone())),
        Viewer::Loopback => csrf_cookie(headers).map(|c| Binding::Cookie(c.to_string())),
    };
    let csrf_ok = match (binding, params.get("csrf_token")) {
        (Some(b), Some(sent)) => ct_eq(sent, &state.admin_key.token(&b)),
        _ => false,
    };
    if !csrf_ok {
        return Err(Box::new(
            PageError::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                "the form's security token does not match; reload the page",
            )
            .into_response(),
        ));
    }
    Ok((viewer, params))
}

/// An [`authorized_post`] that names what it acts on in the form field `field`. A post
/// without it is refused.
fn authorized_post_naming(
    state: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    field: &str,
) -> Result<NamedPost, Box<Response>> {
    let (viewer, params) = authorized_post(state, peer, headers, body, state.clock.now())?;
    let Some(value) = params.get(field) else {
        return Err(Box::new(
            PageError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{field} is missing"),
            )
            .into_response(),
        ));
    };
    Ok(NamedPost {
        viewer,
        target: value.to_string(),
        csrf_token: params.get("csrf_token").unwrap_or_default().to_string(),
        confirmed: params.get("confirm") == Some("yes"),
    })
}

/// A Revoke post that passed [`authorized_post_naming`].
struct NamedPost {
    /// Who posted it.
    viewer: Viewer,
    /// The id of what it revokes.
    target: String,
    /// Its (verified) CSRF token, for the confirmation form to post again.
    csrf_token: String,
    /// Whether it is the confirmation page's post (`confirm=yes`): only that one revokes.
    confirmed: bool,
}

/// The page that asks before revoking: what `what` names, and a form posting the same id
/// and CSRF token again with `confirm=yes`, or a link back.
fn confirmation(
    action: &str,
    field: &str,
    id: &str,
    csrf_token: &str,
    what: minijinja::Value,
) -> Response {
    let html = render(
        "admin_confirm.html",
        context! { action, field, id, csrf_token, what },
    );
    match html {
        Ok(html) => (StatusCode::OK, page_headers(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin confirmation template failed");
            server_error()
        }
    }
}

/// `POST /admin/grants/revoke`: revoke one grant (its refresh tokens and access tokens),
/// once confirmed; unconfirmed, the page that asks.
pub async fn revoke_grant_post(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let post = match authorized_post_naming(&state, peer, &headers, &body, "grant_id") {
        Ok(ok) => ok,
        Err(res) => return *res,
    };
    let grant = match state.store.grant(&post.target) {
        Ok(Some(g)) => g,
        Ok(None) => {
            return PageError::new(StatusCode::NOT_FOUND, "invalid_request", "no such grant")
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "admin: grant lookup failed");
            return PageError::unavailable().into_response();
        }
    };
    if !post.confirmed {
        let client_name = match state.client(&grant.client_id) {
            Ok(c) => c.and_then(|c| c.client_name),
            Err(e) => {
                tracing::error!(error = %e, "admin: client lookup failed");
                return PageError::unavailable().into_response();
            }
        };
        let what = context! {
            kind => "grant",
            sub => &grant.sub,
            client_id => &grant.client_id,
            client_name,
            scopes => grant.scopes.join(" "),
            expires => when(grant.expires_at),
            revoked => grant.revoked,
        };
        return confirmation(
            REVOKE_GRANT_PATH,
            "grant_id",
            &grant.id,
            &post.csrf_token,
            what,
        );
    }
    let viewer = post.viewer;
    // The user is asked again: a remembered approval would let the client back in without.
    let revoked = state.store.revoke_grant(&grant.id);
    // Refused on the very next MCP request, not the next sync round.
    state.sync_revocations();
    state.vault.forget(&grant.sub, state.clock.now());
    let revoked = revoked.and_then(|()| state.store.forget_consent(&grant.sub, &grant.client_id));
    if let Err(e) = revoked {
        tracing::error!(error = %e, "admin: revoking a grant failed");
        return PageError::unavailable().into_response();
    }
    audit!(state, &meta, info, "admin_grant_revoked", client: Some(&grant.client_id), sub: Some(&grant.sub);
        client_id = %grant.client_id, sub = %grant.sub, by = %viewer.name(), "grant revoked by an operator");
    see_other(ADMIN)
}

/// `POST /admin/clients/revoke`: delete a client and revoke all its grants, once
/// confirmed; unconfirmed, the page that asks.
pub async fn revoke_client_post(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let post = match authorized_post_naming(&state, peer, &headers, &body, "client_id") {
        Ok(ok) => ok,
        Err(res) => return *res,
    };
    let client_id = post.target.as_str();
    let pinned = state.settings.pinned_clients.contains_key(client_id);
    if !post.confirmed {
        let now = state.clock.now();
        let found = state.client(client_id).and_then(|c| {
            let live = state
                .store
                .live_grants(now)?
                .into_iter()
                .filter(|g| g.client_id == client_id)
                .count();
            Ok((c, live))
        });
        let (client, live) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "admin: client lookup failed");
                return PageError::unavailable().into_response();
            }
        };
        if client.is_none() && live == 0 {
            return PageError::new(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "no such client, and no grants of it",
            )
            .into_response();
        }
        let what = context! {
            kind => "client",
            client_id,
            client_name => client.and_then(|c| c.client_name),
            grants => live,
            pinned,
        };
        return confirmation(
            REVOKE_CLIENT_PATH,
            "client_id",
            client_id,
            &post.csrf_token,
            what,
        );
    }
    let viewer = post.viewer;
    // The people whose grants go: their identity-provider tokens go too.
    let people: Vec<String> = if state.providers.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .live_grants(state.clock.now())
            .map(|gs| {
                gs.into_iter()
                    .filter(|g| g.client_id == client_id)
                    .map(|g| g.sub)
                    .collect()
            })
            .unwrap_or_default()
    };
    let revoked = state.store.revoke_client(client_id);
    state.sync_revocations();
    for sub in &people {
        state.vault.forget(sub, state.clock.now());
    }
    let revoked = match revoked {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "admin: revoking a client failed");
            return PageError::unavailable().into_response();
        }
    };
    if !revoked.deleted && revoked.grants == 0 && !pinned {
        return PageError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "no such client, and no grants of it",
        )
        .into_response();
    }
    audit!(state, &meta, info, "admin_client_revoked", client: Some(client_id), sub: None;
        %client_id, grants = revoked.grants, deleted = revoked.deleted, by = %viewer.name(),
        "client revoked by an operator");
    see_other(ADMIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_depend_on_key_kind_and_binding() {
        let k = AdminKey::generate().unwrap();
        let other = AdminKey::generate().unwrap();
        let s = Binding::Session("abc".into());
        let t = k.token(&s);
        assert_eq!(t, k.token(&Binding::Session("abc".into())));
        assert_ne!(t, k.token(&Binding::Cookie("abc".into())), "kinds differ");
        assert_ne!(t, k.token(&Binding::Session("abd".into())));
        assert_ne!(t, other.token(&s), "per-process keys differ");
        assert!(!format!("{k:?}").contains(&t));
    }

    #[test]
    fn times_are_rfc3339_or_a_dash() {
        assert_eq!(when(0), "—");
        assert_eq!(when(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
