"""Authorization endpoint and consent page. Checklist items a11, b4, b5, b8, b10."""

import pytest

from flow import (REDIRECT_URI, authorize_and_consent, authorize_params, get_authorize,
                  location_query, parse_consent_form, parse_forms, pkce_s256, post_consent,
                  register_client_id)


def _consent_page(http, base, client_id, **kw):
    params = authorize_params(client_id, pkce_s256(), base=base, **kw)
    r = get_authorize(http, base, params)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    return params, r


def test_consent_page_has_one_form_with_csrf_and_two_decisions(gateway, http):
    cid = register_client_id(http, gateway.base)
    _, r = _consent_page(http, gateway.base, cid)
    assert r.headers["content-type"].startswith("text/html")
    form = parse_consent_form(r.text)
    assert form.method == "post"
    assert form.action == "/consent"
    assert form.hidden.get("request_id")
    assert form.hidden.get("csrf_token")
    assert sorted(form.decisions) == ["approve", "deny"]


def test_approve_redirects_with_code_state_and_iss(gateway, http):
    cid = register_client_id(http, gateway.base)
    grant = authorize_and_consent(http, gateway.base, cid)
    assert grant.code
    assert grant.redirect_query["iss"] == gateway.base
    assert "error" not in grant.redirect_query


def test_deny_on_consent_is_access_denied(gateway, http):
    cid = register_client_id(http, gateway.base)
    params, r = _consent_page(http, gateway.base, cid)
    c = post_consent(http, gateway.base, parse_consent_form(r.text), "deny")
    assert c.status_code in (302, 303)
    target, q = location_query(c)
    assert target == REDIRECT_URI
    assert q["error"] == "access_denied"
    assert q["state"] == params["state"]
    assert q["iss"] == gateway.base
    assert "code" not in q


def test_consent_request_id_works_once(gateway, http):
    cid = register_client_id(http, gateway.base)
    _, r = _consent_page(http, gateway.base, cid)
    form = parse_consent_form(r.text)
    first = post_consent(http, gateway.base, form, "approve")
    assert first.status_code in (302, 303)
    assert "code" in location_query(first)[1]
    second = post_consent(http, gateway.base, form, "approve")
    loc = second.headers.get("location", "")
    assert "code=" not in loc, f"request_id honoured twice: {second.status_code} {loc}"


def test_consent_with_wrong_csrf_token_issues_no_code(gateway, http):
    cid = register_client_id(http, gateway.base)
    _, r = _consent_page(http, gateway.base, cid)
    form = parse_consent_form(r.text)
    c = post_consent(http, gateway.base, form, "approve",
                     override={"csrf_token": "forged-" + form.hidden["csrf_token"]})
    assert "code=" not in c.headers.get("location", ""), c.headers
    assert c.status_code >= 400


def test_unknown_client_at_authorize_is_400_without_redirect(gateway, http):
    params = authorize_params("no-such-client", pkce_s256(), base=gateway.base)
    r = get_authorize(http, gateway.base, params)
    assert r.status_code == 400, r.text
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert not parse_forms(r.text), "an error page must not offer a consent form"


def test_unregistered_redirect_uri_is_400_without_redirect(gateway, http):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, pkce_s256(), base=gateway.base,
                              redirect_uri="http://127.0.0.1:47113/other")
    r = get_authorize(http, gateway.base, params)
    assert r.status_code == 400, r.text
    assert "location" not in r.headers


def test_redirect_uri_must_match_exactly(gateway, http):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, pkce_s256(), base=gateway.base,
                              redirect_uri=REDIRECT_URI + "/")
    r = get_authorize(http, gateway.base, params)
    assert r.status_code == 400, r.text
    assert "location" not in r.headers


def _error_redirect(http, base, params):
    r = get_authorize(http, base, params)
    assert r.status_code in (302, 303), f"{r.status_code} {r.text[:300]}"
    target, q = location_query(r)
    assert target == REDIRECT_URI
    assert q["state"] == params["state"]
    assert q["iss"] == base
    assert "code" not in q
    return q


def test_plain_pkce_redirects_invalid_request(gateway, http):
    cid = register_client_id(http, gateway.base)
    p = pkce_s256()
    params = authorize_params(cid, p, base=gateway.base, method="plain")
    params["code_challenge"] = p.verifier
    assert _error_redirect(http, gateway.base, params)["error"] == "invalid_request"


def test_missing_pkce_redirects_invalid_request(gateway, http):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, None, base=gateway.base)
    assert _error_redirect(http, gateway.base, params)["error"] == "invalid_request"


def test_unknown_scope_redirects_invalid_scope(gateway, http):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, pkce_s256(), base=gateway.base, scope="mcp:read mcp:root")
    assert _error_redirect(http, gateway.base, params)["error"] == "invalid_scope"


def test_wrong_resource_redirects_invalid_target(gateway, http):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, pkce_s256(), base=gateway.base,
                              resource="https://other.example.com/mcp")
    assert _error_redirect(http, gateway.base, params)["error"] == "invalid_target"


@pytest.mark.parametrize("state", ["a b&c=d", "ünïcode/?#"])
def test_state_is_returned_exactly(gateway, http, state):
    cid = register_client_id(http, gateway.base)
    params = authorize_params(cid, pkce_s256(), base=gateway.base, state=state)
    r = get_authorize(http, gateway.base, params)
    c = post_consent(http, gateway.base, parse_consent_form(r.text), "approve")
    _, q = location_query(c)
    assert q["state"] == state
