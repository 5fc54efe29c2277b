//! Redirect URI registration checks and matching. Input: registered URI, a NUL byte, the
//! presented URI. Invariants: nothing panics; a URI that registration refuses is never
//! matched by a different string; a presented URI that matches a registered one differs
//! from it at most in the port, keeps its host, and never carries a fragment or user
//! information.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::web::uris::{
    canonical_resource, redirect_uri_matches, validate_redirect_uri,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (registered, presented) = text.split_once('\0').unwrap_or((text, text));
    let _ = canonical_resource(registered);
    let valid = validate_redirect_uri(registered).is_ok();
    if !redirect_uri_matches(registered, presented) || registered == presented {
        return;
    }
    // A loose match only ever happens for a valid loopback registration.
    assert!(valid, "matched an unregistrable URI {registered:?}");
    let r = url::Url::parse(registered).expect("matched, so it parses");
    let p = url::Url::parse(presented).expect("matched, so it parses");
    assert_eq!(r.host(), p.host());
    assert_eq!(r.path(), p.path());
    assert_eq!(r.query(), p.query());
    assert!(p.fragment().is_none() && !presented.contains('#'));
    assert!(p.username().is_empty() && p.password().is_none());
});
