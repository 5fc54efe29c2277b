"""SIGTERM with streams open: the gateway ends them and exits within
`shutdown_timeout_seconds`, also when an upstream's SSE stream would never end by itself,
and with the built-in server and stdio upstreams (one child per session, or one shared),
whose children go with it.

The upstream here is a tiny streamable-HTTP server (standard library): it answers every
JSON-RPC request with a session id, and a GET opens an event stream that only ends when
the test stops the server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from flow import McpClient, full_flow
from gateway_proc import gateway_binary


class EndlessUpstream:
    def __init__(self):
        self.stopping = threading.Event()
        self.streaming = threading.Event()  # set once a GET stream is being answered
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_POST(self):
                msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "id" not in msg:
                    self.send_response(202)
                    self.end_headers()
                    return
                body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "serverInfo": {"name": "endless", "version": "1"}}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Mcp-Session-Id", "endless-session")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                owner.streaming.set()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                while not owner.stopping.is_set():
                    try:
                        self.wfile.write(b": still here\n\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    owner.stopping.wait(0.2)  # an event every 0.2 s until the test ends

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mcp"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sigterm_with_an_upstream_stream_open_exits_within_the_shutdown_timeout(
        gateway_factory, http, tmp_path):
    upstream = EndlessUpstream()
    config = tmp_path / "gateway.toml"
    config.write_text("shutdown_timeout_seconds = 1\n")
    try:
        gw = gateway_factory("--upstream", upstream.url, "--config", str(config))
        tokens = full_flow(http, gw.base)
        mcp = McpClient(http, gw.base, tokens.access_token)
        assert mcp.initialize().status == 200
        opened = threading.Event()

        def listen():
            headers = {**mcp.headers(), "Accept": "text/event-stream"}
            try:
                with httpx.Client(timeout=None) as c, \
                        c.stream("GET", mcp.url, headers=headers) as r:
                    assert r.status_code == 200
                    for _ in r.iter_raw():
                        opened.set()
            except httpx.HTTPError:
                pass  # the gateway closed it: what this test wants

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(30), "the SSE stream never opened through the gateway"
        assert upstream.streaming.is_set()
        code = gw.stop()
        assert code == 0, f"exit {code}\n{gw.log_tail()}"
        gw.wait_for_log("closing them")
        reader.join(30)
        assert not reader.is_alive(), "the client's stream was not ended"
    finally:
        upstream.close()


def children_of(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(c) for c in text)
    return out


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie awaiting its new parent counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("kind", ["builtin", "stdio", "stdio-shared"])
def test_sigterm_with_a_stream_open_ends_it_and_the_stdio_children(
        kind, gateway_factory, http, tmp_path):
    text = "shutdown_timeout_seconds = 1\n"
    args = []
    if kind.startswith("stdio"):
        # The built-in demo server on stdio, as the upstream: no third-party runtime needed.
        args = ["--upstream-cmd", f"{gateway_binary()} serve-stdio"]
        if kind == "stdio-shared":
            text += "upstream_cmd_per_session = false\n"
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    gw = gateway_factory("--config", str(config), *args)
    tokens = full_flow(http, gw.base)
    mcp = McpClient(http, gw.base, tokens.access_token)
    assert mcp.initialize().status == 200
    assert mcp.list_tools().status == 200
    opened = threading.Event()

    def listen():
        headers = {**mcp.headers(), "Accept": "text/event-stream"}
        try:
            with httpx.Client(timeout=None) as c, \
                    c.stream("GET", mcp.url, headers=headers) as r:
                assert r.status_code == 200
                opened.set()
                for _ in r.iter_raw():
                    pass
        except httpx.HTTPError:
            pass  # the gateway closed it: what this test wants

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert opened.wait(30), "the SSE stream never opened through the gateway"
    children = children_of(gw.proc.pid)
    if kind.startswith("stdio"):
        assert children, "no stdio child running"
    code = gw.stop()
    assert code == 0, f"exit {code}\n{gw.log_tail()}"
    reader.join(30)
    assert not reader.is_alive(), "the client's stream was not ended"
    assert all(gone(pid) for pid in children), f"children left running: {children}"
