//! The JWKS listener (:3004): `GET /jwks.json` (and `/.well-known/jwks.json`) serves the
//! public signing keys (RFC 7517 §5).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use std::sync::Arc;

use super::keys::KeyRing;
use crate::web::routes;

/// The JWKS router.
pub fn router(keys: Arc<KeyRing>) -> Router {
    Router::new()
        .route(routes::JWKS, get(jwks_get))
        .route(routes::JWKS_WELL_KNOWN, get(jwks_get))
        .with_state(keys)
}

/// The published key set. Cacheable for a few minutes: a verifier that meets an unknown
/// `kid` refetches anyway.
pub async fn jwks_get(State(keys): State<Arc<KeyRing>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(keys.jwks()),
    )
}
