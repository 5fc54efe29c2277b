//! RFC 7662 token introspection. Only an authenticated confidential client may ask. A
//! resource server the operator configured (`[[clients]]` with `introspect = true`) learns
//! about any token; any other client only about its own, since another client's token says
//! who its user is and what they granted (§4). Anything unknown, expired, revoked, rotated
//! out, issued for another audience or to another client is `{"active": false}` and nothing
//! more (§2.2).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client_auth::client_and_token;
use super::error::OAuthError;
use super::state::AuthzState;
use crate::secret::sha256_b64;
use crate::store::Client;

/// What introspection says about `token` at `now`.
pub async fn introspect(state: &AuthzState, token: &str, now: u64) -> Result<Value, OAuthError> {
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

/// Whether `client` is a resource server the operator configured to introspect any token.
fn may_introspect_any(state: &AuthzState, client: &Client) -> bool {
    client.pinned
        && state
            .settings
            .config
            .clients
            .iter()
            .any(|c| c.introspect && c.client_id == client.client_id)
}

/// `POST /introspect`.
pub async fn introspect_post(
    State(state): State<AuthzState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (client, token) = client_and_token(&state, &headers, &body).await?;
    if !client.is_confidential() {
        return Err(OAuthError::InvalidClient {
            message: "introspection needs a confidential client".into(),
            basic: headers.contains_key(header::AUTHORIZATION),
        });
    }
    let answer = introspect(&state, &token, state.clock.now()).await?;
    let answer = if may_introspect_any(&state, &client)
        || answer["client_id"] == client.client_id.as_str()
    {
        answer
    } else {
        json!({ "active": false })
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(answer)).into_response())
}
