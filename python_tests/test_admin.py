"""The operator's page (/admin) against the real binary: it lists what the gateway holds,
revokes a grant so the client's next MCP request is a 401, refuses requests that are not
from this machine unless an admin signs in, and error bodies name the request id.

/admin is reached through the public proxy when the proxy routes it to the authorization
server, else on the routes listener directly (a loopback peer either way).
"""

from __future__ import annotations

import subprocess

import httpx

from flow import (REDIRECT_URI, McpClient, authorize_params, full_flow, get_authorize,
                  location_query, parse_consent_form, parse_forms, pkce_s256, post_consent,
                  refresh, register_client_id, unverified_claims)
from gateway_proc import gateway_binary


def admin_base(http: httpx.Client, gw) -> str:
    probe = http.get(f"{gw.base}/admin")
    if probe.status_code == 200 and "Gateway operator" in probe.text:
        return gw.base
    return f"http://{gw.routes_addr}"


def forms(html: str, field: str) -> list[dict]:
    """Hidden inputs of each form that has the hidden input `field`."""
    out = []
    for f in parse_forms(html):
        hidden = {i.get("name"): i.get("value", "") for i in f["inputs"]
                  if i.get("type", "").lower() == "hidden" and i.get("name")}
        if field in hidden:
            out.append({"action": f["attrs"].get("action", ""), **hidden})
    return out


def hash_of(password: str) -> str:
    p = subprocess.run([str(gateway_binary()), "hash-password"], input=password.encode() + b"\n",
                       capture_output=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


def test_revoking_a_grant_on_the_page_ends_mcp_access(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 200
    base = admin_base(http, gateway)

    page = http.get(f"{base}/admin")
    assert page.status_code == 200, page.text[:500]
    assert page.headers["cache-control"] == "no-store"
    assert tokens.client_id in page.text
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in page.text
    grants = forms(page.text, "grant_id")
    assert len(grants) == 1, grants
    assert grants[0]["action"] == "/admin/grants/revoke"
    ask = http.post(f"{base}{grants[0]['action']}",
                    data={"csrf_token": grants[0]["csrf_token"],
                          "grant_id": grants[0]["grant_id"]})
    assert ask.status_code == 200, ask.text[:500]
    confirm = forms(ask.text, "confirm")
    assert len(confirm) == 1, confirm
    revoke = http.post(f"{base}{confirm[0]['action']}", data=confirm[0])
    assert revoke.status_code == 303, revoke.text[:500]

    reply = McpClient(http, gateway.base, tokens.access_token).initialize()
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    r = refresh(http, gateway.base, tokens.client_id, tokens.refresh_token)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    after = http.get(f"{base}/admin")
    assert "admin_grant_revoked" in after.text
    assert not forms(after.text, "grant_id")


def test_revoking_asks_first_and_only_the_confirmed_post_revokes(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    base = admin_base(http, gateway)
    page = http.get(f"{base}/admin").text
    grant = forms(page, "grant_id")[0]
    client = next(f for f in forms(page, "client_id") if f["client_id"] == tokens.client_id)

    ask = http.post(f"{base}/admin/grants/revoke",
                    data={"csrf_token": grant["csrf_token"], "grant_id": grant["grant_id"]})
    assert ask.status_code == 200, ask.text[:500]
    assert ask.headers["cache-control"] == "no-store"
    assert "script-src" not in ask.headers["content-security-policy"]
    assert "Revoke this grant?" in ask.text
    sub = unverified_claims(tokens.access_token)["sub"]
    for shown in (f"<strong>{sub}</strong>", "pytest flow client", tokens.client_id,
                  "mcp:read"):
        assert shown in ask.text, shown
    assert 'href="/admin"' in ask.text and "Cancel" in ask.text
    confirm = forms(ask.text, "confirm")
    assert confirm == [{"action": "/admin/grants/revoke", "csrf_token": grant["csrf_token"],
                        "grant_id": grant["grant_id"], "confirm": "yes"}]
    # Asking revoked nothing.
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 200
    assert forms(http.get(f"{base}/admin").text, "grant_id")

    ask = http.post(f"{base}/admin/clients/revoke",
                    data={"csrf_token": client["csrf_token"], "client_id": tokens.client_id})
    assert ask.status_code == 200, ask.text[:500]
    assert "Revoke this client?" in ask.text and tokens.client_id in ask.text
    assert "<strong>pytest flow client</strong>" in ask.text
    assert 'id="grants">1<' in ask.text
    assert "registered" in ask.text
    assert forms(ask.text, "confirm")[0]["client_id"] == tokens.client_id
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 200

    # A forged confirmation is refused before anything: the checks come first.
    r = http.post(f"{base}/admin/grants/revoke",
                  data={"grant_id": grant["grant_id"], "csrf_token": "x" * 43, "confirm": "yes"})
    assert r.status_code == 403
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 200

    revoke = http.post(f"{base}/admin/grants/revoke", data=confirm[0])
    assert revoke.status_code == 303, revoke.text[:500]
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 401
    r = refresh(http, gateway.base, tokens.client_id, tokens.refresh_token)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    # An unknown id is a 404, not a question.
    r = http.post(f"{base}/admin/clients/revoke",
                  data={"csrf_token": client["csrf_token"], "client_id": "no-such-client"})
    assert r.status_code == 404


def test_a_forged_post_revokes_nothing(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    base = admin_base(http, gateway)
    grant = forms(http.get(f"{base}/admin").text, "grant_id")[0]
    for data in ({"grant_id": grant["grant_id"]},
                 {"grant_id": grant["grant_id"], "csrf_token": "x" * 43}):
        r = http.post(f"{base}/admin/grants/revoke", data=data)
        assert r.status_code == 403
    r = http.post(f"{base}/admin/grants/revoke",
                  data={"grant_id": grant["grant_id"], "csrf_token": grant["csrf_token"]},
                  headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert McpClient(http, gateway.base, tokens.access_token).initialize().status == 200


def test_a_forwarded_remote_client_is_refused(gateway, http):
    base = admin_base(http, gateway)
    assert http.get(f"{base}/admin").status_code == 200
    r = http.get(f"{base}/admin", headers={"x-forwarded-for": "203.0.113.50"})
    assert r.status_code == 403
    assert "Gateway operator" not in r.text


def test_an_admin_user_must_sign_in(gateway_factory, http, tmp_path):
    cfg = tmp_path / "admin.toml"
    cfg.write_text("[[users]]\n"
                   'name = "ops"\n'
                   f"password_hash = \"{hash_of('admin-pass-1')}\"\n"
                   "admin = true\n")
    gw = gateway_factory("--config", str(cfg))
    base = admin_base(http, gw)
    form_page = http.get(f"{base}/admin")
    assert form_page.status_code == 401
    login = forms(form_page.text, "csrf_token")
    assert len(login) == 1
    bad = http.post(f"{base}/admin/login", data={"csrf_token": login[0]["csrf_token"],
                                                 "username": "ops", "password": "nope"})
    assert bad.status_code == 401
    ok = http.post(f"{base}/admin/login", data={"csrf_token": login[0]["csrf_token"],
                                                "username": "ops", "password": "admin-pass-1"})
    assert ok.status_code == 303, ok.text[:500]
    page = http.get(f"{base}/admin")
    assert page.status_code == 200
    assert "Signed in as" in page.text and "admin_login_failed" in page.text


def test_error_bodies_carry_the_request_id(gateway, http):
    r = http.post(f"{gateway.base}/token", data={"grant_type": "password"},
                  headers={"x-request-id": "py-rid-1"})
    assert r.status_code == 400
    assert r.json()["request_id"] == "py-rid-1"
    r = http.post(gateway.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                  headers={"x-request-id": "py-rid-2"})
    assert r.status_code == 401
    assert r.json()["error"]["data"]["request_id"] == "py-rid-2"


def test_pending_authorizations_are_capped_and_the_oldest_gives_way(gateway_factory, http,
                                                                     tmp_path):
    """Issue 12: the cap bounds what waits, but a new request always gets through; the
    oldest waiting one is evicted and its consent page says it expired."""
    cfg = tmp_path / "cap.toml"
    cfg.write_text("max_pending_per_client = 1\n")
    gw = gateway_factory("--config", str(cfg))
    client_id = register_client_id(http, gw.base)
    first = get_authorize(http, gw.base, authorize_params(client_id, pkce_s256(), base=gw.base))
    assert first.status_code == 200
    second = get_authorize(http, gw.base, authorize_params(client_id, pkce_s256(), base=gw.base))
    assert second.status_code == 200, second.text[:300]
    stale = post_consent(http, gw.base, parse_consent_form(first.text), "approve")
    assert stale.status_code == 400 and "expired" in stale.text
    ok = post_consent(http, gw.base, parse_consent_form(second.text), "approve")
    assert ok.status_code == 302
    target, q = location_query(ok)
    assert target == REDIRECT_URI and "code" in q
    metrics = httpx.get(f"http://{gw.routes_addr}/metrics").text
    assert "mcp_gateway_authorizations_over_pending_limit_total 1" in metrics
