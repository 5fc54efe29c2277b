//! RFC 9728 protected resource metadata: served at the root and path-suffixed
//! well-known URLs, naming the issuer exactly as the authorization server metadata does.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;

use super::state::ResourceState;

/// The metadata document.
#[derive(Debug, Serialize)]
pub struct ProtectedResourceMetadata {
    /// The canonical resource URL.
    pub resource: String,
    /// Issuers whose tokens are accepted.
    pub authorization_servers: Vec<String>,
    /// Scopes a client may ask for (no `offline_access`).
    pub scopes_supported: Vec<String>,
    /// Only the Authorization header.
    pub bearer_methods_supported: Vec<&'static str>,
    /// Where the signing keys are, when we sign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// A name for consent screens.
    pub resource_name: &'static str,
}

/// `GET /.well-known/oauth-protected-resource[<route path>]`.
pub async fn protected_resource_get(State(state): State<ResourceState>) -> impl IntoResponse {
    let s = &state.settings;
    axum::Json(ProtectedResourceMetadata {
        resource: state.route.resource.clone(),
        authorization_servers: vec![crate::tokens::sources::authorization_server(s)],
        scopes_supported: s.config.scopes.supported.clone(),
        bearer_methods_supported: vec!["header"],
        jwks_uri: (s.config.auth_mode == crate::config::AuthMode::Builtin)
            .then(|| format!("{}/.well-known/jwks.json", s.issuer)),
        resource_name: "MCP server behind mcp-oauth-gateway",
    })
}
