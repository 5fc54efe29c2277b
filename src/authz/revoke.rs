//! RFC 7009 token revocation: a refresh token revokes its whole grant (the family and its
//! access tokens); an access token goes on the deny list until it expires. Unknown tokens
//! get 200, as §2.2 asks. The client authenticates as at the token endpoint. Each revocation
//! is synced into this process's in-memory view at once, so the resource server refuses the
//! token on its very next request.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::client_auth::client_and_token;
use super::error::OAuthError;
use super::state::AuthzState;
use crate::audit::{RequestMeta, audit};
use crate::secret::sha256_b64;

/// `POST /revoke`.
pub async fn revoke_post(
    State(state): State<AuthzState>,
    meta: RequestMeta,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (client, token) = client_and_token(&state, &headers, &body).await?;
    let token = token.as_str();
    let client_id = client.client_id.as_str();
    let not_yours =
        || OAuthError::UnauthorizedClient("the token was issued to another client".into());
    let store = &state.store;
    if let Some(rt) = store
        .refresh(&sha256_b64(token))
        .map_err(OAuthError::server)?
    {
        if let Some(grant) = store.grant(&rt.grant_id).map_err(OAuthError::server)? {
            if grant.client_id != client_id {
                return Err(not_yours());
            }
            store.revoke_grant(&grant.id).map_err(OAuthError::server)?;
            state.sync_revocations();
            state.vault.forget(&grant.sub, state.clock.now());
            audit!(state, &meta, info, "grant_revoked", client: Some(client_id), sub: Some(&grant.sub);
                %client_id, "refresh token revoked with its grant");
        }
    } else if let Ok(claims) = state.verifier.verify(token, state.clock.now()).await {
        if claims.client_id.as_deref() != Some(client_id) {
            return Err(not_yours());
        }
        if let Some(jti) = &claims.jti {
            store
                .revoke_access_token(jti, claims.exp)
                .map_err(OAuthError::server)?;
            state.sync_revocations();
            audit!(state, &meta, info, "access_token_revoked", client: Some(client_id), sub: Some(&claims.sub);
                %client_id, "access token revoked");
        }
    }
    Ok((StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response())
}
