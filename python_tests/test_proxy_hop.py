"""Both ways the public proxy reaches the gateway's own listeners behave the same:
`proxy_hop = "in_process"` (the default: the listener's router called in memory) and
`proxy_hop = "network"` (loopback TCP). One flow runs through each: discovery, the whole
OAuth flow, an MCP session with a tool call and an SSE stream, the JWKS, the client's
address as the backends see it (a rate limit per source), and the trace naming each
backend; the answers must match.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from flow import McpClient, full_flow, result_text


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
