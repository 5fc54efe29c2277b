"""Several MCP servers behind one gateway (`[[routes]]`), each its own protected resource.

Two routes: `/alpha/mcp` in front of a recording streamable-HTTP server, `/beta/mcp` the
built-in server with a tool policy of its own. Each has RFC 9728 metadata at its
path-suffixed well-known URL naming its own resource, challenges naming that metadata, and
tokens bound to it (RFC 8707): a token for one is refused by the other. The official
TypeScript SDK client completes OAuth against a route path, discovering the path-suffixed
metadata from the challenge.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from flow import (McpClient, authorize_and_consent, exchange_code, parse_bearer_challenge,
                  register_client_id, tokens_from, unverified_claims)
from gateway_proc import REPO_ROOT, gateway_binary
from test_sso import RecordingUpstream


@pytest.fixture
def two_routes(gateway_factory, tmp_path):
    up = RecordingUpstream()
    cfg = tmp_path / "routes.toml"
    cfg.write_text(f"""
[[routes]]
path = "/alpha/mcp"
upstream = "{up.url}"
[routes.identity_headers]
subject = "X-MCP-Subject"

[[routes]]
path = "/beta/mcp"
tools = {{ add_note = "mcp:admin" }}
""")
    gw = gateway_factory("--config", str(cfg))
    yield gw, up
    up.close()


def token_for(http, base: str, path: str, scope: str = "mcp:read mcp:write"):
    cid = register_client_id(http, base)
    grant = authorize_and_consent(http, base, cid, scope=scope, resource=f"{base}{path}")
    return tokens_from(exchange_code(http, base, grant, resource=f"{base}{path}"), cid)


def test_each_route_is_its_own_resource(two_routes, http):
    gw, up = two_routes
    for path in ("/alpha/mcp", "/beta/mcp"):
        meta = http.get(f"{gw.base}/.well-known/oauth-protected-resource{path}")
        assert meta.status_code == 200, meta.text
        assert meta.json()["resource"] == f"{gw.base}{path}"
        assert meta.json()["authorization_servers"] == [gw.base]
        r = http.post(f"{gw.base}{path}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                      headers={"Accept": "application/json, text/event-stream"})
        assert r.status_code == 401
        ch = parse_bearer_challenge(r.headers["www-authenticate"])
        assert ch["resource_metadata"] == f"{gw.base}/.well-known/oauth-protected-resource{path}"
    # The root form names the first route.
    assert http.get(f"{gw.base}/.well-known/oauth-protected-resource").json()["resource"] \
        == f"{gw.base}/alpha/mcp"


def test_a_token_for_one_route_is_refused_by_the_other(two_routes, http):
    gw, up = two_routes
    alpha = token_for(http, gw.base, "/alpha/mcp")
    beta = token_for(http, gw.base, "/beta/mcp")
    assert unverified_claims(alpha.access_token)["aud"] == f"{gw.base}/alpha/mcp"
    assert unverified_claims(beta.access_token)["aud"] == f"{gw.base}/beta/mcp"

    a = McpClient(http, f"{gw.base}/alpha", alpha.access_token)
    assert a.initialize().status == 200
    assert up.headers and up.headers[-1]["x-mcp-subject"] == "local-user", "alpha's upstream"
    b = McpClient(http, f"{gw.base}/beta", beta.access_token)
    assert b.initialize().status == 200
    # beta's own policy: add_note needs mcp:admin there, so a read/write token does not see it.
    names = set(b.tools_by_name())
    assert "echo" in names and "add_note" not in names, names

    # /mcp is no resource when routes are configured: nothing is served there.
    assert McpClient(http, gw.base, alpha.access_token).initialize().status in (401, 404)
    for token, path in ((alpha.access_token, "/beta"), (beta.access_token, "/alpha")):
        wrong = McpClient(http, f"{gw.base}{path}", token).initialize()
        assert wrong.status == 401, f"{path}: {wrong.status} {wrong.text[:200]}"
        ch = parse_bearer_challenge(wrong.headers.get("www-authenticate"))
        assert ch.get("error") == "invalid_token", ch
        assert ch["resource_metadata"].endswith(f"oauth-protected-resource{path}/mcp")


def test_a_resource_the_gateway_does_not_serve_is_refused(two_routes, http):
    gw, _ = two_routes
    cid = register_client_id(http, gw.base)
    r = http.post(f"{gw.base}/token", data={"grant_type": "authorization_code", "code": "x",
                                            "client_id": cid, "redirect_uri": "http://x",
                                            "code_verifier": "x" * 43,
                                            "resource": f"{gw.base}/gamma/mcp"})
    assert r.status_code == 400
    from flow import authorize_params, pkce_s256
    params = authorize_params(cid, pkce_s256(), base=gw.base, resource=f"{gw.base}/gamma/mcp")
    r = http.get(f"{gw.base}/authorize", params=params)
    assert r.status_code == 302 and "error=invalid_target" in r.headers["location"]


def test_the_typescript_sdk_client_completes_oauth_against_a_route(two_routes):
    gw, _ = two_routes
    out = subprocess.run(["node", str(REPO_ROOT / "clients" / "ts" / "run.mjs")],
                         env={**os.environ, "GATEWAY_URL": gw.base, "MCP_PATH": "/beta/mcp"},
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "1 passed, 0 failed" in out.stdout


def test_route_settings_that_cannot_work_stop_the_start(tmp_path):
    cases = {
        'path = "/token"': "serves its own",
        'path = "mcp"': "path must look like",
        'path = "/a/mcp"\nupstream = "http://127.0.0.1:9/mcp"\nupstream_cmd = "x"': "not both",
    }
    for n, (route, why) in enumerate(cases.items()):
        cfg = tmp_path / f"bad-{n}.toml"
        cfg.write_text(f"[[routes]]\n{route}\n")
        p = subprocess.run([str(gateway_binary()), "--config", str(cfg), "--data-dir",
                            str(tmp_path / f"d{n}"), "--proxy-addr", "127.0.0.1:0",
                            "--mcp-addr", "127.0.0.1:0", "--routes-addr", "127.0.0.1:0",
                            "--jwks-addr", "127.0.0.1:0"], capture_output=True, timeout=60)
        assert p.returncode != 0 and why in p.stderr.decode(), p.stderr.decode()[-400:]
