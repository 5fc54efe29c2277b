"""Three gateway replicas on one PostgreSQL behind nginx (issue 14).

Each test gets a fresh database and three replicas, each with its own empty data dir,
started together, behind Debian's nginx running the shipped `deploy/nginx.conf`. Requests
go through the balancer, or to one replica directly where a test needs to say which one
does what (register on one, consent on another, redeem on a third).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from flow import (REDIRECT_URI, Grant, McpClient, authorize_params, full_flow, location_query,
                  parse_consent_form, pkce_s256, register_client_id, tokens_from,
                  unverified_header)
from gateway_proc import gateway_binary

REPO = Path(__file__).resolve().parents[2]
# How long a revocation at one replica may take to reach the others (the bound).
PROPAGATION_BOUND = 1.0


def psql(pg_cluster, database_url: str, sql: str) -> str:
    dbname = database_url.rsplit("/", 1)[1]
    return pg_cluster.psql(sql, dbname=dbname).strip()


def jwks_kids(http: httpx.Client, base: str) -> list[str]:
    r = http.get(f"{base}/.well-known/jwks.json")
    assert r.status_code == 200, r.text
    return sorted(k["kid"] for k in r.json()["keys"])


def mcp_status(http: httpx.Client, base: str, token: str) -> int:
    """The status an MCP `initialize` with `token` gets at `base`."""
    return McpClient(http, base, token).post({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "fleet-test", "version": "1"}},
    }).status


def authorize_on(http, replica_base: str, public: str, client_id: str):
    """GET /authorize at one replica for the fleet's resource; (params, pkce, consent form)."""
    pkce = pkce_s256()
    params = authorize_params(client_id, pkce, base=public)
    r = http.get(f"{replica_base}/authorize", params=params)
    assert r.status_code == 200, f"/authorize: {r.status_code} {r.text[:300]}"
    return params, pkce, parse_consent_form(r.text)


def approve_on(http, replica_base: str, form, params) -> str:
    data = dict(form.hidden)
    data["decision"] = "approve"
    r = http.post(f"{replica_base}/consent", data=data)
    assert r.status_code in (302, 303), f"/consent: {r.status_code} {r.text[:300]}"
    target, q = location_query(r)
    assert target == REDIRECT_URI
    assert q["state"] == params["state"]
    return q["code"]


def token_data(public: str, client_id: str, code: str, verifier: str) -> dict:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": client_id, "code_verifier": verifier, "resource": f"{public}/mcp"}


def test_three_replicas_starting_together_migrate_once_and_share_one_key(fleet, http, pg_cluster):
    f = fleet()
    assert psql(pg_cluster, f.database_url, "SELECT count(*) FROM mcp_gateway_schema") == "1"
    assert psql(pg_cluster, f.database_url, "SELECT count(*) FROM signing_keys") == "1"
    kids = {tuple(jwks_kids(http, r.base)) for r in f.replicas}
    assert len(kids) == 1, f"every replica publishes the same key: {kids}"
    sealed = psql(pg_cluster, f.database_url, "SELECT encode(sealed, 'escape') FROM signing_keys")
    assert "PRIVATE KEY" not in sealed, "the private key is sealed at rest"


def test_register_on_one_consent_on_another_redeem_on_a_third(fleet, http):
    f = fleet()
    a, b, c = (r.base for r in f.replicas)
    client_id = register_client_id(http, a)
    params, pkce, form = authorize_on(http, b, f.url, client_id)
    code = approve_on(http, c, form, params)
    tokens = tokens_from(http.post(f"{a}/token",
                                   data=token_data(f.url, client_id, code, pkce.verifier)),
                         client_id)
    mcp = McpClient(http, f.url, tokens.access_token)
    assert mcp.initialize().status == 200


def test_sign_in_on_one_replica_and_consent_on_another(fleet, http, tmp_path):
    password = "fleet-password"
    digest = subprocess.run([str(gateway_binary()), "hash-password"], input=password.encode() + b"\n",
                            capture_output=True, check=True, timeout=60).stdout.decode().strip()
    config = tmp_path / "users.toml"
    config.write_text(f'[[users]]\nname = "alice"\npassword_hash = "{digest}"\n')
    f = fleet(extra_args=["--config", str(config)])
    a, b, c = (r.base for r in f.replicas)
    client_id = register_client_id(http, f.url)
    pkce = pkce_s256()
    params = authorize_params(client_id, pkce, base=f.url, scope="mcp:read")
    page = http.get(f"{a}/authorize", params=params)
    assert page.status_code in (200, 401), page.text[:300]
    login = parse_consent_form(page.text)
    r = http.post(f"{b}/login", data={**login.hidden, "username": "alice", "password": password})
    assert r.status_code == 200, f"login on another replica: {r.status_code} {r.text[:300]}"
    cookie = r.cookies.get("mog_session") or next(
        v.split(";", 1)[0].split("=", 1)[1] for v in r.headers.get_list("set-cookie")
        if v.startswith("mog_session="))
    consent = parse_consent_form(r.text)
    r = http.post(f"{c}/consent", data={**consent.hidden, "decision": "approve"},
                  headers={"Cookie": f"mog_session={cookie}"})
    assert r.status_code == 302, f"consent on a third replica: {r.status_code} {r.text[:300]}"
    _, q = location_query(r)
    tokens = tokens_from(http.post(f"{f.url}/token",
                                   data=token_data(f.url, client_id, q["code"], pkce.verifier)),
                         client_id)
    whoami = McpClient(http, f.url, tokens.access_token)
    whoami.initialize()
    assert "alice" in str(whoami.call_tool("whoami", {}).result)


def test_thirty_concurrent_redemptions_across_replicas_yield_one_token(fleet, http):
    f = fleet()
    client_id = register_client_id(http, f.url)
    params, pkce, form = authorize_on(http, f.url, f.url, client_id)
    code = approve_on(http, f.url, form, params)
    data = token_data(f.url, client_id, code, pkce.verifier)

    def redeem(i: int) -> int:
        with httpx.Client(timeout=30) as c:
            return c.post(f"{f.replicas[i % 3].base}/token", data=data).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(redeem, range(30)))
    assert statuses.count(200) == 1, statuses
    assert all(s in (200, 400) for s in statuses), statuses


def test_refresh_rotation_and_replay_detection_across_replicas(fleet, http):
    f = fleet(extra_args=["--refresh-grace-seconds", "0"])
    a, b, c = (r.base for r in f.replicas)
    first = full_flow(http, f.url)
    r = http.post(f"{a}/token", data={"grant_type": "refresh_token",
                                      "refresh_token": first.refresh_token,
                                      "client_id": first.client_id})
    second = tokens_from(r, first.client_id)
    replay = http.post(f"{b}/token", data={"grant_type": "refresh_token",
                                           "refresh_token": first.refresh_token,
                                           "client_id": first.client_id})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    after = http.post(f"{c}/token", data={"grant_type": "refresh_token",
                                          "refresh_token": second.refresh_token,
                                          "client_id": first.client_id})
    assert after.status_code == 400, "a replay on one replica revokes the family on all"


def test_a_revocation_reaches_every_replica_within_a_second(fleet, http):
    f = fleet()
    tokens = full_flow(http, f.url)
    for r in f.replicas:
        assert mcp_status(http, r.base, tokens.access_token) == 200
    revoked = http.post(f"{f.replicas[0].base}/revoke",
                        data={"token": tokens.access_token, "client_id": tokens.client_id})
    assert revoked.status_code == 200
    start = time.monotonic()
    waiting = {1, 2}
    took = {}
    while waiting and time.monotonic() - start < PROPAGATION_BOUND:
        for i in sorted(waiting):
            if mcp_status(http, f.replicas[i].base, tokens.access_token) == 401:
                took[i] = time.monotonic() - start
                waiting.discard(i)
    assert not waiting, f"replicas {waiting} still accept a token revoked {PROPAGATION_BOUND} s ago"
    print(f"revocation reached the other replicas after {took}")


def test_a_killed_replica_leaves_the_fleet_serving_and_returns_with_the_same_keys(fleet, http):
    f = fleet()
    before = full_flow(http, f.url)
    kids = jwks_kids(http, f.replicas[0].base)
    f.kill(1)
    for _ in range(3):
        t = full_flow(http, f.url)
        assert McpClient(http, f.url, t.access_token).initialize().status == 200
    f.restart(1)
    assert jwks_kids(http, f.replicas[1].base) == kids, "an empty data dir, the same keys"
    assert mcp_status(http, f.replicas[1].base, before.access_token) == 200


def test_the_database_down_means_503_then_full_recovery(fleet, http, pg_cluster):
    f = fleet()
    tokens = full_flow(http, f.url)
    base = f.replicas[0].base
    pg_cluster.stop()
    try:
        start = time.monotonic()
        r = http.post(f"{base}/register", json={"redirect_uris": [REDIRECT_URI]})
        took = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "temporarily_unavailable"
        assert r.headers.get("retry-after")
        assert took < 10, f"the 503 took {took:.1f} s"
        assert http.get(f"{base}/readyz").status_code == 503
        assert mcp_status(http, base, tokens.access_token) == 200, \
            "a verified token keeps working while the database is away"
    finally:
        pg_cluster.start()
    deadline = time.monotonic() + 30
    while http.get(f"{base}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready again 30 s after the database returned"
    assert http.post(f"{base}/register", json={"redirect_uris": [REDIRECT_URI]}).status_code == 201
    assert full_flow(http, f.url).access_token


def test_keys_rotate_reaches_every_replica_and_old_tokens_still_validate(fleet, http):
    f = fleet(extra_args=["--key-check-seconds", "1"])
    old = full_flow(http, f.url)
    out = subprocess.run(
        [str(gateway_binary()), "keys", "rotate", "--store", "postgres",
         "--database-url", f.database_url],
        env={**os.environ, "MCP_GATEWAY_KEY_ENCRYPTION_KEY": f.key}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    new_kid = out.stdout.split()[3].rstrip(";")
    # Every replica re-reads the ring every second here (a minute by default).
    deadline = time.monotonic() + 15
    waiting = set(range(3))
    while waiting:
        assert time.monotonic() < deadline, f"replicas {waiting} never published {new_kid}"
        for i in sorted(waiting):
            if new_kid in jwks_kids(http, f.replicas[i].base):
                waiting.discard(i)
    for r in f.replicas:
        assert mcp_status(http, r.base, old.access_token) == 200
    assert unverified_header(old.access_token)["kid"] != new_kid


def test_the_official_typescript_sdk_client_through_the_balancer(fleet):
    f = fleet()
    script = REPO / "clients" / "ts" / "run.mjs"
    out = subprocess.run(["node", str(script)], env={**os.environ, "GATEWAY_URL": f.url},
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "1 passed, 0 failed" in out.stdout


def test_a_session_of_another_replica_is_404_so_the_client_initializes_again(fleet, http):
    f = fleet()
    tokens = full_flow(http, f.url)
    here = McpClient(http, f.replicas[0].base, tokens.access_token)
    assert here.initialize().status == 200
    session = here.session_id
    assert session
    elsewhere = http.post(
        f"{f.replicas[1].base}/mcp",
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={"Authorization": f"Bearer {tokens.access_token}", "Mcp-Session-Id": session,
                 "Accept": "application/json, text/event-stream",
                 "MCP-Protocol-Version": "2025-06-18"})
    assert elsewhere.status_code == 404, elsewhere.text
    # Through the balancer the session's requests stay on the replica that holds it.
    via = McpClient(http, f.url, tokens.access_token)
    assert via.initialize().status == 200
    for _ in range(10):
        assert via.list_tools().status == 200
