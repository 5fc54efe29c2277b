"""`mcp-oauth-gateway admin clients|grants|revoke`, the operator's page on the command line,
against a running gateway's own data dir: it lists the client by name and its grant, refuses
to revoke without --yes when nobody can be asked, asks on a terminal, and a revocation made
by the command reaches the running gateway (it follows the store's revocation log every
second): the access token is refused by /mcp, the refresh token is invalid_grant.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from flow import McpClient, full_flow, refresh, unverified_claims
from gateway_proc import gateway_binary

CLI_TIMEOUT = 60
# How long a running gateway may take to refuse a token revoked by another process: it
# reads the revocation log every second.
SYNC_DEADLINE = 10.0


def admin(data_dir, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `admin ARGS --data-dir DATA_DIR` with no terminal (stdin a pipe)."""
    return subprocess.run([str(gateway_binary()), "admin", *args, "--data-dir", str(data_dir)],
                          input=(stdin or "").encode(), capture_output=True,
                          timeout=CLI_TIMEOUT, check=False)


def admin_json(data_dir, what: str) -> list[dict]:
    p = admin(data_dir, what, "--json")
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def mcp_status(http, gw, token: str) -> int:
    """The status of one `initialize` with `token`: a single request, so a revocation that
    lands mid-way cannot fail a handshake's second step instead of answering."""
    r = http.post(f"{gw.base}/mcp", headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "admin-cli-test", "version": "1"}}})
    return r.status_code


def wait_refused(http, gw, token: str) -> int:
    """Poll /mcp with `token` until it is refused or the deadline passes; the last status."""
    deadline = time.monotonic() + SYNC_DEADLINE
    status = mcp_status(http, gw, token)
    while status != 401 and time.monotonic() < deadline:
        select.select([], [], [], 0.1)
        status = mcp_status(http, gw, token)
    return status


def test_listing_and_revoking_a_grant_reaches_the_running_gateway(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    assert mcp_status(http, gateway, tokens.access_token) == 200
    sub = unverified_claims(tokens.access_token)["sub"]

    clients = admin_json(gateway.data_dir, "clients")
    mine = [c for c in clients if c["client_id"] == tokens.client_id]
    assert len(mine) == 1, clients
    assert mine[0]["client_name"] == "pytest flow client"
    assert mine[0]["auth_method"] == "none"
    assert mine[0]["live_grants"] == 1 and mine[0]["pinned"] is False
    assert mine[0]["created"].endswith("Z") and mine[0]["last_used"].endswith("Z")

    grants = admin_json(gateway.data_dir, "grants")
    assert len(grants) == 1, grants
    grant = grants[0]
    assert grant["person"] == sub
    assert grant["client_id"] == tokens.client_id
    assert grant["client_name"] == "pytest flow client"
    assert grant["scopes"] == ["mcp:read"]
    assert grant["created"] and grant["expires"]

    text = admin(gateway.data_dir, "grants")
    assert text.returncode == 0
    out = text.stdout.decode()
    assert out.splitlines()[0].split()[:2] == ["GRANT", "ID"]
    for shown in (grant["id"], sub, "pytest flow client", tokens.client_id, "mcp:read"):
        assert shown in out, shown
    table = admin(gateway.data_dir, "clients").stdout.decode()
    assert "pytest flow client" in table and tokens.client_id in table
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in out + table

    # Nobody to ask and no --yes: refused, nothing revoked.
    p = admin(gateway.data_dir, "revoke", "--grant", grant["id"], stdin="y\n")
    assert p.returncode == 2, p
    err = p.stderr.decode()
    assert "--yes" in err and grant["id"] in err and "pytest flow client" in err, err
    assert admin_json(gateway.data_dir, "grants") == grants
    assert mcp_status(http, gateway, tokens.access_token) == 200

    p = admin(gateway.data_dir, "revoke", "--grant", grant["id"], "--yes")
    assert p.returncode == 0, p.stderr.decode()
    assert "revoked grant" in p.stdout.decode()
    assert wait_refused(http, gateway, tokens.access_token) == 401
    reply = McpClient(http, gateway.base, tokens.access_token).initialize()
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    r = refresh(http, gateway.base, tokens.client_id, tokens.refresh_token)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert admin_json(gateway.data_dir, "grants") == []
    assert [c["live_grants"] for c in admin_json(gateway.data_dir, "clients")
            if c["client_id"] == tokens.client_id] == [0]


def test_revoking_a_client_deletes_it_and_ends_its_tokens(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    p = admin(gateway.data_dir, "revoke", "--client", tokens.client_id)
    assert p.returncode == 2 and "--yes" in p.stderr.decode()
    p = admin(gateway.data_dir, "revoke", "--client", tokens.client_id, "--yes")
    assert p.returncode == 0, p.stderr.decode()
    assert "deleted its registration" in p.stdout.decode()
    assert wait_refused(http, gateway, tokens.access_token) == 401
    r = refresh(http, gateway.base, tokens.client_id, tokens.refresh_token)
    assert r.status_code in (400, 401), r.text
    assert all(c["client_id"] != tokens.client_id for c in admin_json(gateway.data_dir, "clients"))


def test_unknown_ids_and_missing_stores_are_exit_code_2(gateway, tmp_path):
    for args in (("revoke", "--grant", "no-such-grant", "--yes"),
                 ("revoke", "--client", "no-such-client", "--yes")):
        p = admin(gateway.data_dir, *args)
        assert p.returncode == 2, p
        assert "no-such-" in p.stderr.decode()
    p = admin(gateway.data_dir, "revoke")
    assert p.returncode == 2
    p = admin(tmp_path / "nowhere", "clients")
    assert p.returncode == 2 and "no gateway database" in p.stderr.decode()
    assert not (tmp_path / "nowhere").exists(), "a wrong --data-dir must not make a database"


def test_pinned_clients_of_the_config_are_listed(gateway_factory, tmp_path):
    cfg = tmp_path / "pinned.toml"
    cfg.write_text("[[clients]]\n"
                   'client_id = "pinned-cli-client"\n'
                   'client_name = "Pinned by the operator"\n'
                   'redirect_uris = ["http://127.0.0.1:9/cb"]\n')
    gw = gateway_factory("--config", str(cfg))
    p = subprocess.run([str(gateway_binary()), "admin", "clients", "--json", "--config", str(cfg),
                        "--data-dir", str(gw.data_dir)],
                       capture_output=True, timeout=CLI_TIMEOUT, check=False)
    assert p.returncode == 0, p.stderr.decode()
    rows = json.loads(p.stdout)
    assert rows[0] == {"client_id": "pinned-cli-client", "client_name": "Pinned by the operator",
                       "auth_method": "none", "pinned": True, "created": None,
                       "last_used": None, "live_grants": 0}


def test_on_a_terminal_revoke_asks_and_no_means_no(gateway, http):
    import pty

    tokens = full_flow(http, gateway.base, scope="mcp:read")
    grant = admin_json(gateway.data_dir, "grants")[0]

    def ask(answer: bytes) -> tuple[int, bytes]:
        argv = [str(gateway_binary()), "admin", "revoke", "--grant", grant["id"],
                "--data-dir", str(gateway.data_dir)]
        pid, fd = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty
            os.execv(argv[0], argv)
        seen = b""
        try:
            while b"[y/N]" not in seen:
                ready, _, _ = select.select([fd], [], [], 30)
                assert ready, f"no question on the terminal: {seen!r}"
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"no question on the terminal: {seen!r}"
                seen += chunk
            os.write(fd, answer)
            while True:
                ready, _, _ = select.select([fd], [], [], 30)
                if not ready:
                    break
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed its terminal
                    break
                if not chunk:
                    break
                seen += chunk
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(fd)
        return os.waitstatus_to_exitcode(status), seen

    code, seen = ask(b"n\n")
    assert code == 1, seen
    assert b"Revoke grant" in seen and b"pytest flow client" in seen and b"mcp:read" in seen
    assert b"nothing revoked" in seen
    assert mcp_status(http, gateway, tokens.access_token) == 200

    code, seen = ask(b"y\n")
    assert code == 0, seen
    assert b"revoked grant" in seen
    assert wait_refused(http, gateway, tokens.access_token) == 401
