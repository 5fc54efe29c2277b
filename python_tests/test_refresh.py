"""Refresh-token rotation, the reuse grace window and family revocation on replay.
Checklist item b9 (MUST rotate refresh tokens for public clients)."""

from flow import McpClient, full_flow, refresh, tokens_from, unverified_claims


def _works(http, base, access_token) -> bool:
    reply = McpClient(http, base, access_token).initialize()
    assert reply.status in (200, 401), f"unexpected status {reply.status}: {reply.text[:300]}"
    return reply.status == 200


def _invalid_grant(r):
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    assert r.json()["error"] == "invalid_grant", r.text


def test_refresh_rotates_the_pair(gateway, http):
    t1 = full_flow(http, gateway.base)
    t2 = tokens_from(refresh(http, gateway.base, t1.client_id, t1.refresh_token), t1.client_id)
    assert t2.refresh_token and t2.refresh_token != t1.refresh_token
    assert t2.access_token != t1.access_token
    assert t2.scope == t1.scope
    c1, c2 = unverified_claims(t1.access_token), unverified_claims(t2.access_token)
    assert c2["jti"] != c1["jti"]
    assert c2["sub"] == c1["sub"] and c2["client_id"] == c1["client_id"]
    assert _works(http, gateway.base, t2.access_token)


def test_refresh_can_narrow_scope(gateway, http):
    t1 = full_flow(http, gateway.base)
    r = refresh(http, gateway.base, t1.client_id, t1.refresh_token, scope="mcp:read")
    t2 = tokens_from(r, t1.client_id)
    assert t2.scope == "mcp:read"
    assert unverified_claims(t2.access_token)["scope"] == "mcp:read"


def test_refresh_cannot_widen_scope(gateway, http):
    t1 = full_flow(http, gateway.base, scope="mcp:read")
    r = refresh(http, gateway.base, t1.client_id, t1.refresh_token, scope="mcp:read mcp:admin")
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_scope"


def test_refresh_token_bound_to_client(gateway, http):
    t1 = full_flow(http, gateway.base)
    other = full_flow(http, gateway.base)
    r = refresh(http, gateway.base, other.client_id, t1.refresh_token)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("invalid_grant", "invalid_client")


def test_reuse_within_grace_window_works_and_supersedes_unused_successor(gateway, http):
    t1 = full_flow(http, gateway.base)
    r1 = t1.refresh_token
    t2 = tokens_from(refresh(http, gateway.base, t1.client_id, r1), t1.client_id)
    # R1 reused: R2 never used and we are inside the default 60 s grace window.
    t2b = tokens_from(refresh(http, gateway.base, t1.client_id, r1), t1.client_id)
    assert t2b.refresh_token not in (r1, t2.refresh_token)
    assert _works(http, gateway.base, t2b.access_token)
    # R2' keeps rotating normally ...
    t3 = tokens_from(refresh(http, gateway.base, t1.client_id, t2b.refresh_token), t1.client_id)
    assert _works(http, gateway.base, t3.access_token)
    # ... while the superseded R2 is dead, and presenting it is a replay (issue 12): the
    # family is revoked, so the two chains cannot both live on.
    _invalid_grant(refresh(http, gateway.base, t1.client_id, t2.refresh_token))
    _invalid_grant(refresh(http, gateway.base, t1.client_id, t3.refresh_token))
    for t in (t2, t2b, t3):
        assert not _works(http, gateway.base, t.access_token)


def test_reuse_after_successor_used_revokes_family(gateway, http):
    t1 = full_flow(http, gateway.base)
    t2 = tokens_from(refresh(http, gateway.base, t1.client_id, t1.refresh_token), t1.client_id)
    t3 = tokens_from(refresh(http, gateway.base, t1.client_id, t2.refresh_token), t1.client_id)
    assert _works(http, gateway.base, t3.access_token)

    _invalid_grant(refresh(http, gateway.base, t1.client_id, t1.refresh_token))

    # The whole family is gone: the newest refresh token and every access token.
    _invalid_grant(refresh(http, gateway.base, t1.client_id, t3.refresh_token))
    for t in (t1, t2, t3):
        assert not _works(http, gateway.base, t.access_token)


def test_reuse_after_grace_period_revokes_family(gateway_factory, http):
    gw = gateway_factory("--refresh-grace-seconds", "0")
    t1 = full_flow(http, gw.base)
    t2 = tokens_from(refresh(http, gw.base, t1.client_id, t1.refresh_token), t1.client_id)
    assert _works(http, gw.base, t2.access_token)

    # Grace period 0: any reuse of R1 is a replay, even though R2 was never used.
    _invalid_grant(refresh(http, gw.base, t1.client_id, t1.refresh_token))

    _invalid_grant(refresh(http, gw.base, t1.client_id, t2.refresh_token))
    assert not _works(http, gw.base, t2.access_token)
    assert not _works(http, gw.base, t1.access_token)


def test_other_families_survive_a_replay(gateway, http):
    """Revoking one family must not touch another grant of the same client."""
    a = full_flow(http, gateway.base)
    b = full_flow(http, gateway.base, client_id=a.client_id)
    a2 = tokens_from(refresh(http, gateway.base, a.client_id, a.refresh_token), a.client_id)
    tokens_from(refresh(http, gateway.base, a.client_id, a2.refresh_token), a.client_id)
    _invalid_grant(refresh(http, gateway.base, a.client_id, a.refresh_token))
    assert _works(http, gateway.base, b.access_token)
    tokens_from(refresh(http, gateway.base, b.client_id, b.refresh_token), b.client_id)
