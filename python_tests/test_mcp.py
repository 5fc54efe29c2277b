"""The protected MCP endpoint: bearer validation, challenges, scope policy and the
built-in tools over streamable HTTP. Checklist items a2, a4, a6, a7, a8, a9."""

import secrets

from flow import (McpClient, arguments_for, full_flow, mint, now, parse_bearer_challenge,
                  result_text, unverified_claims)


def _prm_url(base):
    return f"{base}/.well-known/oauth-protected-resource/mcp"


def _session(http, gateway, scope=None):
    tokens = full_flow(http, gateway.base, scope=scope)
    mcp = McpClient(http, gateway.base, tokens.access_token)
    reply = mcp.initialize()
    assert reply.status == 200, f"initialize: {reply.status} {reply.text[:300]}"
    return tokens, mcp


def _assert_invalid_token(reply, base):
    assert reply.status == 401, f"{reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch["scheme"] == "bearer"
    assert ch.get("error") == "invalid_token", ch
    assert ch.get("resource_metadata") == _prm_url(base)


# -- happy path ------------------------------------------------------------------

def test_initialize_list_and_call_echo(gateway, http):
    _, mcp = _session(http, gateway)
    assert mcp.session_id, "streamable HTTP server should hand out an Mcp-Session-Id"
    assert mcp.protocol_version
    tools = mcp.tools_by_name()
    for name in ("echo", "add", "current_time", "list_notes", "whoami", "add_note"):
        assert name in tools, f"{name} missing from {sorted(tools)}"
    marker = "echo-" + secrets.token_hex(6)
    result = mcp.call_tool("echo", arguments_for(tools["echo"], text=marker)).result
    assert not result.get("isError"), result
    assert marker in result_text(result)


def test_whoami_reports_token_identity(gateway, http):
    tokens, mcp = _session(http, gateway)
    claims = unverified_claims(tokens.access_token)
    tools = mcp.tools_by_name()
    result = mcp.call_tool("whoami", arguments_for(tools["whoami"])).result
    text = result_text(result)
    assert claims["sub"] in text
    assert tokens.client_id in text
    assert "mcp:read" in text and "mcp:write" in text


def test_add_tool_adds(gateway, http):
    _, mcp = _session(http, gateway)
    tool = mcp.tools_by_name()["add"]
    args = arguments_for(tool, numbers=(19, 23))
    result = mcp.call_tool("add", args).result
    assert "42" in result_text(result), (args, result)


def test_write_scope_can_add_note_and_read_it_back(gateway, http):
    _, mcp = _session(http, gateway)
    tools = mcp.tools_by_name()
    marker = "note-" + secrets.token_hex(6)
    r = mcp.call_tool("add_note", arguments_for(tools["add_note"], text=marker))
    assert not r.result.get("isError"), r.result
    listed = mcp.call_tool("list_notes", arguments_for(tools["list_notes"])).result
    assert marker in result_text(listed)


def test_admin_scope_implies_write(gateway, http):
    tokens, mcp = _session(http, gateway, scope="mcp:admin")
    assert tokens.scope == "mcp:admin"
    tools = mcp.tools_by_name()
    assert "add_note" in tools and "echo" in tools
    r = mcp.call_tool("add_note", arguments_for(tools["add_note"], text="admin note"))
    assert r.status == 200 and not r.result.get("isError")


# -- a7 insufficient scope -------------------------------------------------------

def test_read_only_token_does_not_list_add_note(gateway, http):
    _, mcp = _session(http, gateway, scope="mcp:read")
    tools = mcp.tools_by_name()
    assert "add_note" not in tools
    assert "echo" in tools and "whoami" in tools


def test_insufficient_scope_is_403_naming_only_needed_scope(gateway, http):
    _, mcp = _session(http, gateway, scope="mcp:read")
    reply = mcp.call_tool("add_note", {"text": "should not be stored"})
    assert reply.status == 403, f"{reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch["scheme"] == "bearer"
    assert ch.get("error") == "insufficient_scope"
    assert ch.get("scope") == "mcp:write"
    assert ch.get("resource_metadata") == _prm_url(gateway.base)
    # Read-scope calls still work in the same session.
    assert mcp.call_tool("whoami", {}).status == 200


# -- a2 / a4 / a8 challenges -----------------------------------------------------

def test_no_token_is_401_with_resource_metadata(gateway, http):
    reply = McpClient(http, gateway.base, None).initialize()
    assert reply.status == 401
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch["scheme"] == "bearer"
    assert ch.get("resource_metadata") == _prm_url(gateway.base)
    assert ch.get("scope") == "mcp:read"
    assert "error" not in ch, "no error code when no token was presented (RFC 6750 §3.1)"
    # c1: the advertised URL really serves the metadata.
    prm = http.get(ch["resource_metadata"])
    assert prm.status_code == 200 and prm.json()["resource"] == gateway.mcp_url


def test_garbage_token_is_401_invalid_token(gateway, http):
    _assert_invalid_token(McpClient(http, gateway.base, "not.a.jwt").initialize(), gateway.base)


def _reminted(gateway, http, **changes):
    tokens = full_flow(http, gateway.base)
    claims = unverified_claims(tokens.access_token)
    claims.update(changes)
    return mint(gateway.signing_key_pem, gateway.signing_kid, claims)


def test_reminted_token_with_same_claims_is_accepted(gateway, http):
    """Control for the minted-token tests below: our re-signing is itself valid."""
    token = _reminted(gateway, http)
    assert McpClient(http, gateway.base, token).initialize().status == 200


def test_wrong_audience_is_401(gateway, http):
    token = _reminted(gateway, http, aud="https://other.example.com/mcp")
    _assert_invalid_token(McpClient(http, gateway.base, token).initialize(), gateway.base)


def test_wrong_issuer_is_401(gateway, http):
    token = _reminted(gateway, http, iss="https://other.example.com")
    _assert_invalid_token(McpClient(http, gateway.base, token).initialize(), gateway.base)


def test_expired_token_is_401(gateway, http):
    t = now()
    token = _reminted(gateway, http, iat=t - 7200, nbf=t - 7200, exp=t - 3600)
    _assert_invalid_token(McpClient(http, gateway.base, token).initialize(), gateway.base)


def test_token_signed_by_another_key_is_401(gateway, http):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    tokens = full_flow(http, gateway.base)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    forged = mint(other, gateway.signing_kid, unverified_claims(tokens.access_token))
    _assert_invalid_token(McpClient(http, gateway.base, forged).initialize(), gateway.base)


def test_alg_none_token_is_401(gateway, http):
    import jwt
    tokens = full_flow(http, gateway.base)
    forged = jwt.encode(unverified_claims(tokens.access_token), None, algorithm="none")
    _assert_invalid_token(McpClient(http, gateway.base, forged).initialize(), gateway.base)


def test_token_in_query_string_is_refused(gateway, http):
    tokens = full_flow(http, gateway.base)
    mcp = McpClient(http, gateway.base, None)
    reply = mcp.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                   "clientInfo": {"name": "q", "version": "0"}},
                    url=f"{gateway.mcp_url}?access_token={tokens.access_token}")
    assert reply.status in (400, 401), f"query-string token accepted: {reply.status}"


def test_token_in_form_body_is_refused(gateway, http):
    tokens = full_flow(http, gateway.base)
    r = http.post(gateway.mcp_url, data={"access_token": tokens.access_token},
                  headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code in (400, 401, 415), r.status_code
    assert r.status_code != 200


# -- a9 sessions -----------------------------------------------------------------

def test_session_id_alone_does_not_authenticate(gateway, http):
    _, mcp = _session(http, gateway)
    assert mcp.session_id
    anon = McpClient(http, gateway.base, None)
    anon.session_id, anon.protocol_version = mcp.session_id, mcp.protocol_version
    reply = anon.list_tools()
    assert reply.status == 401, f"{reply.status} {reply.text[:200]}"


def test_revoked_access_token_stops_working_mid_session(gateway, http):
    tokens, mcp = _session(http, gateway)
    assert mcp.list_tools().status == 200
    r = http.post(f"{gateway.base}/revoke",
                  data={"token": tokens.access_token, "client_id": tokens.client_id,
                        "token_type_hint": "access_token"})
    assert r.status_code == 200
    assert mcp.list_tools().status == 401


# -- a6 malformed requests -------------------------------------------------------

def test_mcp_method_header_mismatch_is_400(gateway, http):
    _, mcp = _session(http, gateway)
    reply = mcp.rpc("tools/list", {}, extra_headers={"Mcp-Method": "tools/call"})
    assert reply.status == 400, f"{reply.status} {reply.text[:200]}"


def test_mcp_method_header_matching_body_is_fine(gateway, http):
    _, mcp = _session(http, gateway)
    reply = mcp.rpc("tools/list", {}, extra_headers={"Mcp-Method": "tools/list"})
    assert reply.status == 200
    assert "tools" in reply.result


def test_malformed_json_body_with_valid_token_is_400(gateway, http):
    tokens = full_flow(http, gateway.base)
    r = http.post(gateway.mcp_url, content=b"{not json",
                  headers={"Authorization": f"Bearer {tokens.access_token}",
                           "Content-Type": "application/json",
                           "Accept": "application/json, text/event-stream"})
    assert r.status_code == 400, (r.status_code, r.text[:200])


def test_every_request_is_checked_not_only_initialize(gateway, http):
    """a9: a session started with a good token cannot continue with a bad one."""
    _, mcp = _session(http, gateway)
    mcp.token = "not.a.jwt"
    _assert_invalid_token(mcp.list_tools(), gateway.base)


def test_session_ids_are_random_and_distinct(gateway, http):
    tokens = full_flow(http, gateway.base)
    ids = set()
    for _ in range(3):
        mcp = McpClient(http, gateway.base, tokens.access_token)
        assert mcp.initialize().status == 200
        assert mcp.session_id and len(mcp.session_id) >= 16, mcp.session_id
        ids.add(mcp.session_id)
    assert len(ids) == 3
