"""Upstream MCP servers: the reference `@modelcontextprotocol/server-everything` (npm, pinned in
clients/thirdparty/package-lock.json) behind the gateway, both ways:

- its streamable-HTTP mode as `--upstream http://127.0.0.1:PORT/mcp`, started by the test;
- its stdio mode as `--upstream-cmd "node …/dist/index.js stdio"`, spawned by the gateway.

An OAuth client (the built-in authorization server, through the proxy) calls its tools; the
scope policy hides and refuses the tools the config gives `mcp:admin`; an upstream killed
mid-test gives 502 with a JSON-RPC error, and a new session works once it is back.

server-everything listens on `PORT` on every interface; clients/thirdparty/loopback.cjs is
preloaded so that it binds 127.0.0.1 only. Every process here is started by the test and
stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from flow import McpClient, full_flow, parse_bearer_challenge, result_text
from gateway_proc import REPO_ROOT, gateway_binary

THIRDPARTY = REPO_ROOT / "clients" / "thirdparty"
EVERYTHING = (THIRDPARTY / "node_modules" / "@modelcontextprotocol" / "server-everything"
              / "dist" / "index.js")
LOOPBACK = THIRDPARTY / "loopback.cjs"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# server-everything's tools that the test config reserves for mcp:admin.
ADMIN_TOOLS = ("get-env", "trigger-long-running-operation")
# A few of its tools any mcp:read token may call (default_tool = mcp:read).
READ_TOOLS = ("echo", "get-sum", "get-tiny-image")


# -- processes -------------------------------------------------------------------------

def free_port() -> int:
    """A port that was free a moment ago (bind 0 on loopback, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_bin() -> str:
    return os.environ.get("NODE_BIN", "node")


def require_thirdparty() -> None:
    if not EVERYTHING.exists():
        pytest.fail(f"{EVERYTHING.relative_to(REPO_ROOT)} is missing: run `npm ci` in "
                    "clients/thirdparty (python3 run_tests.py flow does it)")


class Everything:
    """server-everything in streamable-HTTP mode on 127.0.0.1:port; output goes to a file."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> "Everything":
        env = dict(os.environ, PORT=str(self.port), NO_COLOR="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [node_bin(), "-r", str(LOOPBACK), str(EVERYTHING), "streamableHttp"],
                cwd=THIRDPARTY, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server-everything not listening on {self.port} within "
                                     f"{READY_TIMEOUT}s\n{self.log_tail()}")
            try:
                # Doubles as the poll interval and as an early exit check.
                code = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"server-everything exited with {code}\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM our own PID and wait; SIGKILL (same PID) only if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        return "\n".join(lines[-n:]) or "(no output)"


@pytest.fixture
def everything(tmp_path, request):
    require_thirdparty()
    upstream = Everything(free_port(), tmp_path / "server-everything.log")
    upstream.start()
    yield upstream
    upstream.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("---- server-everything log ----")
        print(upstream.log_tail(100))


def write_config(tmp_path: Path, upstream_url: str | None = None) -> Path:
    lines = []
    if upstream_url:
        lines.append(f"upstream = {json.dumps(upstream_url)}")
    lines.append("")
    lines.append("[scopes.tools]")
    for name in ADMIN_TOOLS:
        lines.append(f'{json.dumps(name)} = "mcp:admin"')
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_has_flag(flag: str) -> bool:
    out = subprocess.run([str(gateway_binary()), "--help"], capture_output=True, text=True,
                         timeout=30)
    return flag in out.stdout


# -- MCP assertions --------------------------------------------------------------------

def initialized(http, base: str, token: str, *, server_name: str | None = "everything") -> McpClient:
    mcp = McpClient(http, base, token)
    reply = mcp.initialize()
    assert reply.status == 200, f"initialize: {reply.status} {reply.text[:500]}"
    info = reply.result.get("serverInfo", {})
    if server_name is not None:
        assert server_name in info.get("name", ""), f"not server-everything behind /mcp: {info}"
    return mcp


def assert_echo(mcp: McpClient) -> None:
    marker = "through the gateway " + secrets.token_hex(6)
    result = mcp.call_tool("echo", {"message": marker}).result
    assert not result.get("isError"), result
    assert result_text(result) == f"Echo: {marker}", result


def assert_read_token_view(mcp: McpClient) -> dict:
    tools = mcp.tools_by_name()
    for name in READ_TOOLS:
        assert name in tools, f"{name} missing from {sorted(tools)}"
    for name in ADMIN_TOOLS:
        assert name not in tools, f"admin-scoped {name} listed for a read/write token"
    return tools


def assert_insufficient_scope(reply, scope: str = "mcp:admin") -> None:
    assert reply.status == 403, f"expected 403, got {reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch.get("error") == "insufficient_scope", ch
    assert ch.get("scope") == scope, ch


def assert_bad_gateway(reply) -> dict:
    assert reply.status == 502, f"expected 502, got {reply.status} {reply.text[:300]}"
    ctype = reply.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"502 content-type {ctype!r}: {reply.text[:300]}"
    body = json.loads(reply.text)
    assert body.get("jsonrpc") == "2.0", body
    assert isinstance(body.get("error"), dict) and isinstance(body["error"].get("code"), int), body
    assert body["error"].get("message"), body
    return body


# -- streamable HTTP upstream ------------------------------------------------------------

def test_upstream_everything_http_tools_policy_and_restart(everything, gateway_factory, http,
                                                           tmp_path):
    gw = gateway_factory("--config", str(write_config(tmp_path, everything.url)))
    tokens = full_flow(http, gw.base, scope="mcp:read mcp:write")
    assert set(tokens.scope.split()) == {"mcp:read", "mcp:write"}, tokens.scope

    mcp = initialized(http, gw.base, tokens.access_token)
    assert mcp.session_id, "server-everything's Mcp-Session-Id did not come through"
    assert_read_token_view(mcp)
    assert_echo(mcp)
    r = mcp.call_tool("get-sum", {"a": 19, "b": 23}).result
    assert "is 42" in result_text(r), r

    # Admin-scoped upstream tools: hidden above, refused here, for every one of them.
    for name in ADMIN_TOOLS:
        assert_insufficient_scope(mcp.call_tool(name, {}))

    # The upstream dies mid-session: 502 with a JSON-RPC error, for the live session and
    # for a brand-new initialize alike.
    everything.stop()
    assert_bad_gateway(mcp.call_tool("echo", {"message": "anyone there?"}))
    fresh = McpClient(http, gw.base, tokens.access_token)
    assert_bad_gateway(fresh.initialize())

    # It comes back on the same port: a new session works again, policy intact.
    everything.start()
    again = initialized(http, gw.base, tokens.access_token)
    assert again.session_id and again.session_id != mcp.session_id
    assert_read_token_view(again)
    assert_echo(again)
    assert_insufficient_scope(again.call_tool("get-env", {}))


def test_upstream_everything_http_502_error_answers_the_request_id(everything, gateway_factory,
                                                                   http, tmp_path):
    gw = gateway_factory("--config", str(write_config(tmp_path, everything.url)))
    tokens = full_flow(http, gw.base, scope="mcp:read")
    mcp = initialized(http, gw.base, tokens.access_token)
    everything.stop()
    reply = mcp.post({"jsonrpc": "2.0", "id": "call-42", "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "x"}}})
    body = assert_bad_gateway(reply)
    assert body.get("id") == "call-42", body


def test_upstream_everything_http_admin_token_sees_and_calls_admin_tools(everything,
                                                                       gateway_factory, http,
                                                                       tmp_path):
    gw = gateway_factory("--config", str(write_config(tmp_path, everything.url)))
    tokens = full_flow(http, gw.base, scope="mcp:admin")
    mcp = initialized(http, gw.base, tokens.access_token)
    tools = mcp.tools_by_name()
    for name in (*ADMIN_TOOLS, *READ_TOOLS):
        assert name in tools, f"{name} missing for an mcp:admin token: {sorted(tools)}"
    result = mcp.call_tool("get-env", {}).result
    env = json.loads(result_text(result))
    assert env.get("PORT") == str(everything.port), "get-env did not run in the upstream"
    assert_echo(mcp)


def test_upstream_everything_http_session_delete_passes_through(everything, gateway_factory,
                                                               http, tmp_path):
    gw = gateway_factory("--config", str(write_config(tmp_path, everything.url)))
    tokens = full_flow(http, gw.base, scope="mcp:read")
    mcp = initialized(http, gw.base, tokens.access_token)
    assert_echo(mcp)
    r = http.delete(mcp.url, headers=mcp.headers())
    assert r.status_code == 200, f"DELETE: {r.status_code} {r.text[:300]}"
    # The upstream forgot the session: its own 4xx comes back, not a gateway error.
    reply = mcp.call_tool("echo", {"message": "after delete"})
    assert reply.status in (400, 404), f"{reply.status} {reply.text[:300]}"
    # Without a token, DELETE never reaches the upstream.
    again = initialized(http, gw.base, tokens.access_token)
    h = again.headers()
    del h["Authorization"]
    r = http.delete(again.url, headers=h)
    assert r.status_code == 401, f"DELETE without a token: {r.status_code} {r.text[:300]}"
    assert_echo(again)


def test_upstream_everything_http_no_token_is_401(everything, gateway_factory, http, tmp_path):
    gw = gateway_factory("--config", str(write_config(tmp_path, everything.url)))
    r = http.post(gw.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                  headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401, f"{r.status_code} {r.text[:300]}"
    ch = parse_bearer_challenge(r.headers.get("www-authenticate"))
    assert ch.get("resource_metadata") == f"{gw.base}/.well-known/oauth-protected-resource/mcp"


# -- stdio upstream ------------------------------------------------------------------------

def test_upstream_everything_stdio_via_upstream_cmd(gateway_factory, http, tmp_path):
    require_thirdparty()
    if not gateway_has_flag("--upstream-cmd"):
        pytest.skip("the gateway binary has no --upstream-cmd flag yet (stdio upstreams)")
    command = f"{shlex.quote(node_bin())} {shlex.quote(str(EVERYTHING))} stdio"
    gw = gateway_factory("--config", str(write_config(tmp_path)), "--upstream-cmd", command)
    tokens = full_flow(http, gw.base, scope="mcp:read mcp:write")
    # The gateway answers initialize itself here (its own serverInfo), so that is not checked;
    # the tools below can only come from server-everything.
    mcp = initialized(http, gw.base, tokens.access_token, server_name=None)
    assert_read_token_view(mcp)
    assert_echo(mcp)
    r = mcp.call_tool("get-sum", {"a": 40, "b": 2}).result
    assert "is 42" in result_text(r), r
    assert_insufficient_scope(mcp.call_tool("get-env", {}))
    # A second session works too (its own child, or the shared one).
    other = initialized(http, gw.base, tokens.access_token, server_name=None)
    assert_echo(other)
    assert_echo(mcp)
