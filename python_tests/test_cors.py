"""CORS for browser-based MCP clients: preflights on /token, /register and /mcp,
and WWW-Authenticate exposed on the actual 401 so a browser client can discover
the authorization server."""

import pytest

from flow import MCP_ACCEPT, parse_bearer_challenge

ORIGIN = "http://localhost:6274"


def _csv(value):
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def _preflight(http, url, method, headers):
    return http.options(url, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    })


def _allows_origin(r):
    allow = r.headers.get("access-control-allow-origin")
    assert allow in ("*", ORIGIN), f"Access-Control-Allow-Origin: {allow!r}; {dict(r.headers)}"


@pytest.mark.parametrize("path,req_headers", [
    ("/token", "content-type"),
    ("/register", "content-type"),
    ("/mcp", "authorization, content-type, mcp-protocol-version, mcp-session-id"),
])
def test_cors_preflight_is_answered(gateway, http, path, req_headers):
    r = _preflight(http, f"{gateway.base}{path}", "POST", req_headers)
    assert r.status_code in (200, 204), f"{r.status_code} {r.text[:200]}"
    _allows_origin(r)
    methods = _csv(r.headers.get("access-control-allow-methods"))
    assert "post" in methods or "*" in methods, r.headers
    allowed = _csv(r.headers.get("access-control-allow-headers"))
    for h in _csv(req_headers):
        # "*" never covers Authorization (Fetch spec), so it must be listed by name.
        assert h in allowed or (h != "authorization" and "*" in allowed), (h, allowed)


def test_www_authenticate_is_exposed_on_401(gateway, http):
    r = http.post(f"{gateway.base}/mcp", content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                  headers={"Origin": ORIGIN, "Content-Type": "application/json",
                           "Accept": MCP_ACCEPT})
    assert r.status_code == 401
    _allows_origin(r)
    exposed = _csv(r.headers.get("access-control-expose-headers"))
    assert "www-authenticate" in exposed or "*" in exposed, r.headers
    assert parse_bearer_challenge(r.headers.get("www-authenticate"))["scheme"] == "bearer"


def test_metadata_is_readable_cross_origin(gateway, http):
    for path in ("/.well-known/oauth-protected-resource/mcp",
                 "/.well-known/oauth-authorization-server"):
        r = http.get(f"{gateway.base}{path}", headers={"Origin": ORIGIN})
        assert r.status_code == 200
        _allows_origin(r)
