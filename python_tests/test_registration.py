"""Dynamic client registration (RFC 7591). Checklist items b6, b8."""

import pytest

from flow import REDIRECT_URI, register


def test_register_public_client_is_201(gateway, http):
    r = register(http, gateway.base, [REDIRECT_URI], client_name="flow test client")
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body.get("client_id"), str) and body["client_id"]
    assert body["redirect_uris"] == [REDIRECT_URI]
    assert body.get("token_endpoint_auth_method") == "none"
    assert body.get("client_name") == "flow test client"
    # A public client ("none") must not be handed a secret.
    assert not body.get("client_secret")


def test_two_registrations_get_distinct_client_ids(gateway, http):
    a = register(http, gateway.base).json()["client_id"]
    b = register(http, gateway.base).json()["client_id"]
    assert a != b


def test_register_accepts_standard_optional_metadata(gateway, http):
    r = register(http, gateway.base, [REDIRECT_URI, "https://app.example.com/cb"],
                 grant_types=["authorization_code", "refresh_token"],
                 response_types=["code"], application_type="native")
    assert r.status_code == 201, r.text
    assert r.json()["redirect_uris"] == [REDIRECT_URI, "https://app.example.com/cb"]


@pytest.mark.parametrize("uri", [
    "http://evil.example.com/callback",  # plain http to a non-loopback host
    "not a uri",
    "/relative/callback",
])
def test_register_bad_redirect_uri_is_400(gateway, http, uri):
    r = register(http, gateway.base, [uri])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_redirect_uri"


def test_register_redirect_uri_with_fragment_is_refused(gateway, http):
    r = register(http, gateway.base, ["http://127.0.0.1:47113/callback#frag"])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_redirect_uri"


def test_register_without_redirect_uris_is_400(gateway, http):
    r = http.post(f"{gateway.base}/register",
                  json={"client_name": "x", "token_endpoint_auth_method": "none"})
    assert r.status_code == 400, r.text
    assert "error" in r.json()
