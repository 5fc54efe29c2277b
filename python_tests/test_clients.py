"""Confidential clients, client credentials, pre-registered `[[clients]]` from a TOML
config, RFC 7662 introspection and RFC 7009 revocation by confidential clients.
Checklist items b1 (OAuth 2.1 for confidential and public clients), b6 (registration),
b9 (refresh), a4 (audience / revoked tokens refused by the resource server)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import quote

import httpx
import pytest

from flow import (REDIRECT_URI, Grant, McpClient, arguments_for, authorize_params,
                  exchange_code, get_authorize, location_query, mint, now,
                  parse_bearer_challenge, parse_consent_form, pkce_s256, post_consent,
                  refresh, register, register_client_id, result_text, token_request,
                  tokens_from, unverified_claims)


# -- helpers ---------------------------------------------------------------------

def authorize_and_consent(http, base, client_id, *, scope=None) -> Grant:
    """Authorize and approve; also accepts a direct redirect when the gateway remembers an
    earlier consent of the same user for this client."""
    pkce = pkce_s256()
    params = authorize_params(client_id, pkce, base=base, scope=scope)
    r = get_authorize(http, base, params)
    if r.status_code == 200:
        form = parse_consent_form(r.text)
        r = post_consent(http, base, form, "approve")
    assert r.status_code in (302, 303), f"/authorize: {r.status_code} {r.text[:500]}"
    target, q = location_query(r)
    assert target == REDIRECT_URI, f"redirected to {target}"
    assert q.get("state") == params["state"], q
    assert q.get("code"), q
    return Grant(client_id, pkce, params["state"], q["code"], q)


def full_flow(http, base, *, scope=None, client_id=None):
    """Register a public client (unless given one), authorize, exchange the code."""
    cid = client_id or register_client_id(http, base)
    grant = authorize_and_consent(http, base, cid, scope=scope)
    return tokens_from(exchange_code(http, base, grant), cid)


def _basic(client_id: str, secret: str) -> httpx.BasicAuth:
    return httpx.BasicAuth(client_id, secret)


def _secret_hash(secret: str) -> str:
    """base64url(sha256(secret)) without padding, as `secret_sha256` wants it."""
    digest = hashlib.sha256(secret.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# Issue 12: an anonymous registration cannot ask for client_credentials. The gateway of
# this module hands out an initial access token (RFC 7591 §3) for services, and configures
# a resource server that may introspect any token.
IAT = "pytest-initial-access-token-" + secrets.token_urlsafe(16)
RS_ID = "pytest-resource-server"
RS_SECRET = secrets.token_urlsafe(32)


@pytest.fixture
def gateway(gateway_factory, tmp_path):
    cfg = tmp_path / "grants.toml"
    cfg.write_text(f"""
[[initial_access_tokens]]
name = "pytest"
sha256 = "{_secret_hash(IAT)}"

[[clients]]
client_id = "{RS_ID}"
secret_sha256 = "{_secret_hash(RS_SECRET)}"
grant_types = []
introspect = true
""")
    return gateway_factory("--config", str(cfg))


def _register_confidential(http, base, method="client_secret_basic", **body):
    """Register a confidential client; returns (client_id, secret, response body). A
    service (client_credentials) presents the initial access token and, unless told
    otherwise, registers for every scope offered."""
    payload = {"client_name": f"pytest {method}", "token_endpoint_auth_method": method,
               "grant_types": ["client_credentials"], "redirect_uris": []}
    payload.update(body)
    headers = {}
    if "client_credentials" in payload["grant_types"]:
        headers["Authorization"] = f"Bearer {IAT}"
        payload.setdefault("scope", "mcp:read mcp:write mcp:admin")
    r = http.post(f"{base}/register", json=payload, headers=headers)
    assert r.status_code == 201, f"register: {r.status_code} {r.text}"
    b = r.json()
    assert b["token_endpoint_auth_method"] == method
    assert isinstance(b.get("client_secret"), str) and len(b["client_secret"]) >= 32, b
    assert b["client_secret_expires_at"] == 0, b
    assert r.headers.get("cache-control") == "no-store"
    return b["client_id"], b["client_secret"], b


def _cc_basic(http, base, client_id, secret, scope=None, **extra):
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    data.update(extra)
    return http.post(f"{base}/token", data=data, auth=_basic(client_id, secret))


def _cc_post(http, base, client_id, secret, scope=None):
    data = {"grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret}
    if scope is not None:
        data["scope"] = scope
    return token_request(http, base, data)


def _error(r: httpx.Response, code: str, status: int = 400) -> dict:
    assert r.status_code == status, f"expected {status} {code}, got {r.status_code} {r.text}"
    body = r.json()
    assert body.get("error") == code, body
    return body


def _introspect(http, base, token, auth=None, data=None) -> httpx.Response:
    form = {"token": token}
    form.update(data or {})
    return http.post(f"{base}/introspect", data=form, auth=auth)


def _introspect_ok(http, base, token, client_id, secret) -> dict:
    r = _introspect(http, base, token, auth=_basic(client_id, secret))
    assert r.status_code == 200, f"/introspect: {r.status_code} {r.text}"
    assert r.headers.get("cache-control") == "no-store"
    return r.json()


def _write_config(tmp_path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def _mcp_session(http, base, token) -> McpClient:
    mcp = McpClient(http, base, token)
    reply = mcp.initialize()
    assert reply.status == 200, f"initialize: {reply.status} {reply.text[:300]}"
    return mcp


# -- confidential registration and client credentials --------------------------------

@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_registration_returns_secret_once(gateway, http, method):
    cid, secret, body = _register_confidential(http, gateway.base, method=method,
                                               scope="mcp:read")
    assert body["grant_types"] == ["client_credentials"]
    assert body["scope"] == "mcp:read"
    # Two registrations never share a secret (it is random, not derived).
    cid2, secret2, _ = _register_confidential(http, gateway.base, method=method)
    assert cid2 != cid and secret2 != secret
    # A public registration gets no secret at all.
    r = register(http, gateway.base)
    assert r.status_code == 201, r.text
    assert "client_secret" not in r.json() and "client_secret_expires_at" not in r.json()


def test_client_credentials_with_basic_issues_client_token(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read mcp:write")
    r = _cc_basic(http, gateway.base, cid, secret, scope="mcp:write")
    assert r.status_code == 200, r.text
    assert r.headers.get("cache-control") == "no-store"
    body = r.json()
    assert body["token_type"].lower() == "bearer"
    assert body["scope"] == "mcp:write"
    assert "refresh_token" not in body, "no refresh token for client credentials"
    assert body["expires_in"] > 0
    claims = unverified_claims(body["access_token"])
    assert claims["sub"] == cid, "the client itself is the subject"
    assert claims["client_id"] == cid
    assert claims["aud"] == gateway.mcp_url
    assert claims["iss"] == gateway.base
    assert claims["scope"] == "mcp:write"


def test_client_credentials_without_scope_gets_registered_scope(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read")
    body = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).body
    assert body["scope"] == "mcp:read"
    assert unverified_claims(body["access_token"])["scope"] == "mcp:read"


def test_client_credentials_with_post(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, method="client_secret_post",
                                            scope="mcp:read")
    r = _cc_post(http, gateway.base, cid, secret)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "refresh_token" not in body
    assert body["scope"] == "mcp:read"
    claims = unverified_claims(body["access_token"])
    assert claims["sub"] == cid and claims["aud"] == gateway.mcp_url


def test_client_credentials_token_calls_tools_through_mcp(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read mcp:write")
    token = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).access_token
    mcp = _mcp_session(http, gateway.base, token)
    tools = mcp.tools_by_name()
    assert "add_note" in tools, sorted(tools)
    marker = "svc-" + secrets.token_hex(6)
    res = mcp.call_tool("add_note", arguments_for(tools["add_note"], text=marker)).result
    assert not res.get("isError"), res
    listed = mcp.call_tool("list_notes", arguments_for(tools["list_notes"])).result
    assert marker in result_text(listed)
    who = result_text(mcp.call_tool("whoami", arguments_for(tools["whoami"])).result)
    assert cid in who, f"whoami should name the client as subject: {who}"


def test_client_credentials_read_token_cannot_write(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read mcp:write")
    token = tokens_from(_cc_basic(http, gateway.base, cid, secret, scope="mcp:read"),
                        cid).access_token
    mcp = _mcp_session(http, gateway.base, token)
    reply = mcp.call_tool("add_note", {"text": "nope"})
    assert reply.status == 403, f"{reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch.get("error") == "insufficient_scope" and ch.get("scope") == "mcp:write"


def test_client_credentials_scope_beyond_registration_is_invalid_scope(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read")
    _error(_cc_basic(http, gateway.base, cid, secret, scope="mcp:write"), "invalid_scope")
    _error(_cc_basic(http, gateway.base, cid, secret, scope="mcp:read mcp:admin"),
           "invalid_scope")
    # Asking within the registration still works afterwards.
    assert _cc_basic(http, gateway.base, cid, secret, scope="mcp:read").status_code == 200


def test_client_credentials_wrong_secret_basic_is_401_with_basic_challenge(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base)
    r = _cc_basic(http, gateway.base, cid, secret + "x")
    body = _error(r, "invalid_client", status=401)
    assert "access_token" not in body
    challenge = r.headers.get("www-authenticate", "")
    assert challenge.lower().startswith("basic"), r.headers
    assert r.headers.get("cache-control") == "no-store"
    # Unknown client id with Basic: same answer.
    r = _cc_basic(http, gateway.base, "no-such-client", secret)
    _error(r, "invalid_client", status=401)
    assert r.headers.get("www-authenticate", "").lower().startswith("basic")


def test_client_credentials_wrong_secret_post_is_400(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, method="client_secret_post")
    r = _cc_post(http, gateway.base, cid, "wrong-" + secret)
    body = _error(r, "invalid_client", status=400)
    assert "access_token" not in body
    # A confidential client that presents only its id is not authenticated either.
    r = token_request(http, gateway.base, {"grant_type": "client_credentials",
                                           "client_id": cid})
    _error(r, "invalid_client", status=400)


def test_public_client_cannot_use_client_credentials(gateway, http):
    public = register_client_id(http, gateway.base)
    r = token_request(http, gateway.base, {"grant_type": "client_credentials",
                                           "client_id": public})
    body = _error(r, "unauthorized_client")
    assert "access_token" not in body


def test_client_credentials_registration_for_public_client_is_refused(gateway, http):
    r = http.post(f"{gateway.base}/register", json={
        "client_name": "sneaky", "token_endpoint_auth_method": "none",
        "grant_types": ["client_credentials"], "redirect_uris": []})
    _error(r, "invalid_client_metadata")
    # Also when it is mixed with the usual grants and the auth method is left out.
    r = http.post(f"{gateway.base}/register", json={
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"]})
    _error(r, "invalid_client_metadata")


def test_unsupported_auth_method_is_invalid_client_metadata(gateway, http):
    r = http.post(f"{gateway.base}/register", json={
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"], "redirect_uris": []})
    _error(r, "invalid_client_metadata")



def test_client_credentials_resource_must_name_this_server(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base)
    _error(_cc_basic(http, gateway.base, cid, secret, resource="https://other.example/mcp"),
           "invalid_target")
    r = _cc_basic(http, gateway.base, cid, secret, resource=gateway.mcp_url)
    assert r.status_code == 200, r.text
    assert unverified_claims(r.json()["access_token"])["aud"] == gateway.mcp_url


def test_two_client_authentication_methods_at_once_are_refused(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base)
    r = http.post(f"{gateway.base}/token", auth=_basic(cid, secret), data={
        "grant_type": "client_credentials", "client_id": cid, "client_secret": secret})
    _error(r, "invalid_request")
    # Basic plus a different client_id in the body.
    other = register_client_id(http, gateway.base)
    r = http.post(f"{gateway.base}/token", auth=_basic(cid, secret), data={
        "grant_type": "client_credentials", "client_id": other})
    body = _error(r, "invalid_client", status=401)
    assert "access_token" not in body


def test_client_credentials_only_client_cannot_authorize(gateway, http):
    cid, _, _ = _register_confidential(http, gateway.base)
    r = http.get(f"{gateway.base}/authorize", params={
        "response_type": "code", "client_id": cid, "redirect_uri": REDIRECT_URI,
        "code_challenge": "x" * 43, "code_challenge_method": "S256",
        "resource": gateway.mcp_url, "state": "s"})
    assert r.status_code == 400, f"{r.status_code} {r.headers.get('location')}"
    assert "location" not in r.headers, "no redirect to an unregistered URI"


def test_basic_credentials_are_form_urlencoded(gateway_factory, http, tmp_path):
    """RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding, so an
    operator-chosen secret with reserved characters works when the client encodes it."""
    secret = "pa+ss%20w:rd/="
    cfg = _write_config(tmp_path, f"""
[[clients]]
client_id = "svc"
secret_sha256 = "{_secret_hash(secret)}"
grant_types = ["client_credentials"]
""")
    gw = gateway_factory("--config", str(cfg))
    encoded = base64.b64encode(f"svc:{quote(secret, safe='')}".encode()).decode()
    r = http.post(f"{gw.base}/token", data={"grant_type": "client_credentials"},
                  headers={"Authorization": f"Basic {encoded}"})
    assert r.status_code == 200, r.text
    # The client is pinned as client_secret_basic: the same secret by post is refused.
    _error(_cc_post(http, gw.base, "svc", secret), "invalid_client", status=400)
    # A wrong one still fails, encoded or not.
    bad = base64.b64encode(f"svc:{quote(secret + 'x', safe='')}".encode()).decode()
    r = http.post(f"{gw.base}/token", data={"grant_type": "client_credentials"},
                  headers={"Authorization": f"Basic {bad}"})
    _error(r, "invalid_client", status=401)

# -- confidential client, code flow --------------------------------------------------

def test_confidential_code_flow_needs_secret_and_failures_do_not_burn_code(gateway, http):
    cid, secret, _ = _register_confidential(
        http, gateway.base, method="client_secret_post",
        grant_types=["authorization_code", "refresh_token"], redirect_uris=[REDIRECT_URI])
    grant = authorize_and_consent(http, gateway.base, cid, scope="mcp:read")
    base_form = {
        "grant_type": "authorization_code", "code": grant.code,
        "redirect_uri": REDIRECT_URI, "code_verifier": grant.pkce.verifier,
        "client_id": cid, "resource": gateway.mcp_url,
    }
    # No secret.
    _error(token_request(http, gateway.base, base_form), "invalid_client")
    # Wrong secret by post.
    _error(token_request(http, gateway.base, {**base_form, "client_secret": "wrong"}),
           "invalid_client")
    # Wrong secret by Basic.
    no_id = {k: v for k, v in base_form.items() if k != "client_id"}
    r = http.post(f"{gateway.base}/token", data=no_id, auth=_basic(cid, "wrong"))
    _error(r, "invalid_client", status=401)
    # Client authentication comes first: the code is still good.
    r = token_request(http, gateway.base, {**base_form, "client_secret": secret})
    tokens = tokens_from(r, cid)
    assert tokens.refresh_token, "the code flow still issues a refresh token"
    claims = unverified_claims(tokens.access_token)
    assert claims["client_id"] == cid and claims["sub"] != cid
    assert claims["scope"] == "mcp:read"
    # And now it is used up.
    _error(token_request(http, gateway.base, {**base_form, "client_secret": secret}),
           "invalid_grant")


def test_confidential_refresh_needs_secret(gateway, http):
    cid, secret, _ = _register_confidential(
        http, gateway.base, method="client_secret_basic",
        grant_types=["authorization_code", "refresh_token"], redirect_uris=[REDIRECT_URI])
    grant = authorize_and_consent(http, gateway.base, cid)
    no_id = {"grant_type": "authorization_code", "code": grant.code,
             "redirect_uri": REDIRECT_URI, "code_verifier": grant.pkce.verifier,
             "resource": gateway.mcp_url}
    tokens = tokens_from(http.post(f"{gateway.base}/token", data=no_id,
                                   auth=_basic(cid, secret)), cid)
    # Only the id: refused, and the refresh token is not consumed by the failure.
    _error(refresh(http, gateway.base, cid, tokens.refresh_token), "invalid_client")
    _error(refresh(http, gateway.base, cid, tokens.refresh_token, client_secret="bad"),
           "invalid_client")
    r = http.post(f"{gateway.base}/token", auth=_basic(cid, secret),
                  data={"grant_type": "refresh_token", "refresh_token": tokens.refresh_token})
    new = tokens_from(r, cid)
    assert new.refresh_token and new.refresh_token != tokens.refresh_token
    assert McpClient(http, gateway.base, new.access_token).initialize().status == 200


def test_code_of_public_client_cannot_be_redeemed_by_confidential_one(gateway, http):
    public = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, public)
    cid, secret, _ = _register_confidential(
        http, gateway.base, grant_types=["authorization_code"],
        redirect_uris=[REDIRECT_URI])
    data = {"grant_type": "authorization_code", "code": grant.code,
            "redirect_uri": REDIRECT_URI, "code_verifier": grant.pkce.verifier,
            "resource": gateway.mcp_url}
    r = http.post(f"{gateway.base}/token", data=data, auth=_basic(cid, secret))
    _error(r, "invalid_grant")


# -- pre-registered clients from the config file ------------------------------------

def _preregistered_config(secret: str) -> str:
    return f"""
[[clients]]
client_id = "internal-service"
client_name = "Internal service"
secret_sha256 = "{_secret_hash(secret)}"
grant_types = ["client_credentials"]
scope = "mcp:read"

[[clients]]
client_id = "pinned-public"
client_name = "Pinned public client"
redirect_uris = ["{REDIRECT_URI}"]
"""


def test_preregistered_clients_from_config_work_and_survive_restart(
        gateway_factory, http, tmp_path):
    secret = "operator-chosen-" + secrets.token_urlsafe(24)
    cfg = _write_config(tmp_path, _preregistered_config(secret))
    data_dir = tmp_path / "data-pinned"
    gw = gateway_factory("--config", str(cfg), data_dir=data_dir)

    # The confidential one: client credentials with its operator-chosen secret.
    r = _cc_basic(http, gw.base, "internal-service", secret)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "mcp:read"
    assert unverified_claims(r.json()["access_token"])["sub"] == "internal-service"
    _error(_cc_basic(http, gw.base, "internal-service", secret, scope="mcp:write"),
           "invalid_scope")
    _error(_cc_basic(http, gw.base, "internal-service", secret + "!"), "invalid_client",
           status=401)
    # It is registered for client credentials only.
    _error(http.post(f"{gw.base}/token", auth=_basic("internal-service", secret),
                     data={"grant_type": "refresh_token", "refresh_token": "x"}),
           "unauthorized_client")

    # The public one: a full code flow with no registration.
    tokens = full_flow(http, gw.base, client_id="pinned-public", scope="mcp:read")
    assert unverified_claims(tokens.access_token)["client_id"] == "pinned-public"
    # A public pinned client cannot use client credentials.
    _error(token_request(http, gw.base, {"grant_type": "client_credentials",
                                         "client_id": "pinned-public"}),
           "unauthorized_client")
    # A dynamically registered client, to compare across the restart.
    dyn = register_client_id(http, gw.base)

    assert gw.stop() == 0
    gw2 = gateway_factory("--config", str(cfg), data_dir=data_dir)

    r = _cc_basic(http, gw2.base, "internal-service", secret)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "mcp:read"
    tokens2 = full_flow(http, gw2.base, client_id="pinned-public")
    assert tokens2.access_token
    assert full_flow(http, gw2.base, client_id=dyn).access_token
    # The grant made before the restart survives too: its refresh token still works.
    again = tokens_from(refresh(http, gw2.base, "pinned-public", tokens.refresh_token),
                        "pinned-public")
    assert again.refresh_token != tokens.refresh_token


def test_preregistered_secret_follows_the_config_across_restarts(
        gateway_factory, http, tmp_path):
    data_dir = tmp_path / "data-rotate"
    old_secret, new_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    cfg = _write_config(tmp_path, _preregistered_config(old_secret))
    gw = gateway_factory("--config", str(cfg), data_dir=data_dir)
    assert _cc_basic(http, gw.base, "internal-service", old_secret).status_code == 200
    assert gw.stop() == 0
    # The operator rotates the secret and widens the scope in the file.
    cfg.write_text(_preregistered_config(new_secret).replace(
        'scope = "mcp:read"', 'scope = "mcp:read mcp:write"'))
    gw2 = gateway_factory("--config", str(cfg), data_dir=data_dir)
    _error(_cc_basic(http, gw2.base, "internal-service", old_secret), "invalid_client",
           status=401)
    r = _cc_basic(http, gw2.base, "internal-service", new_secret, scope="mcp:write")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "mcp:write"



def test_preregistered_client_removed_from_config_is_gone_after_restart(
        gateway_factory, http, tmp_path):
    secret = secrets.token_urlsafe(24)
    cfg = _write_config(tmp_path, _preregistered_config(secret))
    data_dir = tmp_path / "data-remove"
    gw = gateway_factory("--config", str(cfg), data_dir=data_dir)
    assert _cc_basic(http, gw.base, "internal-service", secret).status_code == 200
    assert gw.stop() == 0
    cfg.write_text("# the operator removed every pinned client\n")
    gw2 = gateway_factory("--config", str(cfg), data_dir=data_dir)
    _error(_cc_basic(http, gw2.base, "internal-service", secret), "invalid_client",
           status=401)

def test_preregistered_client_without_config_is_unknown(gateway_factory, http, tmp_path):
    """Control: the pinned ids exist only because of the config file."""
    gw = gateway_factory()
    _error(_cc_basic(http, gw.base, "internal-service", "whatever"), "invalid_client",
           status=401)
    r = http.get(f"{gw.base}/authorize", params={
        "response_type": "code", "client_id": "pinned-public", "redirect_uri": REDIRECT_URI,
        "code_challenge": "x" * 43, "code_challenge_method": "S256",
        "resource": gw.mcp_url, "state": "s"})
    assert r.status_code == 400, f"{r.status_code} {r.headers.get('location')}"
    assert "location" not in r.headers


def test_preregistered_confidential_client_can_introspect(gateway_factory, http, tmp_path):
    """Another client's token is inactive to a configured client unless its entry says
    `introspect = true` (issue 12)."""
    secret = secrets.token_urlsafe(32)
    cfg = _write_config(tmp_path, _preregistered_config(secret))
    gw = gateway_factory("--config", str(cfg))
    tokens = full_flow(http, gw.base, client_id="pinned-public")
    v = _introspect_ok(http, gw.base, tokens.access_token, "internal-service", secret)
    assert v == {"active": False}
    cfg.write_text(_preregistered_config(secret).replace(
        'scope = "mcp:read"', 'scope = "mcp:read"\nintrospect = true', 1))
    gw = gateway_factory("--config", str(cfg))
    tokens = full_flow(http, gw.base, client_id="pinned-public")
    v = _introspect_ok(http, gw.base, tokens.access_token, "internal-service", secret)
    assert v["active"] is True and v["client_id"] == "pinned-public"


def test_config_with_bad_secret_hash_stops_with_exit_2(tmp_path):
    from gateway_proc import Gateway
    cfg = _write_config(tmp_path, """
[[clients]]
client_id = "svc"
secret_sha256 = "too-short"
grant_types = ["client_credentials"]
""")
    gw = Gateway(tmp_path / "data", ["--config", str(cfg)])
    gw.spawn()
    try:
        code = gw.wait_exit()
    finally:
        gw.stop()
    assert code == 2, gw.log_tail()
    assert "clients" in gw.log_tail()


def test_config_public_client_with_client_credentials_stops_with_exit_2(tmp_path):
    from gateway_proc import Gateway
    cfg = _write_config(tmp_path, f"""
[[clients]]
client_id = "pub"
redirect_uris = ["{REDIRECT_URI}"]
grant_types = ["client_credentials"]
""")
    gw = Gateway(tmp_path / "data", ["--config", str(cfg)])
    gw.spawn()
    try:
        code = gw.wait_exit()
    finally:
        gw.stop()
    assert code == 2, gw.log_tail()


# -- introspection (RFC 7662) ---------------------------------------------------------

@pytest.fixture
def resource_server(gateway, http):
    """The configured resource server (`introspect = true`): (client_id, secret)."""
    return RS_ID, RS_SECRET


def test_introspect_access_token_is_active_with_fields(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    claims = unverified_claims(tokens.access_token)
    v = _introspect_ok(http, gateway.base, tokens.access_token, rs_id, rs_secret)
    assert v["active"] is True
    assert v["client_id"] == tokens.client_id
    assert v["scope"] == "mcp:read"
    assert v["sub"] == "local-user" == claims["sub"]
    assert v["aud"] == gateway.mcp_url
    assert v["iss"] == gateway.base
    assert v["exp"] == claims["exp"]
    assert v["jti"] == claims["jti"]
    assert v["token_type"].lower() == "bearer"


def test_introspect_client_credentials_token(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    svc, svc_secret, _ = _register_confidential(http, gateway.base, scope="mcp:read")
    token = tokens_from(_cc_basic(http, gateway.base, svc, svc_secret), svc).access_token
    v = _introspect_ok(http, gateway.base, token, rs_id, rs_secret)
    assert v["active"] is True
    assert v["sub"] == svc and v["client_id"] == svc and v["scope"] == "mcp:read"
    # A client may introspect its own token too, by the method it registered (Basic);
    # the same secret by post is refused.
    r = http.post(f"{gateway.base}/introspect", data={"token": token}, auth=(svc, svc_secret))
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    r = _introspect(http, gateway.base, token,
                    data={"client_id": svc, "client_secret": svc_secret})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client", r.text


def test_introspect_refresh_token_is_active(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base, scope="mcp:read mcp:write")
    v = _introspect_ok(http, gateway.base, tokens.refresh_token, rs_id, rs_secret)
    assert v["active"] is True
    assert v["token_type"] == "refresh_token"
    assert v["client_id"] == tokens.client_id
    assert set(v["scope"].split()) == {"mcp:read", "mcp:write"}
    assert v["sub"] == "local-user"
    assert v["aud"] == gateway.mcp_url
    assert v["exp"] > now()


@pytest.mark.parametrize("token", ["garbage", "", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_introspect_garbage_is_exactly_inactive(gateway, http, resource_server, token):
    rs_id, rs_secret = resource_server
    r = _introspect(http, gateway.base, token, auth=_basic(rs_id, rs_secret))
    if token == "":
        # An empty token may be refused as a malformed request or be inactive.
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json() == {"active": False}
        return
    assert r.status_code == 200, r.text
    assert r.json() == {"active": False}


def test_introspect_minted_token_control_then_other_audience(gateway, http,
                                                                resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base)
    claims = unverified_claims(tokens.access_token)
    # Control: re-signing the same claims with the gateway's key is active.
    same = mint(gateway.signing_key_pem, gateway.signing_kid, dict(claims))
    assert _introspect_ok(http, gateway.base, same, rs_id, rs_secret)["active"] is True
    foreign = mint(gateway.signing_key_pem, gateway.signing_kid,
                   {**claims, "aud": "https://elsewhere.example/mcp",
                    "jti": secrets.token_hex(8)})
    assert _introspect_ok(http, gateway.base, foreign, rs_id, rs_secret) == {"active": False}
    foreign_iss = mint(gateway.signing_key_pem, gateway.signing_kid,
                       {**claims, "iss": "https://elsewhere.example",
                        "jti": secrets.token_hex(8)})
    assert _introspect_ok(http, gateway.base, foreign_iss, rs_id, rs_secret) == \
        {"active": False}


def test_introspect_expired_token_is_inactive(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base)
    claims = unverified_claims(tokens.access_token)
    t = now()
    expired = mint(gateway.signing_key_pem, gateway.signing_kid,
                   {**claims, "iat": t - 7200, "nbf": t - 7200, "exp": t - 3600,
                    "jti": secrets.token_hex(8)})
    assert _introspect_ok(http, gateway.base, expired, rs_id, rs_secret) == {"active": False}


def test_introspect_after_revoke_is_inactive(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base)
    assert _introspect_ok(http, gateway.base, tokens.access_token,
                          rs_id, rs_secret)["active"] is True
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": tokens.access_token, "client_id": tokens.client_id})
    assert r.status_code == 200, r.text
    assert _introspect_ok(http, gateway.base, tokens.access_token, rs_id, rs_secret) == \
        {"active": False}
    # Revoking the refresh token makes it inactive too.
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": tokens.refresh_token, "client_id": tokens.client_id})
    assert r.status_code == 200, r.text
    assert _introspect_ok(http, gateway.base, tokens.refresh_token, rs_id, rs_secret) == \
        {"active": False}


def test_introspect_rotated_out_refresh_token_is_inactive(gateway, http, resource_server):
    rs_id, rs_secret = resource_server
    tokens = full_flow(http, gateway.base)
    new = tokens_from(refresh(http, gateway.base, tokens.client_id, tokens.refresh_token),
                      tokens.client_id)
    assert _introspect_ok(http, gateway.base, tokens.refresh_token, rs_id, rs_secret) == \
        {"active": False}
    v = _introspect_ok(http, gateway.base, new.refresh_token, rs_id, rs_secret)
    assert v["active"] is True and v["token_type"] == "refresh_token"


def test_i12_registered_client_introspects_only_its_own_tokens(gateway, http):
    svc, svc_secret, _ = _register_confidential(http, gateway.base, scope="mcp:read")
    own = tokens_from(_cc_basic(http, gateway.base, svc, svc_secret), svc).access_token
    assert _introspect_ok(http, gateway.base, own, svc, svc_secret)["active"] is True
    other = full_flow(http, gateway.base)
    for token in (other.access_token, other.refresh_token):
        assert _introspect_ok(http, gateway.base, token, svc, svc_secret) == {"active": False}
        assert _introspect_ok(http, gateway.base, token, RS_ID, RS_SECRET)["active"] is True


def test_i12_anonymous_client_credentials_registration_is_refused(gateway_factory, http):
    """The issue's exploit, on the default gateway: no secret, no token, no add_note."""
    gw = gateway_factory()
    r = http.post(f"{gw.base}/register", json={
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"]})
    body = _error(r, "invalid_client_metadata")
    assert "initial access token" in body["error_description"]
    assert "client_secret" not in body
    r = http.post(f"{gw.base}/register", headers={"Authorization": "Bearer guessed"}, json={
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"]})
    _error(r, "invalid_token", status=401)
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    meta = http.get(f"{gw.base}/.well-known/oauth-authorization-server").json()
    assert "client_credentials" not in meta["grant_types_supported"]


def test_introspect_needs_confidential_client(gateway, http, resource_server):
    rs_id, _ = resource_server
    tokens = full_flow(http, gateway.base)
    # A public client presenting its id.
    r = _introspect(http, gateway.base, tokens.access_token,
                    data={"client_id": tokens.client_id})
    body = _error(r, "invalid_client")
    assert "active" not in body
    # No authentication at all.
    body = _error(_introspect(http, gateway.base, tokens.access_token), "invalid_client")
    assert "active" not in body
    # A confidential client with the wrong secret by Basic.
    r = _introspect(http, gateway.base, tokens.access_token, auth=_basic(rs_id, "nope"))
    body = _error(r, "invalid_client", status=401)
    assert "active" not in body
    assert r.headers.get("www-authenticate", "").lower().startswith("basic")
    # A confidential client's id without its secret.
    body = _error(_introspect(http, gateway.base, tokens.access_token,
                              data={"client_id": rs_id}), "invalid_client")
    assert "active" not in body


def test_metadata_advertises_introspection_and_client_credentials(gateway, http):
    meta = http.get(f"{gateway.base}/.well-known/oauth-authorization-server").json()
    assert meta["introspection_endpoint"] == f"{gateway.base}/introspect"
    assert "client_credentials" in meta["grant_types_supported"]
    for m in ("client_secret_basic", "client_secret_post", "none"):
        assert m in meta["token_endpoint_auth_methods_supported"], meta
    assert set(meta["introspection_endpoint_auth_methods_supported"]) >= {
        "client_secret_basic", "client_secret_post"}
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]


# -- revocation by a confidential client ------------------------------------------------

def test_confidential_client_revokes_its_token_with_basic_and_mcp_refuses_it(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base, scope="mcp:read")
    token = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).access_token
    mcp = _mcp_session(http, gateway.base, token)
    assert mcp.call_tool("echo", {"text": "before"}).status == 200
    r = http.post(f"{gateway.base}/revoke", data={"token": token}, auth=_basic(cid, secret))
    assert r.status_code == 200, r.text
    # The very next request with the same session is refused.
    reply = mcp.call_tool("echo", {"text": "after"})
    assert reply.status == 401, f"{reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch.get("error") == "invalid_token"
    # A fresh session with it as well.
    assert McpClient(http, gateway.base, token).initialize().status == 401
    # A new client-credentials token still works.
    token2 = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).access_token
    assert McpClient(http, gateway.base, token2).initialize().status == 200


def test_revoked_code_flow_access_token_is_refused_by_mcp(gateway, http):
    tokens = full_flow(http, gateway.base)
    mcp = _mcp_session(http, gateway.base, tokens.access_token)
    assert mcp.call_tool("echo", {"text": "before"}).status == 200
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": tokens.access_token, "client_id": tokens.client_id})
    assert r.status_code == 200, r.text
    assert mcp.call_tool("echo", {"text": "after"}).status == 401


def test_revoke_needs_the_secret_of_a_confidential_client(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base)
    token = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).access_token
    r = http.post(f"{gateway.base}/revoke", data={"token": token}, auth=_basic(cid, "bad"))
    _error(r, "invalid_client", status=401)
    _error(http.post(f"{gateway.base}/revoke", data={"token": token, "client_id": cid}),
           "invalid_client")
    # Nothing was revoked by the failed attempts.
    assert McpClient(http, gateway.base, token).initialize().status == 200


def test_revoking_another_clients_token_is_refused(gateway, http):
    cid, secret, _ = _register_confidential(http, gateway.base)
    victim = full_flow(http, gateway.base)
    for tok in (victim.access_token, victim.refresh_token):
        r = http.post(f"{gateway.base}/revoke", data={"token": tok}, auth=_basic(cid, secret))
        assert r.status_code >= 400, f"revoked someone else's token: {r.status_code}"
        assert r.json().get("error") in ("unauthorized_client", "invalid_request",
                                         "invalid_grant"), r.text
    # The victim's tokens are untouched.
    assert McpClient(http, gateway.base, victim.access_token).initialize().status == 200
    assert refresh(http, gateway.base, victim.client_id,
                   victim.refresh_token).status_code == 200
    # And the other way round: a public client cannot revoke the service's token.
    svc_token = tokens_from(_cc_basic(http, gateway.base, cid, secret), cid).access_token
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": svc_token, "client_id": victim.client_id})
    assert r.status_code >= 400, r.text
    assert McpClient(http, gateway.base, svc_token).initialize().status == 200


def test_i12_registration_with_initial_access_token_is_audited_by_name(gateway_factory, http,
                                                                       tmp_path):
    """The audit event names the initial access token's holder, never the token."""
    cfg = tmp_path / "iat.toml"
    cfg.write_text(f'[[initial_access_tokens]]\nname = "deploy-pipeline"\n'
                   f'sha256 = "{_secret_hash(IAT)}"\nscope = "mcp:read"\n')
    audit = tmp_path / "audit.jsonl"
    gw = gateway_factory("--config", str(cfg), "--audit-log", str(audit))
    cid, secret, body = _register_confidential(http, gw.base, scope="mcp:read mcp:write")
    assert body["scope"] == "mcp:read", "bounded by the token's scope"
    _error(_cc_basic(http, gw.base, cid, secret, scope="mcp:write"), "invalid_scope")
    gw.stop()
    text = audit.read_text()
    lines = [line for line in text.splitlines() if "client_registered" in line]
    assert lines and "deploy-pipeline" in lines[-1], text
    assert IAT not in text and secret not in text
