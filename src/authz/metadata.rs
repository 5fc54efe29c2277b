//! RFC 8414 authorization server metadata, also served as OIDC discovery.
//! The issuer is exactly the public URL, and every endpoint is under it, so reachable
//! through the proxy.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::Serialize;

use super::state::AuthzState;
use crate::config::Config;
use crate::web::routes;

const CLIENT_AUTH: [&str; 3] = ["none", "client_secret_basic", "client_secret_post"];

/// The metadata document.
#[derive(Debug, Serialize)]
pub struct AuthorizationServerMetadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    registration_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    jwks_uri: String,
    scopes_supported: Vec<String>,
    response_types_supported: [&'static str; 1],
    response_modes_supported: [&'static str; 1],
    grant_types_supported: Vec<&'static str>,
    token_endpoint_auth_methods_supported: [&'static str; 3],
    revocation_endpoint_auth_methods_supported: [&'static str; 3],
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
    code_challenge_methods_supported: [&'static str; 1],
    authorization_response_iss_parameter_supported: bool,
    client_id_metadata_document_supported: bool,
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: Vec<String>,
}

/// The grants a client can actually be given: `client_credentials` only when a configured
/// client may use it or an initial access token lets a registration ask for it, since an
/// anonymous registration cannot.
fn grant_types(config: &Config) -> Vec<&'static str> {
    let mut grants = vec!["authorization_code", "refresh_token"];
    let configured = config.clients.iter().any(|c| {
        c.grant_types
            .iter()
            .flatten()
            .any(|g| g == "client_credentials")
    });
    if configured || !config.initial_access_tokens.is_empty() {
        grants.push("client_credentials");
    }
    grants
}

/// `GET /.well-known/oauth-authorization-server` and `/.well-known/openid-configuration`.
pub async fn authorization_server_get(State(state): State<AuthzState>) -> impl IntoResponse {
    let issuer = &state.settings.issuer;
    let at = |path: &str| format!("{issuer}{path}");
    axum::Json(AuthorizationServerMetadata {
        issuer: issuer.clone(),
        authorization_endpoint: at(routes::AUTHORIZE),
        token_endpoint: at(routes::TOKEN),
        registration_endpoint: at(routes::REGISTER),
        revocation_endpoint: at(routes::REVOKE),
        introspection_endpoint: at(routes::INTROSPECT),
        jwks_uri: at("/.well-known/jwks.json"),
        scopes_supported: state.settings.config.scopes.supported.clone(),
        response_types_supported: ["code"],
        response_modes_supported: ["query"],
        grant_types_supported: grant_types(&state.settings.config),
        token_endpoint_auth_methods_supported: CLIENT_AUTH,
        revocation_endpoint_auth_methods_supported: CLIENT_AUTH,
        introspection_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
        ],
        code_challenge_methods_supported: ["S256"],
        authorization_response_iss_parameter_supported: true,
        client_id_metadata_document_supported: state.cimd.is_some(),
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: vec![format!("{:?}", state.keys.current().alg)],
    })
}
