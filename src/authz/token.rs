//! The token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §6; OAuth 2.1 §4.1.3, §4.3): the
//! authorization code grant with PKCE, the refresh token grant with rotation, and the
//! client credentials grant for confidential clients. Every answer carries
//! `Cache-Control: no-store`.

use axum::body::Bytes;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::client_auth::{authenticated_client, presented};
use super::error::OAuthError;
use super::params::{Params, form_params, split_scopes};
use super::pkce;
use super::state::AuthzState;
use crate::audit::{RequestMeta, audit};
use crate::secret::{random_token, sha256_b64};
use crate::store::{
    AuthCode, Client, CodeExchange, CodeIssue, CodeRedemption, Grant, RefreshRotation,
    RefreshToken, RotateOutcome,
};
use crate::tokens::issue::{AccessClaims, sign};
use crate::web::client_ip::ClientIp;
use crate::web::uris::canonical_resource;

/// A parsed token request, one variant per grant type. The client is authenticated
/// separately ([`super::client_auth`]).
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRequest {
    /// `grant_type=authorization_code`.
    AuthorizationCode {
        /// The code.
        code: String,
        /// Must equal the one of the authorization request.
        redirect_uri: String,
        /// PKCE verifier.
        code_verifier: String,
        /// RFC 8707 resource, optional.
        resource: Option<String>,
    },
    /// `grant_type=refresh_token`.
    RefreshToken {
        /// The refresh token.
        refresh_token: String,
        /// Narrower scope, optional.
        scope: Option<String>,
        /// RFC 8707 resource, optional.
        resource: Option<String>,
    },
    /// `grant_type=client_credentials`.
    ClientCredentials {
        /// Requested scope, optional.
        scope: Option<String>,
        /// RFC 8707 resource, optional.
        resource: Option<String>,
    },
}

impl TokenRequest {
    /// Parse form parameters.
    pub fn from_params(p: &Params) -> Result<Self, OAuthError> {
        let need = |name| {
            p.require(name)
                .map(str::to_string)
                .map_err(OAuthError::from)
        };
        let opt = |name| p.get(name).map(str::to_string);
        match p.get("grant_type") {
            Some("authorization_code") => Ok(Self::AuthorizationCode {
                code: need("code")?,
                redirect_uri: need("redirect_uri")?,
                code_verifier: need("code_verifier")?,
                resource: opt("resource"),
            }),
            Some("refresh_token") => Ok(Self::RefreshToken {
                refresh_token: need("refresh_token")?,
                scope: opt("scope"),
                resource: opt("resource"),
            }),
            Some("client_credentials") => Ok(Self::ClientCredentials {
                scope: opt("scope"),
                resource: opt("resource"),
            }),
            Some(other) => Err(OAuthError::UnsupportedGrantType(format!(
                "grant_type `{other}` is not supported"
            ))),
            None => Err(OAuthError::InvalidRequest("grant_type is missing".into())),
        }
    }

    /// The grant type, as clients register it.
    pub fn grant_type(&self) -> &'static str {
        match self {
            Self::AuthorizationCode { .. } => "authorization_code",
            Self::RefreshToken { .. } => "refresh_token",
            Self::ClientCredentials { .. } => "client_credentials",
        }
    }
}

/// The successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: u64,
    /// The new refresh token (none for client credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scopes, exactly those in the JWT.
    pub scope: String,
}

fn rng() -> Result<String, OAuthError> {
    random_token(32)
        .ok_or_else(|| OAuthError::server(std::io::Error::other("random source failed")))
}

fn check_resource(requested: Option<&str>, bound: &str) -> Result<(), OAuthError> {
    match requested {
        None => Ok(()),
        Some(r) if canonical_resource(r).as_deref() == Some(bound) => Ok(()),
        Some(_) => Err(OAuthError::InvalidTarget(
            "resource does not match the one this grant is bound to".into(),
        )),
    }
}

/// Sign an access token under the `jti` chosen for it.
fn sign_access(
    state: &AuthzState,
    sub: &str,
    client_id: &str,
    resource: &str,
    scopes: &[String],
    jti: &str,
    now: u64,
) -> Result<String, OAuthError> {
    // A person who signed in through an identity provider: their email and name travel in
    // the token, for `whoami` and the upstream's identity headers.
    let person = if state.providers.is_empty() {
        None
    } else {
        state.store.identity(sub).map_err(OAuthError::server)?
    };
    let claims = AccessClaims {
        email: person.as_ref().and_then(|p| p.email.clone()),
        name: person.and_then(|p| p.name),
        iss: state.settings.issuer.clone(),
        sub: sub.to_string(),
        aud: resource.to_string(),
        exp: now + state.settings.config.access_token_ttl,
        iat: now,
        nbf: now,
        jti: jti.to_string(),
        scope: scopes.join(" "),
        client_id: client_id.to_string(),
    };
    sign(&state.keys.current(), &claims).map_err(OAuthError::server)
}

/// Sign an access token and, when it belongs to a grant, record its `jti` under it so
/// revoking the grant revokes the token.
fn mint(
    state: &AuthzState,
    sub: &str,
    client_id: &str,
    resource: &str,
    grant_id: Option<&str>,
    scopes: &[String],
    now: u64,
) -> Result<(String, u64), OAuthError> {
    let ttl = state.settings.config.access_token_ttl;
    let jti = rng()?;
    let jwt = sign_access(state, sub, client_id, resource, scopes, &jti, now)?;
    if let Some(grant_id) = grant_id {
        state
            .store
            .add_access_token(grant_id, &jti, now + ttl)
            .map_err(OAuthError::server)?;
    }
    Ok((jwt, ttl))
}

fn for_grant(
    state: &AuthzState,
    grant: &Grant,
    scopes: &[String],
    now: u64,
) -> Result<(String, u64), OAuthError> {
    mint(
        state,
        &grant.sub,
        &grant.client_id,
        &grant.resource,
        Some(&grant.id),
        scopes,
        now,
    )
}

/// Scopes a client may obtain by client credentials: those its entry or registration
/// names. A configured (`[[clients]]`) entry without `scope` keeps its documented default,
/// all offered; a registered client that named no scope gets none (closed by default).
fn client_credentials_scopes(
    state: &AuthzState,
    client: &Client,
) -> Result<Vec<String>, OAuthError> {
    match &client.scope {
        Some(s) => Ok(split_scopes(s)),
        None if client.pinned => Ok(state.settings.config.scopes.supported.clone()),
        None => Err(OAuthError::InvalidScope(
            "this client registered no scope, so client credentials give it none; register it with a `scope`"
                .into(),
        )),
    }
}

/// Narrow `scopes` to what the client registered (or its entry names), if it did: a
/// client's `scope` bounds every grant it gets. Empty after narrowing: `invalid_scope`.
pub fn within_client_scope(
    client: &Client,
    mut scopes: Vec<String>,
) -> Result<Vec<String>, OAuthError> {
    if let Some(registered) = &client.scope {
        let registered = split_scopes(registered);
        scopes.retain(|s| registered.contains(s));
        if scopes.is_empty() {
            return Err(OAuthError::InvalidScope(
                "none of the scopes is within the client's registered scope".into(),
            ));
        }
    }
    Ok(scopes)
}

/// What the client presents with a code, besides the code.
struct CodeProof<'a> {
    redirect_uri: &'a str,
    code_verifier: &'a str,
    resource: Option<&'a str>,
}

/// The checks a code must pass (issued to this client, for this redirect URI, with this
/// verifier, for this resource), and the grant it starts.
fn check_code(
    state: &AuthzState,
    client: &Client,
    code: &AuthCode,
    proof: &CodeProof<'_>,
    now: u64,
) -> Result<Grant, OAuthError> {
    if code.client_id != client.client_id {
        return Err(OAuthError::InvalidGrant(
            "the code was issued to another client".into(),
        ));
    }
    if code.redirect_uri != proof.redirect_uri {
        return Err(OAuthError::InvalidGrant(
            "redirect_uri does not match the authorization request".into(),
        ));
    }
    if !pkce::verify_s256(proof.code_verifier, &code.code_challenge) {
        return Err(OAuthError::InvalidGrant(
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    check_resource(proof.resource, &code.resource)?;
    // The code's scopes were bounded at /authorize; bound them again in case the client's
    // entry changed since.
    let scopes = within_client_scope(client, code.scopes.clone())?;
    Ok(Grant {
        id: code.grant_id.clone(),
        client_id: client.client_id.clone(),
        sub: code.sub.clone(),
        scopes,
        resource: code.resource.clone(),
        expires_at: now + state.settings.config.refresh_token_ttl,
        revoked: false,
        created_at: now,
    })
}

/// Exchange a code. The code is used up in the same store step that stores the grant, its
/// refresh token and the access token's `jti`: a failure on the way leaves the code
/// redeemable instead of spent with nothing issued. A code that fails a check is left as
/// it was too (PKCE, not single use, is what stops someone else who holds it).
fn authorization_code(
    state: &AuthzState,
    client: &Client,
    (code, redirect_uri, code_verifier, resource): (String, String, String, Option<String>),
    now: u64,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    if !pkce::is_well_formed(&code_verifier) {
        return Err(OAuthError::InvalidRequest(
            "code_verifier must be 43-128 unreserved characters".into(),
        ));
    }
    let proof = CodeProof {
        redirect_uri: &redirect_uri,
        code_verifier: &code_verifier,
        resource: resource.as_deref(),
    };
    let refresh = rng()?;
    let jti = rng()?;
    let mut refusal = None;
    let mut check = |code: &AuthCode| match check_code(state, client, code, &proof, now) {
        Ok(grant) => Some(CodeIssue {
            refresh_hash: sha256_b64(&refresh),
            refresh: RefreshToken {
                grant_id: grant.id.clone(),
                scopes: grant.scopes.clone(),
                rotated: None,
            },
            access_jti: jti.clone(),
            access_exp: now + state.settings.config.access_token_ttl,
            grant,
        }),
        Err(e) => {
            refusal = Some(e);
            None
        }
    };
    let redemption = state
        .store
        .redeem_code(CodeExchange {
            code_hash: &sha256_b64(&code),
            now,
            check: &mut check,
        })
        .map_err(OAuthError::server)?;
    let grant = match redemption {
        CodeRedemption::Issued(issue) => issue.grant,
        CodeRedemption::Refused => {
            return Err(refusal.unwrap_or_else(|| {
                OAuthError::server(std::io::Error::other("code refused for no reason"))
            }));
        }
        CodeRedemption::Unknown => {
            return Err(OAuthError::InvalidGrant(
                "the code is invalid or expired".into(),
            ));
        }
        CodeRedemption::Replayed { grant_id } => {
            state.metrics.replay("code");
            audit!(state, meta, warn, "code_replayed", client: Some(&client.client_id), sub: None;
                client_id = %client.client_id, "authorization code replayed; revoking its grant");
            state
                .store
                .revoke_grant(&grant_id)
                .map_err(OAuthError::server)?;
            state.sync_revocations();
            return Err(OAuthError::InvalidGrant(
                "the code was already used; tokens issued from it are revoked".into(),
            ));
        }
    };
    let signed = sign_access(
        state,
        &grant.sub,
        &grant.client_id,
        &grant.resource,
        &grant.scopes,
        &jti,
        now,
    );
    let access_token = match signed {
        Ok(token) => token,
        Err(e) => {
            // Stored but never handed out: revoke the grant rather than leave it live.
            if let Err(store) = state.store.revoke_grant(&grant.id) {
                tracing::error!(error = %store, "could not revoke a grant whose token was not signed");
            }
            state.sync_revocations();
            return Err(e);
        }
    };
    audit!(state, meta, info, "code_redeemed", client: Some(&grant.client_id), sub: Some(&grant.sub);
        client_id = %grant.client_id, sub = %grant.sub, scopes = %grant.scopes.join(" "), "tokens issued for code");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: state.settings.config.access_token_ttl,
        refresh_token: Some(refresh),
        scope: grant.scopes.join(" "),
    })
}

fn refresh_token(
    state: &AuthzState,
    client: &Client,
    (refresh_token, scope, resource): (String, Option<String>, Option<String>),
    now: u64,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    let invalid =
        || OAuthError::InvalidGrant("the refresh token is invalid, expired or revoked".into());
    let old_hash = sha256_b64(&refresh_token);
    let old = state
        .store
        .refresh(&old_hash)
        .map_err(OAuthError::server)?
        .ok_or_else(invalid)?;
    let grant = state
        .store
        .grant(&old.grant_id)
        .map_err(OAuthError::server)?
        .filter(|g| !g.revoked && g.expires_at > now)
        .ok_or_else(invalid)?;
    if grant.client_id != client.client_id {
        return Err(OAuthError::InvalidGrant(
            "the refresh token was issued to another client".into(),
        ));
    }
    let scopes = match scope.as_deref() {
        None => old.scopes.clone(),
        Some(s) => {
            let asked = split_scopes(s);
            if let Some(extra) = asked.iter().find(|s| !old.scopes.contains(s)) {
                return Err(OAuthError::InvalidScope(format!(
                    "scope `{extra}` was not granted"
                )));
            }
            asked
        }
    };
    check_resource(resource.as_deref(), &grant.resource)?;
    if state.vault.lost(&grant.sub) {
        // Their provider tokens were dropped (a revocation, a sign-out): the upstream would
        // get no token for them, so they must go through the provider again.
        return Err(OAuthError::InvalidGrant(
            "the sign-in at the identity provider has ended; authorize again".into(),
        ));
    }
    let refresh = rng()?;
    let successor = RefreshToken {
        grant_id: grant.id.clone(),
        scopes: old.scopes.clone(),
        rotated: None,
    };
    let rotation = RefreshRotation {
        old_hash: &old_hash,
        new_hash: sha256_b64(&refresh),
        new_token: successor,
        now,
        grace: state.settings.config.refresh_grace_seconds,
    };
    match state
        .store
        .rotate_refresh(rotation)
        .map_err(OAuthError::server)?
    {
        RotateOutcome::Rotated(grant) => {
            let (access_token, expires_in) = for_grant(state, &grant, &scopes, now)?;
            audit!(state, meta, info, "refreshed", client: Some(&grant.client_id), sub: Some(&grant.sub);
                client_id = %grant.client_id, sub = %grant.sub, "tokens refreshed");
            Ok(TokenResponse {
                access_token,
                token_type: "Bearer",
                expires_in,
                refresh_token: Some(refresh),
                scope: scopes.join(" "),
            })
        }
        RotateOutcome::Replay => {
            // The family was revoked in the rotation: its access tokens stop here now.
            state.sync_revocations();
            state.vault.forget(&grant.sub, state.clock.now());
            state.metrics.replay("refresh_token");
            audit!(state, meta, warn, "refresh_replayed", client: Some(&client.client_id), sub: None;
                client_id = %client.client_id, "refresh token replayed; family revoked");
            Err(OAuthError::InvalidGrant(
                "the refresh token was already used; the grant is revoked".into(),
            ))
        }
        RotateOutcome::Invalid => Err(invalid()),
    }
}

fn client_credentials(
    state: &AuthzState,
    client: &Client,
    (scope, resource): (Option<String>, Option<String>),
    now: u64,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    if !client.is_confidential() {
        return Err(OAuthError::UnauthorizedClient(
            "client_credentials needs a confidential client".into(),
        ));
    }
    let allowed = client_credentials_scopes(state, client)?;
    let scopes = match scope.as_deref() {
        None => allowed,
        Some(s) => {
            let asked = split_scopes(s);
            if let Some(extra) = asked.iter().find(|s| !allowed.contains(s)) {
                return Err(OAuthError::InvalidScope(format!(
                    "scope `{extra}` is not allowed for this client"
                )));
            }
            asked
        }
    };
    // A client names the resource it wants (one of the routes); none: the first.
    let ours = match resource.as_deref().and_then(canonical_resource) {
        Some(r) if state.settings.serves(&r) => r,
        Some(_) => {
            return Err(OAuthError::InvalidTarget(
                "resource is not served by this authorization server".into(),
            ));
        }
        None => state.settings.resource.clone(),
    };
    check_resource(resource.as_deref(), &ours)?;
    let ours = &ours;
    let (access_token, expires_in) = mint(
        state,
        &client.client_id,
        &client.client_id,
        ours,
        None,
        &scopes,
        now,
    )?;
    audit!(state, meta, info, "client_credentials_issued", client: Some(&client.client_id), sub: Some(&client.client_id);
        client_id = %client.client_id, scopes = %scopes.join(" "), "token issued for client credentials");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token: None,
        scope: scopes.join(" "),
    })
}

/// Run a token request for an authenticated client at time `now`; `meta` is where it came
/// from, for the security events it causes.
pub fn exchange(
    state: &AuthzState,
    client: &Client,
    req: TokenRequest,
    now: u64,
    meta: &RequestMeta,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = req.grant_type();
    if !client.grant_types.iter().any(|g| g == grant_type) {
        return Err(OAuthError::UnauthorizedClient(format!(
            "this client is not registered for {grant_type}"
        )));
    }
    let res = match req {
        TokenRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
            resource,
        } => authorization_code(
            state,
            client,
            (code, redirect_uri, code_verifier, resource),
            now,
            meta,
        ),
        TokenRequest::RefreshToken {
            refresh_token: t,
            scope,
            resource,
        } => refresh_token(state, client, (t, scope, resource), now, meta),
        TokenRequest::ClientCredentials { scope, resource } => {
            client_credentials(state, client, (scope, resource), now, meta)
        }
    }?;
    state
        .store
        .touch_client(&client.client_id, now)
        .map_err(OAuthError::server)?;
    state.metrics.issued(grant_type);
    Ok(res)
}

/// `POST /token`.
pub async fn token_post(
    State(state): State<AuthzState>,
    ClientIp(source): ClientIp,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    state
        .token_limiter
        .check(source, state.clock.now())
        .map_err(OAuthError::TooManyRequests)?;
    let params = form_params(&headers, &body)?;
    let req = TokenRequest::from_params(&params)?;
    let client = authenticated_client(&state, presented(&headers, &params)?).await?;
    let now = state.clock.now();
    let res = exchange(&state, &client, req, now, &meta)?;
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(res),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_grant_and_refuses_the_rest() {
        let p =
            Params::parse(b"grant_type=authorization_code&code=c&redirect_uri=r&code_verifier=v")
                .unwrap();
        assert!(matches!(
            TokenRequest::from_params(&p),
            Ok(TokenRequest::AuthorizationCode { .. })
        ));
        let p = Params::parse(b"grant_type=refresh_token&refresh_token=t&scope=mcp:read").unwrap();
        assert!(matches!(
            TokenRequest::from_params(&p),
            Ok(TokenRequest::RefreshToken { scope: Some(_), .. })
        ));
        let p = Params::parse(b"grant_type=client_credentials").unwrap();
        assert!(matches!(
            TokenRequest::from_params(&p),
            Ok(TokenRequest::ClientCredentials { .. })
        ));
        let p = Params::parse(b"grant_type=password&username=u").unwrap();
        assert_eq!(
            TokenRequest::from_params(&p).unwrap_err().error_code(),
            "unsupported_grant_type"
        );
        let p = Params::parse(b"grant_type=authorization_code&code=c&code_verifier=v").unwrap();
        assert_eq!(
            TokenRequest::from_params(&p).unwrap_err().error_code(),
            "invalid_request"
        );
        let p = Params::parse(b"code=c").unwrap();
        assert_eq!(
            TokenRequest::from_params(&p).unwrap_err().error_code(),
            "invalid_request"
        );
    }

    #[test]
    fn resource_binding() {
        assert!(check_resource(None, "http://h/mcp").is_ok());
        assert!(check_resource(Some("http://H/mcp/"), "http://h/mcp").is_ok());
        assert_eq!(
            check_resource(Some("http://x/mcp"), "http://h/mcp")
                .unwrap_err()
                .error_code(),
            "invalid_target"
        );
    }
}
