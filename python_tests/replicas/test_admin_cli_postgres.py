"""`mcp-oauth-gateway admin` on a PostgreSQL store: the command lists and revokes on the
database a running replica uses, and the replica refuses the revoked access token within
seconds (it follows the database's revocation log) and its refresh token at once.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time

from flow import McpClient, full_flow, refresh
from gateway_proc import Gateway, gateway_binary

SYNC_DEADLINE = 10.0


def test_admin_revoke_on_postgres_reaches_the_running_replica(tmp_path, database_url, http):
    key = base64.b64encode(os.urandom(32)).decode()
    gw = Gateway(tmp_path / "replica", ["--store", "postgres", "--database-url", database_url],
                 env={"MCP_GATEWAY_KEY_ENCRYPTION_KEY": key}).start()
    try:
        tokens = full_flow(http, gw.base, scope="mcp:read")
        assert McpClient(http, gw.base, tokens.access_token).initialize().status == 200

        def admin(*args: str) -> subprocess.CompletedProcess:
            # Its own empty data dir: everything it needs is in the database.
            return subprocess.run([str(gateway_binary()), "admin", *args, "--store", "postgres",
                                   "--database-url", database_url,
                                   "--data-dir", str(tmp_path / "cli")],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                                  check=False)

        listed = admin("clients", "--json")
        assert listed.returncode == 0, listed.stderr.decode()
        assert [c["client_name"] for c in json.loads(listed.stdout)
                if c["client_id"] == tokens.client_id] == ["pytest flow client"]
        grants = admin("grants", "--json")
        assert grants.returncode == 0, grants.stderr.decode()
        [grant] = json.loads(grants.stdout)
        assert grant["client_id"] == tokens.client_id

        refused = admin("revoke", "--grant", grant["id"])
        assert refused.returncode == 2 and b"--yes" in refused.stderr
        assert McpClient(http, gw.base, tokens.access_token).initialize().status == 200

        done = admin("revoke", "--grant", grant["id"], "--yes")
        assert done.returncode == 0, done.stderr.decode()
        deadline = time.monotonic() + SYNC_DEADLINE
        status = McpClient(http, gw.base, tokens.access_token).initialize().status
        while status != 401 and time.monotonic() < deadline:
            select.select([], [], [], 0.1)
            status = McpClient(http, gw.base, tokens.access_token).initialize().status
        assert status == 401
        r = refresh(http, gw.base, tokens.client_id, tokens.refresh_token)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    finally:
        gw.stop()
