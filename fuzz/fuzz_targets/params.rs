//! The authorization and token endpoints' parameter parsing: any bytes give a parse or a
//! clear error, never a panic; what parses keeps each value exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::authz::params::{Params, split_scopes};
use mcp_oauth_gateway::authz::pkce;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = Params::parse(data) else {
        return;
    };
    for name in [
        "client_id",
        "redirect_uri",
        "scope",
        "code_verifier",
        "code_challenge",
    ] {
        let _ = params.require(name);
    }
    if let Some(scope) = params.get("scope") {
        let scopes = split_scopes(scope);
        // Set semantics: no scope twice, none empty.
        for (i, s) in scopes.iter().enumerate() {
            assert!(!s.is_empty());
            assert!(!scopes[i + 1..].contains(s));
        }
    }
    if let (Some(verifier), Some(challenge)) =
        (params.get("code_verifier"), params.get("code_challenge"))
    {
        // A malformed verifier never verifies.
        if !pkce::is_well_formed(verifier) {
            assert!(!pkce::verify_s256(verifier, challenge));
        }
    }
});
