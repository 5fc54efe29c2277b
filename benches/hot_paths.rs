//! Criterion benchmarks of the gateway's per-request hot paths (issue 6):
//! token validation (cached and uncached key lookup, ES256 and RS256), token signing,
//! PKCE verification, the scope-policy decision on a tools/call body, and JSON-RPC body
//! parsing.
//!
//! `cargo bench --bench hot_paths` (add a filter such as `-- verify` to run a subset).
//! Measurement times are kept short so the whole run stays within a couple of minutes on a
//! 2-core machine; see BENCHMARKS.md for the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode};
use mcp_oauth_gateway::authz::pkce::verify_s256;
use mcp_oauth_gateway::config::{ScopeConfig, SigningAlg};
use mcp_oauth_gateway::resource::policy::ScopePolicy;
use mcp_oauth_gateway::tokens::issue::{AccessClaims, sign};
use mcp_oauth_gateway::tokens::keys::SigningKey;
use mcp_oauth_gateway::tokens::verify::{JwksCache, JwksFetcher, Keys, Verifier};
use serde_json::Value;

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "http://127.0.0.1:3002";
const RESOURCE: &str = "http://127.0.0.1:3002/mcp";

/// A typical tools/call body, as an MCP client sends it.
const TOOLS_CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from the benchmark"},"_meta":{"progressToken":42}}}"#;

/// Drive a future that never waits (the in-process JWKS fetcher is always ready) to its
/// end without a runtime, so the figures hold no executor overhead.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the future was expected to complete without waiting"),
    }
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: "local-user".into(),
        aud: RESOURCE.into(),
        exp: NOW + 3600,
        iat: NOW,
        nbf: NOW,
        jti: "0123456789abcdef0123456789abcdef".into(),
        scope: "mcp:read mcp:write".into(),
        client_id: "b1f0c1d2-3e4f-5a6b-7c8d-9e0f1a2b3c4d".into(),
        email: None,
        name: None,
    }
}

/// A verifier over `key`'s JWKS, fetched in-process as the gateway's own state does.
/// `ttl = 0, min_refetch = 0` makes every lookup a cache miss (a refetch and a JWK parse).
fn verifier(key: &Arc<SigningKey>, ttl: u64, min_refetch: u64) -> Verifier {
    let published = key.clone();
    let fetch: JwksFetcher = Arc::new(move || {
        let set: JwkSet = published.jwks();
        Box::pin(async move { Ok(set) })
    });
    Verifier::new(
        vec![ISSUER.into()],
        RESOURCE.into(),
        10,
        Keys::Jwks(JwksCache::new(fetch, ttl, min_refetch)),
    )
}

fn bench_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for (name, alg) in [("es256", SigningAlg::ES256), ("rs256", SigningAlg::RS256)] {
        let key = Arc::new(SigningKey::generate(alg).unwrap());
        let token = sign(&key, &claims()).unwrap();

        // Cached: the gateway's steady state (the JWKS cache is warm after the first call).
        let warm = verifier(&key, 300, 5);
        ready(warm.verify(&token, NOW)).unwrap();
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| ready(warm.verify(black_box(&token), black_box(NOW))).unwrap())
        });

        // Uncached: every call refetches the key set and parses the JWK into a key.
        let cold = verifier(&key, 0, 0);
        g.bench_function(format!("{name}/uncached_refetch"), |b| {
            b.iter(|| ready(cold.verify(black_box(&token), black_box(NOW))).unwrap())
        });

        // Where the time goes: the header alone, turning the JWK into a key (what a cache
        // miss adds), and jsonwebtoken's signature check plus claims parse without our
        // cache and claim checks around it.
        g.bench_function(format!("{name}/part_decode_header"), |b| {
            b.iter(|| jsonwebtoken::decode_header(black_box(&token)).unwrap())
        });
        g.bench_function(format!("{name}/part_jwk_to_key"), |b| {
            b.iter(|| DecodingKey::from_jwk(black_box(&key.jwk)).unwrap())
        });
        let decoding = DecodingKey::from_jwk(&key.jwk).unwrap();
        let mut validation = Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        g.bench_function(format!("{name}/part_signature_and_claims"), |b| {
            b.iter(|| decode::<Value>(black_box(&token), &decoding, &validation).unwrap())
        });

        if alg == SigningAlg::ES256 {
            bench_raw_es256(&mut g, &key, &token);
        }

        // Uncached, worst case: a brand-new cache (and verifier) per token.
        g.bench_function(format!("{name}/uncached_fresh_cache"), |b| {
            b.iter(|| {
                let v = verifier(&key, 300, 5);
                ready(v.verify(black_box(&token), black_box(NOW))).unwrap()
            })
        });
    }
    g.finish();
}

/// The bare ECDSA P-256 check under the JWT: with the public key parsed on every call (what
/// jsonwebtoken does for each token) and with a key parsed once.
fn bench_raw_es256(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    key: &SigningKey,
    token: &str,
) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey, UnparsedPublicKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = serde_json::to_value(&key.jwk).unwrap();
    let coord = |c: &str| URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap();
    let mut point = vec![4u8];
    point.extend(coord("x"));
    point.extend(coord("y"));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let unparsed = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.clone());
    unparsed.verify(input.as_bytes(), &sig).unwrap();
    g.bench_function("es256/part_raw_verify_key_parsed_each_call", |b| {
        b.iter(|| {
            unparsed
                .verify(black_box(input.as_bytes()), black_box(&sig))
                .unwrap()
        })
    });
    let parsed = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).unwrap();
    g.bench_function("es256/part_raw_verify_key_parsed_once", |b| {
        b.iter(|| {
            parsed
                .verify_sig(black_box(input.as_bytes()), black_box(&sig))
                .unwrap()
        })
    });
}

fn bench_sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("sign");
    for (name, alg) in [("es256", SigningAlg::ES256), ("rs256", SigningAlg::RS256)] {
        let key = SigningKey::generate(alg).unwrap();
        let claims = claims();
        g.bench_function(name, |b| {
            b.iter(|| sign(black_box(&key), black_box(&claims)).unwrap())
        });
    }
    g.finish();
}

fn bench_pkce(c: &mut Criterion) {
    // The challenge computed independently:
    //   printf %s "$VERIFIER" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXFG6jEBk";
    let challenge = "aR08vLrMr-Hy7JDIQ78iMyVuRP4ZwjqTrMzHmJL04PM";
    assert!(verify_s256(verifier, challenge));
    let long = "a".repeat(128);
    c.bench_function("pkce/verify_s256_43", |b| {
        b.iter(|| verify_s256(black_box(verifier), black_box(challenge)))
    });
    c.bench_function("pkce/verify_s256_128", |b| {
        b.iter(|| verify_s256(black_box(&long), black_box(challenge)))
    });
}

fn bench_policy(c: &mut Criterion) {
    let policy = ScopePolicy::from_config(&ScopeConfig::default());
    let body: Value = serde_json::from_slice(TOOLS_CALL).unwrap();
    let granted = "mcp:read mcp:write";
    let effective = policy.effective(granted.split_ascii_whitespace());
    assert_eq!(policy.missing(&body, &effective), None);
    let read_only = policy.effective(["mcp:read"]);
    let write_body: Value = serde_json::from_slice(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"x"}}}"#,
    )
    .unwrap();
    assert!(policy.missing(&write_body, &read_only).is_some());

    let mut g = c.benchmark_group("policy");
    g.bench_function("missing/tools_call_allowed", |b| {
        b.iter(|| policy.missing(black_box(&body), black_box(&effective)))
    });
    g.bench_function("missing/tools_call_refused", |b| {
        b.iter(|| policy.missing(black_box(&write_body), black_box(&read_only)))
    });
    // What the bearer layer does per request: expand the granted scopes, then decide.
    g.bench_function("effective_plus_missing", |b| {
        b.iter(|| {
            let eff = policy.effective(black_box(granted).split_ascii_whitespace());
            policy.missing(black_box(&body), &eff)
        })
    });
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("jsonrpc");
    g.bench_function("parse_tools_call_value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(TOOLS_CALL)).unwrap())
    });
    let policy = ScopePolicy::from_config(&ScopeConfig::default());
    let effective = policy.effective(["mcp:read", "mcp:write"]);
    g.bench_function("parse_and_decide", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(TOOLS_CALL)).unwrap();
            policy.missing(&v, &effective)
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_verify, bench_sign, bench_pkce, bench_policy, bench_parse
}
criterion_main!(benches);
