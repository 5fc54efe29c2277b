//! The JWKS listener (:3004): `GET /jwks.json` (and `/.well-known/jwks.json`) serves the
//! public signing keys (RFC 7517 §5).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// The JWKS router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/jwks.json", get(jwks_get))
        .route("/.well-known/jwks.json", get(jwks_get))
        .with_state(state)
}

/// The published key set. Cacheable for a few minutes: a verifier that meets an unknown
/// `kid` refetches anyway.
pub async fn jwks_get(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(state.keys.jwks()),
    )
}
