//! RFC 7662 token introspection. Only an authenticated confidential client (a resource
//! server, a service) may ask. Anything unknown, expired, revoked, rotated out or issued
//! for another audience is `{"active": false}` and nothing more (§2.2).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client_auth::{authenticated_client, presented};
use super::error::OAuthError;
use super::token::form_params;
use crate::secret::sha256_b64;
use crate::state::AppState;

/// What introspection says about `token` at `now`.
pub async fn introspect(state: &AppState, token: &str, now: u64) -> Result<Value, OAuthError> {
    let inactive = json!({ "active": false });
    let store = &state.store;
    if let Some(rt) = store
        .refresh(&sha256_b64(token))
        .map_err(OAuthError::server)?
    {
        let grant = store.grant(&rt.grant_id).map_err(OAuthError::server)?;
        return Ok(match grant {
            Some(g) if !g.revoked && g.expires_at > now && rt.rotated.is_none() => json!({
                "active": true,
                "token_type": "refresh_token",
                "scope": rt.scopes.join(" "),
                "client_id": g.client_id,
                "sub": g.sub,
                "aud": g.resource,
                "iss": state.settings.issuer,
                "exp": g.expires_at,
            }),
            _ => inactive,
        });
    }
    let Ok(claims) = state.verifier.verify(token, now).await else {
        return Ok(inactive);
    };
    if let Some(jti) = &claims.jti
        && store
            .is_access_token_revoked(jti)
            .map_err(OAuthError::server)?
    {
        return Ok(inactive);
    }
    Ok(json!({
        "active": true,
        "token_type": "Bearer",
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.sub,
        "aud": state.settings.resource,
        "iss": claims.iss,
        "exp": claims.exp,
        "jti": claims.jti,
    }))
}

/// `POST /introspect`.
pub async fn introspect_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let params = form_params(&headers, &body)?;
    let token = params
        .require("token")
        .map_err(OAuthError::InvalidRequest)?;
    let client = authenticated_client(&state, presented(&headers, &params)?).await?;
    if !client.is_confidential() {
        return Err(OAuthError::InvalidClient {
            message: "introspection needs a confidential client".into(),
            basic: headers.contains_key(header::AUTHORIZATION),
        });
    }
    let answer = introspect(&state, token, state.clock.now()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(answer)).into_response())
}
