"""Token endpoint: code exchange with PKCE, error shapes, code replay, revocation.
Checklist items b1, b4, b5, b9."""

from flow import (DEFAULT_SCOPE, McpClient, authorize_and_consent, exchange_code, full_flow,
                  pkce_s256, refresh, register_client_id, token_request, tokens_from,
                  unverified_claims)


def _assert_no_store(r):
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)


def _assert_error(r, code, status=400):
    assert r.status_code == status, f"{r.status_code} {r.text}"
    body = r.json()
    assert body["error"] == code, body
    _assert_no_store(r)
    return body


def test_code_exchange_returns_bearer_jwt_and_refresh(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = exchange_code(http, gateway.base, grant)
    assert r.status_code == 200, r.text
    _assert_no_store(r)
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["refresh_token"]
    assert body["scope"] == DEFAULT_SCOPE
    claims = unverified_claims(body["access_token"])
    assert claims["iss"] == gateway.base
    assert claims["aud"] == f"{gateway.base}/mcp"
    assert claims["client_id"] == cid
    assert claims["sub"]
    assert claims["jti"]
    # The token response scope and the JWT scope agree.
    assert sorted(claims["scope"].split()) == sorted(body["scope"].split())
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    assert abs((claims["exp"] - claims["iat"]) - body["expires_in"]) <= 2


def test_access_token_ttl_flag_sets_expires_in(gateway_factory, http):
    gw = gateway_factory("--access-token-ttl", "137")
    tokens = full_flow(http, gw.base)
    assert tokens.expires_in == 137
    c = unverified_claims(tokens.access_token)
    assert c["exp"] - c["iat"] == 137


def test_requested_scope_is_granted_exactly(gateway, http):
    tokens = full_flow(http, gateway.base, scope="mcp:read")
    assert tokens.scope == "mcp:read"
    assert unverified_claims(tokens.access_token)["scope"] == "mcp:read"


def test_wrong_pkce_verifier_is_invalid_grant(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = exchange_code(http, gateway.base, grant, verifier=pkce_s256().verifier)
    _assert_error(r, "invalid_grant")


def test_missing_pkce_verifier_is_rejected(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = token_request(http, gateway.base, {
        "grant_type": "authorization_code", "code": grant.code,
        "redirect_uri": "http://127.0.0.1:47113/callback", "client_id": cid,
    })
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("invalid_request", "invalid_grant")
    _assert_no_store(r)


def test_replayed_code_is_invalid_grant_and_revokes_first_tokens(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    first = tokens_from(exchange_code(http, gateway.base, grant), cid)
    # The first access token works before the replay.
    assert McpClient(http, gateway.base, first.access_token).initialize().status == 200

    _assert_error(exchange_code(http, gateway.base, grant), "invalid_grant")

    after = McpClient(http, gateway.base, first.access_token).initialize()
    assert after.status == 401, f"access token still valid after code replay: {after.status}"
    _assert_error(refresh(http, gateway.base, cid, first.refresh_token), "invalid_grant")


def test_code_bound_to_redirect_uri(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = exchange_code(http, gateway.base, grant, redirect_uri="http://127.0.0.1:47113/other")
    _assert_error(r, "invalid_grant")


def test_code_bound_to_client(gateway, http):
    cid = register_client_id(http, gateway.base)
    other = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = exchange_code(http, gateway.base, grant, client_id=other)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("invalid_grant", "invalid_client")
    _assert_no_store(r)


def test_unknown_code_is_invalid_grant(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    grant.code = "not-a-real-code"
    _assert_error(exchange_code(http, gateway.base, grant), "invalid_grant")


def test_token_request_for_other_resource_is_refused(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    r = exchange_code(http, gateway.base, grant, resource="https://other.example.com/mcp")
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("invalid_target", "invalid_grant")


def test_unsupported_grant_type(gateway, http):
    r = token_request(http, gateway.base, {"grant_type": "password", "username": "u",
                                           "password": "p", "client_id": "x"})
    _assert_error(r, "unsupported_grant_type")


def test_token_errors_carry_no_store(gateway, http):
    r = token_request(http, gateway.base, {})
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("invalid_request", "unsupported_grant_type")
    _assert_no_store(r)


def test_revoke_refresh_token(gateway, http):
    tokens = full_flow(http, gateway.base)
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": tokens.refresh_token, "client_id": tokens.client_id})
    assert r.status_code == 200, r.text
    _assert_error(refresh(http, gateway.base, tokens.client_id, tokens.refresh_token),
                  "invalid_grant")


def test_revoke_unknown_token_is_200(gateway, http):
    cid = register_client_id(http, gateway.base)
    r = http.post(f"{gateway.base}/revoke", data={"token": "garbage", "client_id": cid})
    assert r.status_code == 200, r.text
