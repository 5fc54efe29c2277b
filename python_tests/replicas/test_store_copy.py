"""`store copy`: a single machine moves to PostgreSQL and nobody signs in again.

A gateway on the embedded SQLite store issues tokens and has its key rotated once; it
stops; `mcp-oauth-gateway store copy` moves its state into an empty database; a replica
on that database with an empty data dir then honours the access token (same keys, the
retired one still published), rotates the refresh token, and knows the client.
"""

from __future__ import annotations

import base64
import os
import subprocess

from flow import McpClient, full_flow, refresh, tokens_from, unverified_header
from gateway_proc import Gateway, gateway_binary


def test_a_sqlite_deployment_moves_to_postgres_without_anyone_signing_in_again(
        tmp_path, database_url, http):
    single = Gateway(tmp_path / "single").start()
    base = single.base
    try:
        before = full_flow(http, base)
    finally:
        single.stop()
    rotated = subprocess.run([str(gateway_binary()), "keys", "rotate", "--data-dir",
                              str(tmp_path / "single")], capture_output=True, text=True,
                             timeout=60)
    assert rotated.returncode == 0, rotated.stderr

    key = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "MCP_GATEWAY_KEY_ENCRYPTION_KEY": key}
    copy = subprocess.run([str(gateway_binary()), "store", "copy",
                           "--from", f"sqlite:{tmp_path / 'single' / 'gateway.db'}",
                           "--to", database_url], env=env, capture_output=True, text=True,
                          timeout=60)
    assert copy.returncode == 0, copy.stderr
    assert "1 clients, 1 grants, 1 refresh tokens" in copy.stdout, copy.stdout
    assert "and 2 signing keys" in copy.stdout, copy.stdout
    again = subprocess.run([str(gateway_binary()), "store", "copy",
                            "--from", f"sqlite:{tmp_path / 'single' / 'gateway.db'}",
                            "--to", database_url], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "empty" in again.stderr, again.stderr

    # The same public URL (the issuer and resource the tokens name), an empty data dir.
    port = base.rsplit(":", 1)[1]
    replica = Gateway(tmp_path / "replica", ["--store", "postgres", "--database-url", database_url],
                      addrs={"proxy": f"127.0.0.1:{port}"},
                      env={"MCP_GATEWAY_KEY_ENCRYPTION_KEY": key}).start()
    try:
        assert replica.base == base
        kids = [k["kid"] for k in http.get(f"{base}/.well-known/jwks.json").json()["keys"]]
        assert unverified_header(before.access_token)["kid"] in kids
        assert McpClient(http, base, before.access_token).initialize().status == 200
        after = tokens_from(refresh(http, base, before.client_id, before.refresh_token),
                            before.client_id)
        assert McpClient(http, base, after.access_token).initialize().status == 200
        assert unverified_header(after.access_token)["kid"] != \
            unverified_header(before.access_token)["kid"], "signed with the rotated key"
    finally:
        replica.stop()
