//! The behaviour every [`Store`] must have, run against each implementation.

use std::sync::Arc;

use super::memory::InMemoryStore;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::*;

fn grant(id: &str) -> Grant {
    Grant {
        id: id.into(),
        client_id: "c".into(),
        sub: "u".into(),
        scopes: vec!["mcp:read".into()],
        resource: "r".into(),
        expires_at: 10_000,
        revoked: false,
        created_at: 50,
    }
}

fn rt(grant_id: &str) -> RefreshToken {
    RefreshToken {
        grant_id: grant_id.into(),
        scopes: vec!["mcp:read".into()],
        rotated: None,
    }
}

fn code(grant_id: &str) -> AuthCode {
    AuthCode {
        grant_id: grant_id.into(),
        client_id: "c".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        code_challenge: "x".into(),
        scopes: vec![],
        resource: "r".into(),
        sub: "u".into(),
        expires_at: 200,
    }
}

/// What the token endpoint would issue for `code`: the grant it names, refresh token
/// `rh-<grant>` and access token `jti-<grant>`.
fn issue(code: &AuthCode) -> CodeIssue {
    CodeIssue {
        grant: Grant {
            client_id: code.client_id.clone(),
            ..grant(&code.grant_id)
        },
        refresh_hash: format!("rh-{}", code.grant_id),
        refresh: rt(&code.grant_id),
        access_jti: format!("jti-{}", code.grant_id),
        access_exp: 5000,
    }
}

fn exchange<'a>(code_hash: &'a str, now: u64, check: &'a mut CodeCheck<'a>) -> CodeExchange<'a> {
    CodeExchange {
        code_hash,
        now,
        check,
    }
}

/// Redeem a code, issuing for it whatever it is.
fn redeem(s: &dyn Store, hash: &str, now: u64) -> CodeRedemption {
    s.redeem_code(exchange(hash, now, &mut |c| Some(issue(c))))
        .unwrap()
}

/// A record that must be new whose key is taken is a conflict, and the failed write
/// changes nothing: the first record stays, and nothing is evicted to make room for it.
fn taken_keys_are_conflicts_that_change_nothing(s: &dyn Store) {
    s.insert_code("h".into(), code("g1")).unwrap();
    assert!(matches!(
        s.insert_code("h".into(), code("other")),
        Err(StoreError::Conflict(_))
    ));
    let one = PendingLimits {
        total: 0,
        per_client: 1,
    };
    assert!(matches!(
        s.admit_code("h".into(), code("other"), 100, one),
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(redeem(s, "h", 100), CodeRedemption::Issued(i) if i.grant.id == "g1"),
        "the first code is kept, not evicted or replaced"
    );
    s.insert_grant(grant("g")).unwrap();
    let other = Grant {
        sub: "someone else".into(),
        ..grant("g")
    };
    assert!(matches!(
        s.insert_grant(other),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.grant("g").unwrap().unwrap().sub, "u");
}

fn rotated(s: &dyn Store, old: &str, new: &str, now: u64, grace: u64) -> RotateOutcome {
    s.rotate_refresh(RefreshRotation {
        old_hash: old,
        new_hash: new.into(),
        new_token: rt("g"),
        now,
        grace,
    })
    .unwrap()
}

fn codes_are_single_use_and_replays_are_reported(s: &dyn Store) {
    s.insert_code("h".into(), code("g1")).unwrap();
    assert!(matches!(redeem(s, "h", 100), CodeRedemption::Issued(_)));
    assert_eq!(
        redeem(s, "h", 101),
        CodeRedemption::Replayed {
            grant_id: "g1".into()
        }
    );
    assert_eq!(redeem(s, "other", 101), CodeRedemption::Unknown);
    s.insert_code("h2".into(), code("g2")).unwrap();
    assert_eq!(redeem(s, "h2", 200), CodeRedemption::Unknown, "expired");
}

/// Redeeming a code stores, in the same step, everything issued for it: the grant, its
/// refresh token, and the access token's `jti` (so revoking the grant revokes the token).
/// The check sees the code, and sees no code that is used, unknown or expired.
fn redeeming_a_code_stores_what_is_issued(s: &dyn Store) {
    s.insert_code("h".into(), code("g1")).unwrap();
    let mut seen = Vec::new();
    let mut check = |c: &AuthCode| {
        seen.push(c.clone());
        Some(issue(c))
    };
    let r = s.redeem_code(exchange("h", 100, &mut check)).unwrap();
    assert_eq!(r, CodeRedemption::Issued(Box::new(issue(&code("g1")))));
    for again in ["h", "unknown"] {
        s.redeem_code(exchange(again, 101, &mut check)).unwrap();
    }
    assert_eq!(seen, [code("g1")], "the check ran once, on the fresh code");
    assert_eq!(s.grant("g1").unwrap(), Some(issue(&code("g1")).grant));
    assert_eq!(s.refresh("rh-g1").unwrap(), Some(rt("g1")));
    assert!(!s.is_access_token_revoked("jti-g1").unwrap());
    s.revoke_grant("g1").unwrap();
    assert!(
        s.is_access_token_revoked("jti-g1").unwrap(),
        "the access token was recorded under the grant"
    );
}

/// A code the check refuses is left as it was: not used up, not a replay, and nothing
/// stored for it.
fn a_refused_code_is_left_redeemable(s: &dyn Store) {
    s.insert_code("h".into(), code("g1")).unwrap();
    assert_eq!(
        s.redeem_code(exchange("h", 100, &mut |_| None)).unwrap(),
        CodeRedemption::Refused
    );
    assert!(s.grant("g1").unwrap().is_none());
    assert!(matches!(redeem(s, "h", 101), CodeRedemption::Issued(_)));
}

/// Redemption is all or nothing: when what it would issue cannot be stored (a key is
/// taken), the code is not used up, and no grant, refresh token or token record is left
/// behind. A redemption done as separate steps (use the code, then store the grant, then
/// the refresh token) fails this: the code would be spent with nothing issued.
fn a_redemption_that_cannot_store_everything_changes_nothing(s: &dyn Store) {
    s.insert_code("h".into(), code("g1")).unwrap();
    // The refresh token's hash is taken (by another grant's token).
    s.insert_grant(grant("other")).unwrap();
    s.insert_refresh("rh-g1".into(), rt("other")).unwrap();
    assert!(matches!(
        s.redeem_code(exchange("h", 100, &mut |c| Some(issue(c)))),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.grant("g1").unwrap().is_none(), "no grant");
    assert_eq!(s.refresh("rh-g1").unwrap(), Some(rt("other")), "untouched");
    // The grant's id is taken.
    s.insert_grant(grant("g1")).unwrap();
    let mut fresh_refresh = |c: &AuthCode| {
        Some(CodeIssue {
            refresh_hash: "rh-new".into(),
            ..issue(c)
        })
    };
    assert!(matches!(
        s.redeem_code(exchange("h", 100, &mut fresh_refresh)),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.refresh("rh-new").unwrap().is_none(), "no refresh token");
    s.revoke_grant("g1").unwrap();
    assert!(
        !s.is_access_token_revoked("jti-g1").unwrap(),
        "no token recorded under the taken grant"
    );
    // The code was never used up: with fresh keys it redeems, once.
    let mut fresh_keys = |c: &AuthCode| {
        Some(CodeIssue {
            grant: grant("g2"),
            ..fresh_refresh(c)?
        })
    };
    let r = s.redeem_code(exchange("h", 101, &mut fresh_keys)).unwrap();
    assert!(matches!(r, CodeRedemption::Issued(i) if i.grant.id == "g2"));
    assert_eq!(
        redeem(s, "h", 102),
        CodeRedemption::Replayed {
            grant_id: "g2".into()
        },
        "a replay names the grant the redemption stored"
    );
}

fn rotation_grace_and_replay_revokes_family(s: &dyn Store) {
    s.insert_grant(grant("g")).unwrap();
    s.add_access_token("g", "jti-1", 5000).unwrap();
    s.insert_refresh("r1".into(), rt("g")).unwrap();
    assert!(matches!(
        rotated(s, "r1", "r2", 100, 30),
        RotateOutcome::Rotated(_)
    ));
    // r1 again within grace, r2 unused: r2 is replaced by r3.
    assert!(matches!(
        rotated(s, "r1", "r3", 110, 30),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(
        s.refresh("r2").unwrap().unwrap().rotated,
        Some(Rotation::superseded(110)),
        "the unused successor is superseded"
    );
    // r3 used -> r4; now r1 is a replay and revokes everything.
    assert!(matches!(
        rotated(s, "r3", "r4", 111, 30),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(rotated(s, "r1", "r5", 112, 30), RotateOutcome::Replay);
    assert!(s.grant("g").unwrap().unwrap().revoked);
    assert!(s.is_access_token_revoked("jti-1").unwrap());
    assert_eq!(rotated(s, "r4", "r6", 113, 30), RotateOutcome::Invalid);
}

/// A retry of the predecessor inside the grace window must not fork the family: the
/// superseded successor is dead, and whoever presents it afterwards revokes everything.
fn a_retry_never_forks_the_family(s: &dyn Store) {
    s.insert_grant(grant("g")).unwrap();
    s.add_access_token("g", "jti-1", 5000).unwrap();
    s.insert_refresh("r1".into(), rt("g")).unwrap();
    // The client rotates r1 -> r2; someone else (a thief, or a lost response) uses r1 again
    // inside the window: r2 is superseded by r3.
    assert!(matches!(
        rotated(s, "r1", "r2", 100, 30),
        RotateOutcome::Rotated(_)
    ));
    assert!(matches!(
        rotated(s, "r1", "r3", 101, 30),
        RotateOutcome::Rotated(_)
    ));
    s.add_access_token("g", "jti-3", 5000).unwrap();
    // The holder of r2 comes back: a replay, not an unknown token. The family is revoked, so
    // the other chain (r3) dies with it and no one is left holding a live token.
    assert_eq!(rotated(s, "r2", "r4", 102, 30), RotateOutcome::Replay);
    assert!(s.grant("g").unwrap().unwrap().revoked);
    assert!(s.is_access_token_revoked("jti-1").unwrap());
    assert!(s.is_access_token_revoked("jti-3").unwrap());
    assert_eq!(rotated(s, "r3", "r5", 103, 30), RotateOutcome::Invalid);
    assert_eq!(rotated(s, "r4", "r6", 103, 30), RotateOutcome::Invalid);
}

/// A superseded successor stays dead even after the live chain moved on, and presenting it
/// then is a replay as well.
fn a_superseded_token_is_a_replay_later_too(s: &dyn Store) {
    s.insert_grant(grant("g")).unwrap();
    s.insert_refresh("r1".into(), rt("g")).unwrap();
    rotated(s, "r1", "r2", 100, 30);
    rotated(s, "r1", "r3", 101, 30);
    assert!(matches!(
        rotated(s, "r3", "r4", 102, 30),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(rotated(s, "r2", "r5", 500, 30), RotateOutcome::Replay);
    assert!(s.grant("g").unwrap().unwrap().revoked);
    assert_eq!(rotated(s, "r4", "r6", 501, 30), RotateOutcome::Invalid);
}

/// Twenty concurrent uses of one token inside the window: however they interleave, exactly
/// one of the successors that were handed out is live (neither rotated nor superseded).
fn concurrent_rotations_leave_one_live_successor(s: Arc<dyn Store>) {
    s.insert_grant(grant("g")).unwrap();
    s.insert_refresh("r0".into(), rt("g")).unwrap();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let new = format!("n{i}");
                (rotated(&*s, "r0", &new, 100, 30), new)
            })
        })
        .collect();
    let issued: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|(r, _)| matches!(r, RotateOutcome::Rotated(_)))
        .map(|(_, new)| new)
        .collect();
    assert_eq!(issued.len(), 20, "every retry inside the window succeeds");
    let live: Vec<_> = issued
        .iter()
        .filter(|h| s.refresh(h).unwrap().unwrap().rotated.is_none())
        .collect();
    assert_eq!(live.len(), 1, "one chain: {live:?}");
    let dead = issued.iter().find(|h| *h != live[0]).unwrap();
    assert_eq!(rotated(&*s, dead, "x", 101, 30), RotateOutcome::Replay);
    assert_eq!(rotated(&*s, live[0], "y", 101, 30), RotateOutcome::Invalid);
}

fn reuse_after_grace_is_replay(s: &dyn Store) {
    s.insert_grant(grant("g")).unwrap();
    s.insert_refresh("r1".into(), rt("g")).unwrap();
    rotated(s, "r1", "r2", 100, 30);
    assert_eq!(rotated(s, "r1", "r3", 130, 30), RotateOutcome::Replay);
    assert_eq!(rotated(s, "r2", "r4", 132, 30), RotateOutcome::Invalid);
}

fn revoking_before_storing_still_revokes(s: &dyn Store) {
    s.revoke_grant("late").unwrap();
    s.insert_grant(grant("late")).unwrap();
    assert!(s.grant("late").unwrap().unwrap().revoked);
    s.add_access_token("late", "j", 5000).unwrap();
    assert!(s.is_access_token_revoked("j").unwrap());
}

fn clients_and_pending_round_trip(s: &dyn Store) {
    let c = Client {
        client_id: "c1".into(),
        client_name: Some("n".into()),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        grant_types: vec!["authorization_code".into()],
        token_endpoint_auth_method: "none".into(),
        scope: None,
        created_at: 1,
        last_used_at: 1,
        ..Client::default()
    };
    s.insert_client(c.clone()).unwrap();
    assert_eq!(s.client("c1").unwrap(), Some(c));
    let p = PendingAuthorization {
        id: "p".into(),
        csrf_token: "t".into(),
        client_id: "c1".into(),
        redirect_uri: "x".into(),
        state: None,
        scopes: vec![],
        resource: "r".into(),
        code_challenge: "c".into(),
        expires_at: 500,
        sub: Some("alice".into()),
    };
    s.insert_pending(p.clone(), 100).unwrap();
    assert_eq!(s.take_pending("p").unwrap(), Some(p));
    assert_eq!(s.take_pending("p").unwrap(), None, "single use");
}

fn concurrent_redemptions_yield_exactly_one_fresh(s: Arc<dyn Store>) {
    s.insert_code("h".into(), code("g1")).unwrap();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || redeem(&*s, "h", 100))
        })
        .collect();
    let fresh = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|r| matches!(r, CodeRedemption::Issued(_)))
        .count();
    assert_eq!(fresh, 1);
}

fn client(id: &str, created_at: u64) -> Client {
    Client {
        client_id: id.into(),
        client_name: Some(format!("name of {id}")),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        token_endpoint_auth_method: "none".into(),
        created_at,
        last_used_at: created_at,
        ..Client::default()
    }
}

fn pending(id: &str, client_id: &str, expires_at: u64) -> PendingAuthorization {
    PendingAuthorization {
        id: id.into(),
        csrf_token: "t".into(),
        client_id: client_id.into(),
        redirect_uri: "x".into(),
        state: None,
        scopes: vec![],
        resource: "r".into(),
        code_challenge: "c".into(),
        expires_at,
        sub: None,
    }
}

fn clients_are_listed_and_revoking_one_revokes_its_grants(s: &dyn Store) {
    s.insert_client(client("old", 10)).unwrap();
    s.insert_client(client("new", 20)).unwrap();
    let ids: Vec<_> = s
        .clients()
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["new", "old"], "newest first");

    let mine = |id: &str| Grant {
        client_id: "old".into(),
        ..grant(id)
    };
    s.insert_grant(mine("g1")).unwrap();
    s.insert_grant(mine("g2")).unwrap();
    s.insert_grant(grant("other")).unwrap();
    s.add_access_token("g1", "jti-g1", 5000).unwrap();
    s.insert_refresh("r1".into(), rt("g1")).unwrap();
    s.remember_consent(Consent {
        sub: "u".into(),
        client_id: "old".into(),
        scopes: vec![],
        expires_at: 1000,
    })
    .unwrap();
    s.insert_pending(pending("p-old", "old", 500), 100).unwrap();

    let r = s.revoke_client("old").unwrap();
    assert_eq!(
        r,
        ClientRevocation {
            deleted: true,
            grants: 2
        }
    );
    assert!(s.client("old").unwrap().is_none());
    assert!(s.grant("g1").unwrap().unwrap().revoked);
    assert!(s.grant("g2").unwrap().unwrap().revoked);
    assert!(
        !s.grant("other").unwrap().unwrap().revoked,
        "other clients keep theirs"
    );
    assert!(s.is_access_token_revoked("jti-g1").unwrap());
    assert!(s.refresh("r1").unwrap().is_none());
    assert!(s.consent("u", "old", 100).unwrap().is_none());
    assert!(s.take_pending("p-old").unwrap().is_none());
    // Again: nothing left to delete or revoke; an unstored client's grants are still found.
    assert_eq!(s.revoke_client("old").unwrap(), ClientRevocation::default());
    assert_eq!(
        s.revoke_client("c").unwrap(),
        ClientRevocation {
            deleted: false,
            grants: 1
        }
    );
}

fn live_grants_are_listed_and_counted(s: &dyn Store) {
    s.insert_client(client("c", 1)).unwrap();
    let g = |id: &str, sub: &str, created_at: u64, expires_at: u64| Grant {
        sub: sub.into(),
        created_at,
        expires_at,
        ..grant(id)
    };
    s.insert_grant(g("b-late", "bob", 30, 10_000)).unwrap();
    s.insert_grant(g("b-early", "bob", 20, 10_000)).unwrap();
    s.insert_grant(g("alice", "alice", 40, 10_000)).unwrap();
    s.insert_grant(g("expired", "alice", 10, 100)).unwrap();
    s.insert_grant(g("revoked", "alice", 10, 10_000)).unwrap();
    s.revoke_grant("revoked").unwrap();
    let live = s.live_grants(100).unwrap();
    let ids: Vec<_> = live.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["alice", "b-early", "b-late"]);
    assert_eq!(live[0].created_at, 40);
    assert_eq!(
        s.live_counts(100).unwrap(),
        LiveCounts {
            clients: 1,
            grants: 3
        }
    );
    s.revoke_grant("alice").unwrap();
    assert_eq!(s.live_counts(100).unwrap().grants, 2);
    assert_eq!(s.live_counts(10_000).unwrap().grants, 0, "all expired");
}

/// Issue 12: the caps bound what waits but never refuse a new request: the oldest waiting
/// request gives way (the client's own when its cap is reached, pending consent requests
/// before unredeemed codes), so strangers cannot lock a client out.
fn pending_requests_evict_the_oldest_at_the_caps(s: &dyn Store) {
    let limits = PendingLimits {
        total: 4,
        per_client: 2,
    };
    let admit = |id: &str, client: &str| s.admit_pending(pending(id, client, 500), 100, limits);
    let waiting = |id: &str| {
        let p = s.take_pending(id).unwrap();
        if let Some(p) = &p {
            s.insert_pending(p.clone(), 100).unwrap();
        }
        p.is_some()
    };
    assert_eq!(admit("a1", "a").unwrap(), Admission::Admitted);
    let code_a = AuthCode {
        client_id: "a".into(),
        expires_at: 400,
        ..code("g")
    };
    assert_eq!(
        s.admit_code("ha".into(), code_a, 100, limits).unwrap(),
        Admission::Admitted
    );
    // A third for a: its oldest pending request gives way (not the older code), and the new
    // one is stored.
    assert_eq!(admit("a2", "a").unwrap(), Admission::EvictedForClient);
    assert!(
        !waiting("a1"),
        "the oldest pending request of a was evicted"
    );
    assert!(waiting("a2"));
    // Other clients are untouched by a's cap.
    assert_eq!(admit("b1", "b").unwrap(), Admission::Admitted);
    assert_eq!(admit("b2", "b").unwrap(), Admission::Admitted);
    assert!(waiting("b1") && waiting("b2"));
    // The total (ha, a2, b1): a new client's request evicts the oldest pending one of
    // anyone. Same expiry: arrival order decides, and a2 came first (`waiting` re-inserts,
    // which counts as arriving again, but a2's check ran before b1 arrived).
    assert_eq!(admit("c1", "c").unwrap(), Admission::EvictedForTotal);
    assert!(
        !waiting("a2"),
        "the oldest pending request of anyone gave way"
    );
    assert!(waiting("b1") && waiting("b2") && waiting("c1"));
    assert!(
        matches!(redeem(s, "ha", 100), CodeRedemption::Issued(_)),
        "codes wait while pending requests can give way"
    );
    // Expired entries neither count nor are evicted.
    assert_eq!(
        s.admit_pending(pending("late", "a", 900), 600, limits)
            .unwrap(),
        Admission::Admitted
    );
    // No limits: never evicts.
    assert_eq!(
        s.admit_pending(pending("free", "a", 900), 600, PendingLimits::default())
            .unwrap(),
        Admission::Admitted
    );
    assert!(waiting("late") && waiting("free"));
}

/// When only codes wait, the oldest code gives way (the cap still bounds memory), and a
/// new code always gets in.
fn codes_give_way_when_nothing_else_waits(s: &dyn Store) {
    let limits = PendingLimits {
        total: 0,
        per_client: 2,
    };
    // Each code names its own grant, as codes do.
    let code_d = |hash: &str, exp: u64| AuthCode {
        client_id: "d".into(),
        expires_at: exp,
        ..code(&format!("g-{hash}"))
    };
    for (hash, exp) in [("hd1", 300), ("hd2", 400)] {
        assert_eq!(
            s.admit_code(hash.into(), code_d(hash, exp), 100, limits)
                .unwrap(),
            Admission::Admitted
        );
    }
    assert_eq!(
        s.admit_code("hd3".into(), code_d("hd3", 400), 100, limits)
            .unwrap(),
        Admission::EvictedForClient
    );
    assert_eq!(redeem(s, "hd1", 100), CodeRedemption::Unknown);
    for hash in ["hd2", "hd3"] {
        assert!(matches!(redeem(s, hash, 100), CodeRedemption::Issued(_)));
    }
    // A pending request over the cap evicts a code when the client has nothing pending.
    s.admit_code("hd4".into(), code_d("hd4", 400), 100, limits)
        .unwrap();
    s.admit_code("hd5".into(), code_d("hd5", 400), 100, limits)
        .unwrap();
    assert_eq!(
        s.admit_pending(pending("pd", "d", 500), 100, limits)
            .unwrap(),
        Admission::EvictedForClient
    );
    assert_eq!(redeem(s, "hd4", 100), CodeRedemption::Unknown);
    assert!(s.take_pending("pd").unwrap().is_some());
}

/// The jtis of a batch, sorted (tokens revoked together have no order among them).
fn jtis(batch: &RevocationBatch) -> Vec<&str> {
    let mut out: Vec<&str> = batch.revoked.iter().map(|(j, _)| j.as_str()).collect();
    out.sort_unstable();
    out
}

/// Issue 14: every path that revokes an access token appends it to the revocation log, so
/// the replicas' in-memory views see it; `since(last)` returns only what came after.
fn every_revocation_reaches_the_log(s: &dyn Store) {
    assert_eq!(
        s.revocations_since(0, 100).unwrap(),
        RevocationBatch::default()
    );
    let mut last = 0;
    let mut step = |expected: &[&str]| {
        let batch = s.revocations_since(last, 100).unwrap();
        assert_eq!(jtis(&batch), expected);
        assert!(batch.last > last, "{expected:?}: the sequence moves on");
        last = batch.last;
    };
    // One access token.
    s.revoke_access_token("token", 5000).unwrap();
    step(&["token"]);
    // A grant, with the access tokens issued from it.
    s.insert_grant(grant("g1")).unwrap();
    s.add_access_token("g1", "g1-a", 5000).unwrap();
    s.add_access_token("g1", "g1-b", 6000).unwrap();
    s.revoke_grant("g1").unwrap();
    step(&["g1-a", "g1-b"]);
    // A token issued from a grant revoked meanwhile.
    s.add_access_token("g1", "late", 5000).unwrap();
    step(&["late"]);
    // A client, with its grants.
    s.insert_grant(Grant {
        client_id: "c2".into(),
        ..grant("g2")
    })
    .unwrap();
    s.add_access_token("g2", "g2-a", 5000).unwrap();
    assert_eq!(s.revoke_client("c2").unwrap().grants, 1);
    step(&["g2-a"]);
    // A refresh token replayed: the family is revoked inside the rotation.
    s.insert_grant(grant("g")).unwrap();
    s.add_access_token("g", "g-a", 5000).unwrap();
    s.insert_refresh("r1".into(), rt("g")).unwrap();
    assert!(matches!(
        rotated(s, "r1", "r2", 100, 0),
        RotateOutcome::Rotated(_)
    ));
    assert_eq!(rotated(s, "r1", "r3", 101, 0), RotateOutcome::Replay);
    step(&["g-a"]);
    // A code replayed: the token endpoint revokes the grant it started.
    s.insert_code("h".into(), code("g3")).unwrap();
    assert!(matches!(redeem(s, "h", 100), CodeRedemption::Issued(_)));
    let CodeRedemption::Replayed { grant_id } = redeem(s, "h", 101) else {
        panic!("a replay");
    };
    s.revoke_grant(&grant_id).unwrap();
    step(&["jti-g3"]);
    // Nothing new since the last one.
    let batch = s.revocations_since(last, 100).unwrap();
    assert_eq!((batch.revoked.len(), batch.last), (0, last));
    // Everything from the start, in order; expired ones are left out.
    let all = s.revocations_since(0, 100).unwrap();
    assert_eq!(all.revoked.len(), 7);
    assert_eq!(all.revoked[0], ("token".to_string(), 5000));
    assert_eq!(all.last, last);
    let later = s.revocations_since(0, 5000).unwrap();
    assert_eq!(
        jtis(&later),
        ["g1-b"],
        "only the one still unexpired at 5000"
    );
    assert_eq!(later.last, last, "the sequence counts expired ones too");
}

/// Purging expired log rows never makes a sequence number come round again: a view that
/// saw the purged row must still see the next revocation.
fn purged_revocations_do_not_reuse_sequence_numbers(s: &dyn Store) {
    s.revoke_access_token("old", 200).unwrap();
    let seen = s.revocations_since(0, 100).unwrap().last;
    // Any write that sweeps, long after the token expired.
    s.insert_pending(pending("p", "c", 10_000), 1_000).unwrap();
    assert_eq!(s.revocations_since(0, 100).unwrap().revoked, []);
    s.revoke_access_token("new", 5000).unwrap();
    let batch = s.revocations_since(seen, 1_000).unwrap();
    assert_eq!(jtis(&batch), ["new"]);
    assert!(batch.last > seen);
}

/// A view that synced from a store with a longer log, then syncs from this fresh one (the
/// database was replaced), still learns this store's revocations: the store's newest
/// number tells the view its log started over.
fn a_view_moved_to_a_fresh_store_reads_it_from_the_start(s: &dyn Store) {
    let old = InMemoryStore::new();
    for n in 0..5 {
        old.revoke_access_token(&format!("old{n}"), 9_000).unwrap();
    }
    let view = super::view::RevocationView::new();
    view.sync(&old, 100).unwrap();
    s.revoke_access_token("fresh", 9_000).unwrap();
    view.sync(s, 100).unwrap();
    assert_eq!(
        view.check("fresh", 100),
        Ok(true),
        "missed a revocation of the new store"
    );
}

/// A sign-in session is found by its hash until it expires or ends.
fn sessions_expire_and_end(s: &dyn Store) {
    s.insert_session("h1", "alice", 200).unwrap();
    s.insert_session("h2", "bob", 200).unwrap();
    assert_eq!(s.session("h1", 100).unwrap().as_deref(), Some("alice"));
    assert_eq!(s.session("nope", 100).unwrap(), None);
    s.end_session("h1").unwrap();
    assert_eq!(s.session("h1", 100).unwrap(), None, "ended");
    assert_eq!(s.session("h2", 100).unwrap().as_deref(), Some("bob"));
    assert_eq!(s.session("h2", 200).unwrap(), None, "expired");
}

/// Alice, as a provider described her when she signed in.
fn alice() -> Identity {
    Identity {
        sub: "https://idp.example|alice".into(),
        provider: "idp".into(),
        email: Some("alice@example.com".into()),
        name: Some("Alice".into()),
        scopes: Some(vec!["mcp:read".into(), "mcp:write".into()]),
        upstream: Some(b"sealed-1".to_vec()),
        updated_at: 100,
    }
}

/// A person who signed in is read back as written; signing in again replaces the record
/// whole (absent fields included), and nobody else's.
fn identities_are_kept_and_replaced(s: &dyn Store) {
    let a = alice();
    assert_eq!(s.identity(&a.sub).unwrap(), None, "never signed in");
    s.put_identity(a.clone()).unwrap();
    let bob = Identity {
        sub: "https://idp.example|bob".into(),
        email: None,
        name: None,
        scopes: None,
        upstream: None,
        ..alice()
    };
    s.put_identity(bob.clone()).unwrap();
    assert_eq!(s.identity(&a.sub).unwrap(), Some(a.clone()));
    assert_eq!(s.identity(&bob.sub).unwrap(), Some(bob.clone()));
    let again = Identity {
        provider: "other".into(),
        email: None,
        name: Some("A.".into()),
        scopes: Some(vec![]),
        upstream: Some(b"sealed-2".to_vec()),
        updated_at: 200,
        ..alice()
    };
    s.put_identity(again.clone()).unwrap();
    assert_eq!(
        s.identity(&a.sub).unwrap(),
        Some(again.clone()),
        "replaced; no scopes at all is not every scope"
    );
    let bare = Identity {
        scopes: None,
        upstream: None,
        ..again
    };
    s.put_identity(bare.clone()).unwrap();
    assert_eq!(
        s.identity(&a.sub).unwrap(),
        Some(bare),
        "tokens dropped too"
    );
    assert_eq!(s.identity(&bob.sub).unwrap(), Some(bob), "others untouched");
    assert_eq!(s.identity("https://idp.example|nobody").unwrap(), None);
}

/// Upstream tokens are replaced only from the value the caller read: a refresh that lost
/// the race to another replica's is told so and changes nothing.
fn upstream_tokens_are_swapped_only_from_what_was_read(s: &dyn Store) {
    let a = alice();
    s.put_identity(a.clone()).unwrap();
    assert!(
        !s.swap_upstream(&a.sub, b"sealed-0", b"sealed-x".to_vec(), 150)
            .unwrap()
    );
    assert_eq!(s.identity(&a.sub).unwrap(), Some(a.clone()), "unchanged");
    assert!(
        s.swap_upstream(&a.sub, b"sealed-1", b"sealed-2".to_vec(), 200)
            .unwrap()
    );
    let swapped = Identity {
        upstream: Some(b"sealed-2".to_vec()),
        updated_at: 200,
        ..a.clone()
    };
    assert_eq!(s.identity(&a.sub).unwrap(), Some(swapped.clone()));
    assert!(
        !s.swap_upstream(&a.sub, b"sealed-1", b"sealed-3".to_vec(), 300)
            .unwrap(),
        "a stale refresh loses"
    );
    assert_eq!(s.identity(&a.sub).unwrap(), Some(swapped));
    assert!(
        !s.swap_upstream("nobody", b"sealed-2", b"sealed-3".to_vec(), 300)
            .unwrap()
    );
    assert_eq!(s.identity("nobody").unwrap(), None, "nobody is made up");
    let bob = Identity {
        sub: "bob".into(),
        upstream: None,
        ..alice()
    };
    s.put_identity(bob.clone()).unwrap();
    assert!(
        !s.swap_upstream("bob", b"", b"sealed-3".to_vec(), 300)
            .unwrap(),
        "no tokens to replace"
    );
    assert_eq!(s.identity("bob").unwrap(), Some(bob));
}

/// Dropping a person's upstream tokens keeps the rest of what is known of them.
fn dropping_upstream_tokens_keeps_the_person(s: &dyn Store) {
    let a = alice();
    s.put_identity(a.clone()).unwrap();
    assert!(s.drop_upstream(&a.sub).unwrap());
    let dropped = Identity {
        upstream: None,
        ..a.clone()
    };
    assert_eq!(s.identity(&a.sub).unwrap(), Some(dropped.clone()));
    assert!(!s.drop_upstream(&a.sub).unwrap(), "nothing left to drop");
    assert_eq!(s.identity(&a.sub).unwrap(), Some(dropped));
    assert!(
        !s.swap_upstream(&a.sub, b"sealed-1", b"sealed-2".to_vec(), 200)
            .unwrap(),
        "dropped tokens cannot be refreshed"
    );
    assert!(!s.drop_upstream("nobody").unwrap());
}

/// Ending a person's sessions ends all of theirs and nobody else's.
fn ending_a_persons_sessions_leaves_the_others(s: &dyn Store) {
    s.insert_session("h1", "alice", 9_000).unwrap();
    s.insert_session("h2", "alice", 9_000).unwrap();
    s.insert_session("h3", "bob", 9_000).unwrap();
    assert_eq!(s.end_sessions_of("alice").unwrap(), 2);
    assert_eq!(s.session("h1", 100).unwrap(), None);
    assert_eq!(s.session("h2", 100).unwrap(), None);
    assert_eq!(s.session("h3", 100).unwrap().as_deref(), Some("bob"));
    assert_eq!(s.end_sessions_of("alice").unwrap(), 0, "none left");
    assert_eq!(s.end_sessions_of("nobody").unwrap(), 0);
}

/// Sixteen refreshes of one person's upstream tokens at once, all from the same tokens:
/// exactly one replaces them, and its tokens are the ones kept.
fn concurrent_swaps_have_one_winner(s: Arc<dyn Store>) {
    let a = alice();
    s.put_identity(a.clone()).unwrap();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (s, sub) = (s.clone(), a.sub.clone());
            std::thread::spawn(move || {
                let new = format!("sealed-n{i}").into_bytes();
                (
                    s.swap_upstream(&sub, b"sealed-1", new.clone(), 200)
                        .unwrap(),
                    new,
                )
            })
        })
        .collect();
    let won: Vec<Vec<u8>> = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|(swapped, _)| *swapped)
        .map(|(_, new)| new)
        .collect();
    assert_eq!(won.len(), 1, "exactly one refresh wins");
    assert_eq!(
        s.identity(&a.sub).unwrap().unwrap().upstream.as_ref(),
        won.first()
    );
}

/// Counts per bucket, key and window, for stores that count (the others answer `None`).
fn events_are_counted_per_bucket_key_and_window(s: &dyn Store) {
    let Some(1) = s.count_event("register", "10.0.0.1", 60, 120).unwrap() else {
        return;
    };
    assert_eq!(
        s.count_event("register", "10.0.0.1", 60, 120).unwrap(),
        Some(2)
    );
    assert_eq!(
        s.count_event("register", "10.0.0.2", 60, 120).unwrap(),
        Some(1)
    );
    assert_eq!(
        s.count_event("token", "10.0.0.1", 60, 120).unwrap(),
        Some(1)
    );
    assert_eq!(
        s.count_event("register", "10.0.0.1", 120, 180).unwrap(),
        Some(1)
    );
}

/// Security events, for stores that keep them: newest first, at most what is asked for.
fn security_events_are_kept_newest_first(s: &dyn Store) {
    let event = |at: u64, name: &str| StoredEvent {
        at,
        event: name.into(),
        client_id: Some("c".into()),
        sub: None,
        source: Some("10.0.0.1".into()),
        request_id: Some(format!("r{at}")),
    };
    if !s.record_event(&event(1, "login"), 100).unwrap() {
        assert_eq!(s.recent_events(10).unwrap(), None);
        return;
    }
    for at in 2..=5 {
        s.record_event(&event(at, "code_issued"), 100).unwrap();
    }
    let recent = s.recent_events(3).unwrap().unwrap();
    assert_eq!(recent.iter().map(|e| e.at).collect::<Vec<_>>(), [5, 4, 3]);
    assert_eq!(recent[0], event(5, "code_issued"));
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod memory { $( #[test] fn $name() { super::$name(&super::InMemoryStore::new()); } )* }
        mod sqlite { $( #[test] fn $name() { super::$name(&super::SqliteStore::open_in_memory().unwrap()); } )* }
        mod postgres { $( #[test] #[ignore = "needs PostgreSQL: python3 run_tests.py replicas"] fn $name() { super::$name(&super::postgres()); } )* }
    };
}

/// A [`PostgresStore`] on a database of its own, made for one test in the cluster that
/// `MCP_GATEWAY_TEST_DATABASE_URL` names (`run_tests.py replicas` starts a throwaway one).
fn postgres() -> PostgresStore {
    PostgresStore::open(&fresh_database(), None).unwrap()
}

/// The URL of a new, empty database.
pub(crate) fn fresh_database() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var("MCP_GATEWAY_TEST_DATABASE_URL")
        .expect("MCP_GATEWAY_TEST_DATABASE_URL names the test cluster");
    let name = format!(
        "contract_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        {
            use std::hash::{BuildHasher as _, Hasher as _};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        }
    );
    let mut admin = ::postgres::Client::connect(&base, ::postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    url.to_string()
}

contract!(
    taken_keys_are_conflicts_that_change_nothing,
    redeeming_a_code_stores_what_is_issued,
    a_refused_code_is_left_redeemable,
    a_redemption_that_cannot_store_everything_changes_nothing,
    codes_are_single_use_and_replays_are_reported,
    rotation_grace_and_replay_revokes_family,
    reuse_after_grace_is_replay,
    a_retry_never_forks_the_family,
    a_superseded_token_is_a_replay_later_too,
    revoking_before_storing_still_revokes,
    clients_and_pending_round_trip,
    clients_are_listed_and_revoking_one_revokes_its_grants,
    live_grants_are_listed_and_counted,
    pending_requests_evict_the_oldest_at_the_caps,
    codes_give_way_when_nothing_else_waits,
    every_revocation_reaches_the_log,
    sessions_expire_and_end,
    ending_a_persons_sessions_leaves_the_others,
    identities_are_kept_and_replaced,
    upstream_tokens_are_swapped_only_from_what_was_read,
    dropping_upstream_tokens_keeps_the_person,
    a_view_moved_to_a_fresh_store_reads_it_from_the_start,
    events_are_counted_per_bucket_key_and_window,
    security_events_are_kept_newest_first,
    purged_revocations_do_not_reuse_sequence_numbers
);

#[test]
fn concurrency_memory() {
    concurrent_redemptions_yield_exactly_one_fresh(Arc::new(InMemoryStore::new()));
}

#[test]
fn concurrency_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
    concurrent_redemptions_yield_exactly_one_fresh(Arc::new(store));
}

#[test]
#[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
fn concurrency_postgres() {
    concurrent_redemptions_yield_exactly_one_fresh(Arc::new(postgres()));
}

#[test]
#[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
fn concurrent_rotations_postgres() {
    concurrent_rotations_leave_one_live_successor(Arc::new(postgres()));
}

#[test]
fn concurrent_rotations_memory() {
    concurrent_rotations_leave_one_live_successor(Arc::new(InMemoryStore::new()));
}

#[test]
fn concurrent_rotations_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
    concurrent_rotations_leave_one_live_successor(Arc::new(store));
}

#[test]
#[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
fn concurrent_swaps_postgres() {
    concurrent_swaps_have_one_winner(Arc::new(postgres()));
}

#[test]
fn concurrent_swaps_memory() {
    concurrent_swaps_have_one_winner(Arc::new(InMemoryStore::new()));
}

#[test]
fn concurrent_swaps_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
    concurrent_swaps_have_one_winner(Arc::new(store));
}

/// Issue 12: the database and its WAL and shared-memory files are 0600 in a 0700 data dir,
/// whatever the umask, and files left more open by an older gateway are tightened.
#[cfg(unix)]
/// A write that waits on the database (another connection holds the write lock) must not
/// hold up the runtime's only worker: another task still runs, and once it has, the lock is
/// released and the write goes through. Were the write to block the worker, the other task
/// would run only after the write had given up (the busy timeout), and the write would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sqlite_waits_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            started_tx.send(()).unwrap();
            store.insert_client(client("late", 1))
        })
    };
    started_rx.recv().unwrap();
    let (ran_tx, ran_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move { ran_tx.send(()).unwrap() });
    ran_rx.await.unwrap();
    other.execute_batch("COMMIT").unwrap();
    writer.await.unwrap().unwrap();
    assert!(store.client("late").unwrap().is_some());
}

#[test]
fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = data.join("gateway.db");
    let files = ["gateway.db", "gateway.db-wal", "gateway.db-shm"].map(|f| data.join(f));
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_grant(grant("g")).unwrap();
        assert_eq!(mode(&data), 0o700, "the data dir");
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
    }
    // Opened again after someone loosened them: tightened again.
    for f in files.iter().filter(|f| f.exists()) {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = SqliteStore::open(&path).unwrap();
    s.insert_grant(grant("g2")).unwrap();
    assert_eq!(mode(&data), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert!(s.grant("g").unwrap().is_some(), "the data is kept");
}

/// A row that does not decode is corruption, and the error does not quote the row.
#[test]
fn sqlite_undecodable_rows_are_corrupt_and_not_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let s = SqliteStore::open(&path).unwrap();
    s.insert_grant(grant("g")).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE grants SET data = json_set(data, '$.scopes', 'top-secret-value') WHERE id = 'g'",
        [],
    )
    .unwrap();
    let e = s.grant("g").unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert!(!e.to_string().contains("top-secret"), "{e}");
    assert!(e.to_string().contains("Grant"), "names the record: {e}");
}

/// Scopes that do not decode make the identity corrupt, and the error does not quote them.
#[test]
fn sqlite_undecodable_identity_scopes_are_corrupt_and_not_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let s = SqliteStore::open(&path).unwrap();
    s.put_identity(alice()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE identities SET scopes = '\"top-secret-value\"'", [])
        .unwrap();
    let e = s.identity(&alice().sub).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert!(!e.to_string().contains("top-secret"), "{e}");
    assert!(
        e.to_string().contains("IdentityScopes"),
        "names the record: {e}"
    );
}

/// In SQLite the redemption is one transaction: when its last write fails, the earlier
/// ones (using the code up, storing the grant and the refresh token) are rolled back.
#[test]
fn sqlite_redemption_rolls_back_when_a_late_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let s = SqliteStore::open(&path).unwrap();
    s.insert_code("h".into(), code("g1")).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail BEFORE INSERT ON grant_tokens BEGIN SELECT RAISE(ABORT, 'no'); END;",
    )
    .unwrap();
    assert!(
        s.redeem_code(exchange("h", 100, &mut |c| Some(issue(c))))
            .is_err()
    );
    conn.execute_batch("DROP TRIGGER fail;").unwrap();
    assert!(s.grant("g1").unwrap().is_none(), "the grant is rolled back");
    assert!(
        s.refresh("rh-g1").unwrap().is_none(),
        "and the refresh token"
    );
    assert!(
        matches!(redeem(&s, "h", 101), CodeRedemption::Issued(_)),
        "and the code is still redeemable"
    );
}

#[test]
fn sqlite_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_grant(grant("g")).unwrap();
        s.insert_refresh("r1".into(), rt("g")).unwrap();
        s.revoke_access_token("j", 9000).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.grant("g").unwrap().is_some());
    assert!(matches!(
        rotated(&s, "r1", "r2", 100, 30),
        RotateOutcome::Rotated(_)
    ));
    assert!(s.is_access_token_revoked("j").unwrap());
}

/// A database written by the previous schema (version 3) is migrated in place: its grants,
/// pending requests and codes are found by client and liveness afterwards.
#[test]
fn sqlite_migrates_version_3_databases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for m in &super::sqlite::MIGRATIONS[..3] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        // Grants stored before `created_at` existed.
        let mut live = serde_json::to_value(grant("live")).unwrap();
        live.as_object_mut().unwrap().remove("created_at");
        let mut revoked = serde_json::to_value(grant("revoked")).unwrap();
        revoked["revoked"] = true.into();
        for (id, data) in [("live", live), ("revoked", revoked)] {
            conn.execute(
                "INSERT INTO grants (id, data) VALUES (?1, ?2)",
                rusqlite::params![id, data.to_string()],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO pending (id, data, expires_at) VALUES ('p', ?1, 500)",
            [serde_json::to_string(&pending("p", "c", 500)).unwrap()],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let live = s.live_grants(100).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].id.as_str(), live[0].created_at), ("live", 0));
    assert_eq!(s.live_counts(100).unwrap().grants, 1);
    let one = PendingLimits {
        total: 0,
        per_client: 1,
    };
    assert_eq!(
        s.admit_pending(pending("q", "c", 500), 100, one).unwrap(),
        Admission::EvictedForClient,
        "the migrated pending request counts for its client"
    );
    assert!(s.take_pending("p").unwrap().is_none(), "and gives way");
    assert_eq!(
        s.revoke_client("c").unwrap().grants,
        1,
        "the migrated grant is found by client"
    );
}

/// An upgraded database's revocation log starts with the tokens it had already revoked, so
/// a view that syncs from it knows them all; new revocations come after them.
#[test]
fn sqlite_upgrade_logs_tokens_revoked_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let before = 6;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for m in &super::sqlite::MIGRATIONS[..before] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO revoked_jti (jti, exp) VALUES ('a', 5000), ('b', 6000), ('gone', 50);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let batch = s.revocations_since(0, 100).unwrap();
    assert_eq!(jtis(&batch), ["a", "b"], "expired ones are left out");
    s.revoke_access_token("c", 5000).unwrap();
    let next = s.revocations_since(batch.last, 100).unwrap();
    assert_eq!(jtis(&next), ["c"]);
}

#[test]
fn sqlite_upgrade_takes_client_credentials_from_anonymous_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let with_grants = |id: &str, grants: &[&str]| Client {
        grant_types: grants.iter().map(|g| g.to_string()).collect(),
        token_endpoint_auth_method: "client_secret_basic".into(),
        ..client(id, 1)
    };
    {
        // A version 5 database, written before registration was closed.
        let conn = rusqlite::Connection::open(&path).unwrap();
        for m in &super::sqlite::MIGRATIONS[..5] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        for (c, pinned) in [
            (
                with_grants("anon", &["client_credentials", "refresh_token"]),
                0,
            ),
            (with_grants("conf", &["client_credentials"]), 1),
            (with_grants("web", &["authorization_code"]), 0),
        ] {
            conn.execute(
                "INSERT INTO clients (client_id, data, pinned) VALUES (?1, ?2, ?3)",
                rusqlite::params![c.client_id, serde_json::to_string(&c).unwrap(), pinned],
            )
            .unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    let grants = |id: &str| s.client(id).unwrap().unwrap().grant_types;
    assert_eq!(
        grants("anon"),
        ["refresh_token"],
        "an anonymous registration loses it"
    );
    assert_eq!(
        grants("conf"),
        ["client_credentials"],
        "a configured client keeps it"
    );
    assert_eq!(
        grants("web"),
        ["authorization_code"],
        "others are untouched"
    );
}

/// A database from before identities (version 8) gains them, and its sessions can be
/// ended by user.
#[test]
fn sqlite_upgrade_adds_identities_and_finds_sessions_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let before = 8;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for m in &super::sqlite::MIGRATIONS[..before] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO sessions (hash, sub, expires_at)
             VALUES ('h1', 'alice', 9000), ('h2', 'alice', 9000), ('h3', 'bob', 9000);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.end_sessions_of("alice").unwrap(), 2);
    assert_eq!(s.session("h3", 100).unwrap().as_deref(), Some("bob"));
    s.put_identity(alice()).unwrap();
    assert_eq!(s.identity(&alice().sub).unwrap(), Some(alice()));
}

fn unused_clients_expire_but_pinned_and_used_ones_stay(s: &dyn Store) {
    let client = |id: &str, pinned: bool| Client {
        client_id: id.into(),
        created_at: 100,
        last_used_at: 100,
        pinned,
        ..Client::default()
    };
    s.insert_client(client("idle", false)).unwrap();
    s.insert_client(client("used", false)).unwrap();
    s.insert_client(client("pinned", true)).unwrap();
    s.touch_client("used", 500).unwrap();
    assert_eq!(s.purge_unused_clients(400).unwrap(), 1);
    assert!(s.client("idle").unwrap().is_none());
    assert_eq!(s.client("used").unwrap().unwrap().last_used_at, 500);
    assert!(s.client("pinned").unwrap().is_some());
}

mod expiry {
    #[test]
    #[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
    fn postgres() {
        super::unused_clients_expire_but_pinned_and_used_ones_stay(&super::postgres());
    }
    #[test]
    fn memory() {
        super::unused_clients_expire_but_pinned_and_used_ones_stay(&super::InMemoryStore::new());
    }
    #[test]
    fn sqlite() {
        super::unused_clients_expire_but_pinned_and_used_ones_stay(
            &super::SqliteStore::open_in_memory().unwrap(),
        );
    }
}

fn consents_are_remembered_per_user_and_client(s: &dyn Store) {
    let consent = |sub: &str, client: &str, exp: u64| Consent {
        sub: sub.into(),
        client_id: client.into(),
        scopes: vec!["mcp:read".into()],
        expires_at: exp,
    };
    s.remember_consent(consent("alice", "c1", 1000)).unwrap();
    s.remember_consent(consent("alice", "c2", 50)).unwrap();
    s.remember_consent(consent("bob", "c1", 1000)).unwrap();
    assert!(s.consent("alice", "c1", 100).unwrap().is_some());
    assert!(s.consent("alice", "c2", 100).unwrap().is_none(), "expired");
    assert_eq!(s.consents("alice", 100).unwrap().len(), 1);
    assert!(s.forget_consent("alice", "c1").unwrap());
    assert!(!s.forget_consent("alice", "c1").unwrap());
    assert!(s.consent("alice", "c1", 100).unwrap().is_none());
    assert!(
        s.consent("bob", "c1", 100).unwrap().is_some(),
        "other users keep theirs"
    );
}

mod consents {
    #[test]
    #[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
    fn postgres() {
        super::consents_are_remembered_per_user_and_client(&super::postgres());
    }
    #[test]
    fn memory() {
        super::consents_are_remembered_per_user_and_client(&super::InMemoryStore::new());
    }
    #[test]
    fn sqlite() {
        super::consents_are_remembered_per_user_and_client(
            &super::SqliteStore::open_in_memory().unwrap(),
        );
    }
}

/// `store copy`: what a single machine holds arrives in PostgreSQL, and only into an
/// empty database.
#[test]
#[ignore = "needs PostgreSQL: python3 run_tests.py replicas"]
fn postgres_takes_a_sqlite_snapshot() {
    let from = SqliteStore::open_in_memory().unwrap();
    from.insert_client(client("c1", 100)).unwrap();
    from.insert_grant(grant("g1")).unwrap();
    from.insert_refresh("rh".into(), rt("g1")).unwrap();
    from.add_access_token("g1", "jti-live", 9_000).unwrap();
    from.revoke_access_token("jti-gone", 9_000).unwrap();
    from.remember_consent(Consent {
        sub: "u".into(),
        client_id: "c1".into(),
        scopes: vec!["mcp:read".into()],
        expires_at: 9_000,
    })
    .unwrap();
    from.insert_session("sh", "u", 9_000).unwrap();
    let snapshot = from.snapshot().unwrap();
    let to = postgres();
    to.restore(&snapshot).unwrap();
    assert_eq!(to.client("c1").unwrap(), from.client("c1").unwrap());
    assert_eq!(to.grant("g1").unwrap(), from.grant("g1").unwrap());
    assert_eq!(to.refresh("rh").unwrap(), Some(rt("g1")));
    assert!(to.consent("u", "c1", 100).unwrap().is_some());
    assert_eq!(to.session("sh", 100).unwrap().as_deref(), Some("u"));
    assert!(to.is_access_token_revoked("jti-gone").unwrap());
    assert!(jtis(&to.revocations_since(0, 100).unwrap()).contains(&"jti-gone"));
    to.revoke_grant("g1").unwrap();
    assert!(
        to.is_access_token_revoked("jti-live").unwrap(),
        "the grant's tokens came along"
    );
    assert!(matches!(
        to.restore(&snapshot),
        Err(StoreError::Conflict(_))
    ));
}
