"""Both ways the public proxy reaches the gateway's own listeners behave the same:
`proxy_hop = "in_process"` (the default: the listener's router called in memory) and
`proxy_hop = "network"` (loopback TCP). One flow runs through each: discovery, the whole
OAuth flow, an MCP session with a tool call and an SSE stream, the JWKS, the client's
address as the backends see it (a rate limit per source), and the trace naming each
backend; the answers must match.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from flow import McpClient, _sse_messages, full_flow, result_text


def run_everything(gw, http) -> dict:
    out = {}
    out["as_metadata"] = http.get(f"{gw.base}/.well-known/oauth-authorization-server").json()["issuer"] == gw.base
    out["jwks"] = len(http.get(f"{gw.base}/.well-known/jwks.json").json()["keys"])
    tokens = full_flow(http, gw.base)
    mcp = McpClient(http, gw.base, tokens.access_token)
    out["initialize"] = mcp.initialize().status
    out["echo"] = result_text(mcp.call_tool("echo", {"message": "hop"}).result)
    opened = threading.Event()
    with httpx.Client(timeout=10.0) as c, c.stream(
            "GET", mcp.url, headers={**mcp.headers(), "Accept": "text/event-stream"}) as r:
        out["sse"] = (r.status_code, r.headers.get("content-type", "").split(";")[0])
        opened.set()
    out["no_token"] = http.post(f"{gw.base}/mcp", json={}).status_code
    # The source address the backends see is the client's (the register limit counts it).
    statuses = [http.post(f"{gw.base}/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]}).status_code
                for _ in range(3)]
    out["register_limit"] = statuses
    trace = http.get(f"{gw.base}/debug/requests").json()["requests"]
    out["backends"] = sorted({(e["path"].split("?")[0], e["backend"]) for e in trace
                              if e["path"] in ("/mcp", "/token", "/.well-known/jwks.json")})
    return out


@pytest.mark.parametrize("hop", ["in_process", "network"])
def test_both_hops_answer_alike(hop, gateway_factory, http, tmp_path):
    cfg = tmp_path / "hop.toml"
    cfg.write_text(f'proxy_hop = "{hop}"\nregister_rate_per_minute = 2\n')
    gw = gateway_factory("--config", str(cfg), "--debug-trace")
    got = run_everything(gw, http)
    assert got == {
        "as_metadata": True,
        "jwks": 1,
        "initialize": 200,
        "echo": "hop",
        "sse": (200, "text/event-stream"),
        "no_token": 401,
        "register_limit": [201, 429, 429],  # full_flow registered once already
        "backends": [("/.well-known/jwks.json", "jwks"), ("/mcp", "mcp"), ("/token", "routes")],
    }, got


@pytest.mark.parametrize("hop", ["in_process", "network"])
def test_a_request_body_slower_than_the_hops_wait_still_reaches_the_tool(hop, gateway_factory, http,
                                                                         tmp_path):
    """The network hop holds a POST's head back for its body's first frame, 200 ms at most
    (`FIRST_FRAME_WAIT`), so both leave in one write. A body that comes slower than that
    (here: chunked, its second half after 0.5 s) is sent on as it streams, whole."""
    cfg = tmp_path / "hop.toml"
    cfg.write_text(f'proxy_hop = "{hop}"\n')
    gw = gateway_factory("--config", str(cfg))
    mcp = McpClient(http, gw.base, full_flow(http, gw.base).access_token)
    assert mcp.initialize().status == 200
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"message": "slow body"}}}).encode()

    def halves():
        yield body[:25]
        time.sleep(0.5)  # the client's pace, not a wait for the server
        yield body[25:]

    with http.stream("POST", mcp.url, content=halves(), headers=mcp.headers()) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        answers = [m for m in _sse_messages(r.iter_lines()) if m.get("id") == 7]
    assert [result_text(a["result"]) for a in answers] == ["slow body"], answers
