//! Bearer token verification and JSON-RPC scope policy. Input: a token, a NUL byte, a
//! JSON-RPC body. Invariants: nothing panics; a token that verifies names our issuer and
//! audience and is not expired; the policy never allows a `tools/call` of a write tool to a
//! read-only grant.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::config::ScopeConfig;
use mcp_oauth_gateway::resource::policy::ScopePolicy;
use mcp_oauth_gateway::tokens::verify::{Keys, Verifier};

const ISSUER: &str = "https://gw.example";
const AUDIENCE: &str = "https://gw.example/mcp";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
    policy: ScopePolicy,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime"),
        verifier: Verifier::new(
            vec![ISSUER.into()],
            AUDIENCE.into(),
            60,
            Keys::Hmac(jsonwebtoken::DecodingKey::from_secret(b"fuzzing secret")),
        ),
        policy: ScopePolicy::from_config(&ScopeConfig::default()),
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (token, body) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(token) = std::str::from_utf8(token)
        && let Ok(claims) = f.runtime.block_on(f.verifier.verify(token, NOW))
    {
        assert_eq!(claims.iss, ISSUER);
        assert!(claims.exp + 60 >= NOW);
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let read_only: BTreeSet<String> = f.policy.effective(["mcp:read"]);
    if f.policy.missing(&body, &read_only).is_none() {
        let messages = match &body {
            serde_json::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for m in messages {
            let method = m.get("method").and_then(serde_json::Value::as_str);
            let tool = m
                .pointer("/params/name")
                .and_then(serde_json::Value::as_str);
            if method == Some("tools/call") && tool == Some("add_note") {
                panic!("a read-only grant was allowed to call a write tool: {m}");
            }
        }
    }
});
