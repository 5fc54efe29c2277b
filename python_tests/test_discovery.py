"""Discovery: protected-resource metadata (RFC 9728), authorization-server
metadata (RFC 8414) and OIDC discovery, JWKS. Checklist items a1-a3, b2-b4, b10."""

import base64

from cryptography.hazmat.primitives import serialization

from flow import b64url, full_flow, unverified_header
import jwt

SCOPES = ["mcp:read", "mcp:write", "mcp:admin"]


def _prm_ok(body, base):
    assert body["resource"] == f"{base}/mcp"
    assert body["authorization_servers"] == [base]
    assert body["scopes_supported"] == SCOPES
    assert body["bearer_methods_supported"] == ["header"]


def test_protected_resource_metadata_path_suffixed(gateway, http):
    r = http.get(f"{gateway.base}/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    _prm_ok(r.json(), gateway.base)


def test_protected_resource_metadata_root(gateway, http):
    r = http.get(f"{gateway.base}/.well-known/oauth-protected-resource")
    assert r.status_code == 200, r.text
    _prm_ok(r.json(), gateway.base)


def test_no_offline_access_advertised(gateway, http):
    prm = http.get(f"{gateway.base}/.well-known/oauth-protected-resource/mcp").json()
    asm = http.get(f"{gateway.base}/.well-known/oauth-authorization-server").json()
    assert "offline_access" not in prm.get("scopes_supported", [])
    assert "offline_access" not in asm.get("scopes_supported", [])


def _as_metadata_ok(body, base):
    # b3 [26]: issuer must equal the URL the metadata was built from, no trailing slash.
    assert body["issuer"] == base
    assert not body["issuer"].endswith("/")
    assert body["authorization_endpoint"] == f"{base}/authorize"
    assert body["token_endpoint"] == f"{base}/token"
    assert body["registration_endpoint"] == f"{base}/register"
    assert body["revocation_endpoint"] == f"{base}/revoke"
    assert body["jwks_uri"] == f"{base}/.well-known/jwks.json"
    assert body["code_challenge_methods_supported"] == ["S256"]  # b4: no "plain"
    assert body["grant_types_supported"] == [
        "authorization_code", "refresh_token"]  # client_credentials: only once a client can get it (issue 12)
    assert body["response_types_supported"] == ["code"]
    assert body["authorization_response_iss_parameter_supported"] is True  # b10
    assert body["token_endpoint_auth_methods_supported"] == [
        "none", "client_secret_basic", "client_secret_post"]


def test_authorization_server_metadata_issuer_equals_base(gateway, http):
    r = http.get(f"{gateway.base}/.well-known/oauth-authorization-server",
                 headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    _as_metadata_ok(r.json(), gateway.base)


def test_openid_configuration_has_code_challenge_methods(gateway, http):
    r = http.get(f"{gateway.base}/.well-known/openid-configuration")
    assert r.status_code == 200, r.text
    _as_metadata_ok(r.json(), gateway.base)


def test_metadata_endpoints_all_go_through_the_proxy(gateway, http):
    """Every advertised endpoint is on the public (proxy) origin and answers there."""
    asm = http.get(f"{gateway.base}/.well-known/oauth-authorization-server").json()
    for key, value in asm.items():
        if key.endswith("_endpoint") or key == "jwks_uri":
            assert value.startswith(gateway.base + "/"), (key, value)
    assert http.get(asm["jwks_uri"]).status_code == 200


def test_jwks_publishes_the_signing_key(gateway, http):
    r = http.get(f"{gateway.base}/.well-known/jwks.json")
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert len(keys) >= 1
    kid = gateway.signing_kid
    jwk = next(k for k in keys if k.get("kid") == kid)
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk, "private key material must never be published"
    priv = serialization.load_pem_private_key(gateway.signing_key_pem, password=None)
    nums = priv.public_key().public_numbers()
    assert jwk["x"] == b64url(nums.x.to_bytes(32, "big"))
    assert jwk["y"] == b64url(nums.y.to_bytes(32, "big"))


def test_access_token_verifies_against_jwks(gateway, http):
    tokens = full_flow(http, gateway.base)
    header = unverified_header(tokens.access_token)
    assert header["alg"] == "ES256"
    assert header["kid"] == gateway.signing_kid
    keys = http.get(f"{gateway.base}/.well-known/jwks.json").json()["keys"]
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(tokens.access_token, key, algorithms=["ES256"],
                        audience=f"{gateway.base}/mcp", issuer=gateway.base)
    assert claims["client_id"] == tokens.client_id
    # The x coordinate decodes to 32 bytes (P-256).
    assert len(base64.urlsafe_b64decode(jwk["x"] + "==")) == 32
