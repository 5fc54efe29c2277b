"""Tests of the SSO test harness itself: the OpenID provider (sso_idp.mjs via sso_idp.SsoIdp)
and the GitHub stand-in (fake_github.FakeGitHub) behave as the gateway's SSO tests assume.

No gateway is involved: the client side of each flow is written out here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from fake_github import FakeGitHub
from sso_idp import MISBEHAVIOURS, USERS, SsoIdp, SsoSignInError

# Never requested: sign_in returns the redirect instead of following it.
REDIRECT_URI = "http://127.0.0.1:9/cb"
SCOPE = "openid email profile"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce() -> tuple[str, str]:
    verifier = b64url(secrets.token_bytes(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def new_client() -> httpx.Client:
    return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(10.0), trust_env=False)


# -- the OpenID provider -------------------------------------------------------------

@pytest.fixture(scope="module")
def idp():
    with SsoIdp(access_token_ttl=30) as p:
        p.allow_redirect_uris([REDIRECT_URI])
        p.meta = p.discovery()
        yield p


@pytest.fixture(autouse=True)
def _reset_idp(request):
    yield
    if "idp" in request.fixturenames:
        p = request.getfixturevalue("idp")
        p.misbehave(None)
        p.set_down(False)
        p.allow_redirect_uris([REDIRECT_URI])


class Flow:
    """One authorization code flow against the provider, as the gateway runs it."""

    def __init__(self, idp: SsoIdp, login: str = "alice", scope: str = SCOPE,
                 redirect_uri: str = REDIRECT_URI, http: httpx.Client | None = None):
        self.idp = idp
        self.http = http or new_client()
        self.redirect_uri = redirect_uri
        self.state = secrets.token_urlsafe(12)
        self.nonce = secrets.token_urlsafe(12)
        self.verifier, challenge = pkce()
        self.authorize_url = idp.meta["authorization_endpoint"] + "?" + urlencode({
            "client_id": idp.client_id, "response_type": "code", "redirect_uri": redirect_uri,
            "scope": scope, "state": self.state, "nonce": self.nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        self.location = idp.sign_in(self.http, self.authorize_url, login)
        self.params = query(self.location)

    def exchange(self, auth: str = "basic") -> httpx.Response:
        form = {"grant_type": "authorization_code", "code": self.params["code"],
                "redirect_uri": self.redirect_uri, "code_verifier": self.verifier}
        return token_request(self.idp, form, auth)


def token_request(idp: SsoIdp, form: dict, auth: str = "basic") -> httpx.Response:
    with new_client() as c:
        if auth == "basic":
            return c.post(idp.meta["token_endpoint"], data=form, auth=(idp.client_id, idp.client_secret))
        return c.post(idp.meta["token_endpoint"],
                      data={**form, "client_id": idp.client_id, "client_secret": idp.client_secret})


def jwks(idp: SsoIdp) -> jwt.PyJWKSet:
    with new_client() as c:
        return jwt.PyJWKSet.from_dict(c.get(idp.meta["jwks_uri"]).json())


def verify(idp: SsoIdp, id_token: str, **options) -> dict:
    kid = jwt.get_unverified_header(id_token)["kid"]
    key = jwks(idp)[kid]
    return jwt.decode(id_token, key=key, algorithms=["RS256"], audience=idp.client_id,
                      issuer=idp.issuer, options=options or None)


def good_tokens(idp: SsoIdp, login: str = "alice", **kw) -> tuple[Flow, dict]:
    flow = Flow(idp, login, **kw)
    r = flow.exchange()
    assert r.status_code == 200, r.text
    return flow, r.json()


def test_discovery_names_issuer_and_iss_parameter(idp):
    meta = idp.meta
    assert meta["issuer"] == idp.issuer
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"]
    assert {"client_secret_basic", "client_secret_post"} <= set(meta["token_endpoint_auth_methods_supported"])
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        assert meta[key].startswith(idp.issuer + "/"), (key, meta[key])
    assert {"openid", "email", "profile", "groups"} <= set(meta["scopes_supported"])


def test_code_flow_with_pkce_and_nonce(idp):
    flow = Flow(idp, "alice")
    assert flow.location.startswith(REDIRECT_URI + "?"), flow.location
    assert flow.params["state"] == flow.state
    assert flow.params["iss"] == idp.issuer  # RFC 9207
    assert flow.params["code"]

    r = flow.exchange()
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["expires_in"] == 30
    assert tokens["refresh_token"] and tokens["access_token"]
    assert tokens["access_token"].count(".") == 0  # opaque

    claims = verify(idp, tokens["id_token"])
    alice = USERS["alice"]
    assert claims["sub"] == alice["sub"]
    assert claims["nonce"] == flow.nonce
    assert claims["email"] == alice["email"] and claims["email_verified"] is True
    assert claims["name"] == alice["name"]
    assert claims["groups"] == ["engineering", "admins"]

    last = idp.last_token_request()
    assert last["fields"]["grant_type"] == "authorization_code"
    assert last["fields"]["code_verifier"] == flow.verifier
    assert last["client_auth"] == "client_secret_basic"
    assert last["basic_client_id"] == idp.client_id
    assert last["status"] == 200 and last["error"] is None

    # the code is single use
    again = flow.exchange()
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_client_secret_post_and_unverified_email(idp):
    flow = Flow(idp, "carol", scope="openid email profile groups")
    r = flow.exchange(auth="post")
    assert r.status_code == 200, r.text
    claims = verify(idp, r.json()["id_token"])
    assert claims["sub"] == "carol-0003"
    assert claims["email"] == "carol@example.com" and claims["email_verified"] is False
    assert claims["groups"] == ["engineering"]
    last = idp.last_token_request()
    assert last["client_auth"] == "client_secret_post"
    assert last["fields"]["client_secret"] == "***"


def test_claims_follow_scopes(idp):
    _, tokens = good_tokens(idp, "bob", scope="openid")
    claims = verify(idp, tokens["id_token"])
    assert claims["sub"] == "bob-0002" and claims["groups"] == ["sales"]  # groups: always
    assert "email" not in claims and "name" not in claims


def test_wrong_pkce_verifier_and_secret_are_refused(idp):
    flow = Flow(idp, "alice")
    flow.verifier = pkce()[0]
    r = flow.exchange()
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text

    flow = Flow(idp, "alice")
    with new_client() as c:
        r = c.post(idp.meta["token_endpoint"], auth=(idp.client_id, "wrong"),
                   data={"grant_type": "authorization_code", "code": flow.params["code"],
                         "redirect_uri": REDIRECT_URI, "code_verifier": flow.verifier})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text


def test_authorization_without_pkce_is_refused(idp):
    url = idp.meta["authorization_endpoint"] + "?" + urlencode({
        "client_id": idp.client_id, "response_type": "code", "redirect_uri": REDIRECT_URI,
        "scope": SCOPE, "state": "s1"})
    with new_client() as c:
        location = idp.sign_in(c, url, "alice")
    params = query(location)
    assert location.startswith(REDIRECT_URI) and params["error"] == "invalid_request", location
    assert params["state"] == "s1" and params["iss"] == idp.issuer


def test_refresh_rotates_and_userinfo_answers(idp):
    _, tokens = good_tokens(idp, "alice")
    status, info = idp.userinfo(tokens["access_token"])
    assert status == 200, info
    assert info == {"sub": "alice-0001", "email": "alice@example.com", "email_verified": True,
                    "name": "Alice Example", "groups": ["engineering", "admins"]}

    r = token_request(idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert fresh["refresh_token"] and fresh["refresh_token"] != tokens["refresh_token"]
    assert fresh["access_token"] != tokens["access_token"]
    assert verify(idp, fresh["id_token"])["sub"] == "alice-0001"
    assert idp.last_token_request()["fields"]["grant_type"] == "refresh_token"
    assert idp.userinfo(fresh["access_token"])[0] == 200

    # the rotated-out refresh token is dead (and reusing it revokes the grant)
    reused = token_request(idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    assert idp.userinfo("not-a-token")[0] == 401


def test_unregistered_redirect_uri_then_allowed(idp):
    other = "http://127.0.0.1:9/other-callback"
    with pytest.raises(SsoSignInError, match="400"):
        Flow(idp, "alice", redirect_uri=other)
    idp.allow_redirect_uris([REDIRECT_URI, other])
    flow = Flow(idp, "alice", redirect_uri=other)
    assert flow.location.startswith(other + "?")
    assert flow.exchange().status_code == 200


def test_unknown_login_is_refused(idp):
    with pytest.raises(SsoSignInError, match="refused"):
        Flow(idp, "mallory")


def test_consent_denied_answers_access_denied(idp):
    flow_http = new_client()
    state = "deny-state"
    _, challenge = pkce()
    url = idp.meta["authorization_endpoint"] + "?" + urlencode({
        "client_id": idp.client_id, "response_type": "code", "redirect_uri": REDIRECT_URI,
        "scope": SCOPE, "state": state, "code_challenge": challenge, "code_challenge_method": "S256"})
    location = idp.sign_in(flow_http, url, "bob", approve=False)
    params = query(location)
    assert params["error"] == "access_denied" and params["state"] == state


def test_existing_session_skips_the_pages(idp):
    http = new_client()
    Flow(idp, "bob", http=http)
    again = Flow(idp, "ignored-login", http=http)  # no login form shown: bob's session
    assert "code" in again.params
    r = again.exchange()
    assert verify(idp, r.json()["id_token"])["sub"] == "bob-0002"


@pytest.mark.parametrize("mode", MISBEHAVIOURS)
def test_misbehaviour(idp, mode):
    earlier, earlier_tokens = good_tokens(idp, "alice")
    real_kid = jwt.get_unverified_header(earlier_tokens["id_token"])["kid"]

    idp.misbehave(mode)
    flow, tokens = good_tokens(idp, "alice")
    bad = tokens["id_token"]
    header = jwt.get_unverified_header(bad)
    unverified = jwt.decode(bad, options={"verify_signature": False})
    assert idp.last_token_request()["id_token_mode"] == mode

    if mode == "wrong_nonce":
        claims = verify(idp, bad)  # real signature
        assert claims["nonce"] != flow.nonce
    elif mode == "foreign_key":
        assert header["kid"] == real_kid and header["alg"] == "RS256"
        assert unverified["nonce"] == flow.nonce
        with pytest.raises(jwt.InvalidSignatureError):
            verify(idp, bad)
    elif mode == "alg_none":
        assert header["alg"] == "none" and bad.endswith(".")
        assert unverified["nonce"] == flow.nonce
        with pytest.raises(jwt.PyJWTError):
            jwt.decode(bad, key=jwks(idp)[real_kid], algorithms=["RS256"], audience=idp.client_id)
    elif mode == "replay":
        assert bad == earlier_tokens["id_token"]
        assert verify(idp, bad)["nonce"] == earlier.nonce != flow.nonce
    elif mode == "wrong_aud":
        with pytest.raises(jwt.InvalidAudienceError):
            verify(idp, bad)
        assert verify(idp, bad, verify_aud=False)["aud"] != idp.client_id
    elif mode == "expired":
        with pytest.raises(jwt.ExpiredSignatureError):
            verify(idp, bad)
        claims = verify(idp, bad, verify_exp=False, verify_iat=False)
        assert claims["exp"] < time.time() - 3000 and claims["iat"] < claims["exp"]
    elif mode == "wrong_iss":
        with pytest.raises(jwt.InvalidIssuerError):
            verify(idp, bad)
        assert verify(idp, bad, verify_iss=False)["nonce"] == flow.nonce
    else:  # pragma: no cover
        pytest.fail(f"untested mode {mode}")

    # refresh responses are left alone; and after a reset the code flow is clean again
    r = token_request(idp, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200 and verify(idp, r.json()["id_token"])["sub"] == "alice-0001"
    idp.misbehave(None)
    flow, tokens = good_tokens(idp, "alice")
    assert verify(idp, tokens["id_token"])["nonce"] == flow.nonce


def test_down_answers_503(idp):
    idp.set_down(True)
    with new_client() as c:
        assert c.get(idp.discovery_url).status_code == 503
        assert c.get(idp.meta["jwks_uri"]).status_code == 503
        assert c.post(idp.meta["token_endpoint"], data={"grant_type": "refresh_token"}).status_code == 503
    idp.set_down(False)
    assert idp.discovery()["issuer"] == idp.issuer


def test_control_rejects_unknown_mode(idp):
    with new_client() as c:
        r = c.post(f"{idp.issuer}/__control/misbehave", json={"mode": "bogus"})
    assert r.status_code == 400


def test_start_options_and_clean_exit():
    uri = "http://127.0.0.1:9/start-cb"
    p = SsoIdp(client_id="other-client", client_secret="s3cret", access_token_ttl=5, redirect_uris=[uri])
    with p:
        p.meta = p.discovery()
        flow, tokens = good_tokens(p, "bob", redirect_uri=uri)
        assert tokens["expires_in"] == 5
        assert verify(p, tokens["id_token"])["aud"] == "other-client"
    assert p.returncode == 0, p.log_tail()


# -- the GitHub stand-in -------------------------------------------------------------

@pytest.fixture
def github():
    with FakeGitHub() as gh:
        yield gh


def gh_authorize(gh: FakeGitHub, http: httpx.Client, challenge: str | None = None,
                 redirect_uri: str = REDIRECT_URI, scope: str = "read:user user:email read:org",
                 client_id: str | None = None) -> httpx.Response:
    params = {"client_id": client_id or gh.client_id, "redirect_uri": redirect_uri,
              "state": "st-1", "scope": scope}
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    return http.get(gh.authorize_url, params=params)


def gh_token(gh: FakeGitHub, http: httpx.Client, json_accept: bool = True, basic: bool = False,
             **form) -> httpx.Response:
    form.setdefault("redirect_uri", REDIRECT_URI)
    headers = {"Accept": "application/json"} if json_accept else {}
    if basic:
        return http.post(gh.token_url, data=form, headers=headers, auth=(gh.client_id, gh.client_secret))
    return http.post(gh.token_url, headers=headers,
                     data={"client_id": gh.client_id, "client_secret": gh.client_secret, **form})


def test_github_flow_with_pkce_and_api(github):
    verifier, challenge = pkce()
    with new_client() as http:
        r = gh_authorize(github, http, challenge)
        assert r.status_code == 302
        params = query(r.headers["location"])
        assert r.headers["location"].startswith(REDIRECT_URI + "?")
        assert params["state"] == "st-1" and "iss" not in params

        r = gh_token(github, http, code=params["code"], code_verifier=verifier)
        assert r.status_code == 200
        tokens = r.json()
        assert tokens["access_token"].startswith("gho_") and tokens["token_type"] == "bearer"
        assert tokens["scope"] == "read:user,user:email,read:org"
        assert "refresh_token" not in tokens and "expires_in" not in tokens
        assert github.tokens_for("octocat") == [tokens["access_token"]]

        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        user = http.get(f"{github.api_url}/user", headers=auth)
        assert user.status_code == 200
        assert {k: user.json()[k] for k in ("id", "login", "name", "email")} == {
            "id": 583231, "login": "octocat", "name": "The Octocat", "email": "octocat@github.example"}
        assert "read:org" in user.headers["x-oauth-scopes"]
        emails = http.get(f"{github.api_url}/user/emails",
                          headers={"Authorization": f"token {tokens['access_token']}"}).json()
        assert emails == [
            {"email": "octocat@github.example", "primary": True, "verified": True, "visibility": "public"},
            {"email": "old@example.org", "primary": False, "verified": False, "visibility": None}]
        assert [o["login"] for o in http.get(f"{github.api_url}/user/orgs", headers=auth).json()] == ["acme"]
        teams = http.get(f"{github.api_url}/user/teams", headers=auth).json()
        assert [(t["organization"]["login"], t["slug"]) for t in teams] == [("acme", "platform")]

    assert github.api_url == github.web_url + "/api/v3"
    assert ("GET", "/api/v3/user", True) in github.requests
    assert ("POST", "/login/oauth/access_token", False) in github.requests


def test_github_error_shapes(github):
    verifier, challenge = pkce()
    with new_client() as http:
        assert gh_authorize(github, http, client_id="unknown").status_code == 404

        code = query(gh_authorize(github, http, challenge).headers["location"])["code"]
        r = gh_token(github, http, code=code, code_verifier=verifier, client_secret="wrong")
        assert r.status_code == 200 and r.json()["error"] == "incorrect_client_credentials"
        assert r.json()["error_description"]

        code = query(gh_authorize(github, http, challenge).headers["location"])["code"]
        r = gh_token(github, http, code=code, code_verifier=pkce()[0])
        assert r.status_code == 200 and r.json()["error"] == "bad_verification_code"
        r = gh_token(github, http, code=code, code_verifier=verifier)  # burnt by the failed try
        assert r.json()["error"] == "bad_verification_code"

        code = query(gh_authorize(github, http, challenge).headers["location"])["code"]
        r = gh_token(github, http, code=code)  # challenge sent, verifier missing
        assert r.json()["error"] == "bad_verification_code"

        # without Accept: application/json the answer is form-encoded, like GitHub's
        code = query(gh_authorize(github, http).headers["location"])["code"]
        r = gh_token(github, http, json_accept=False, basic=True, code=code)
        assert r.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert parse_qs(r.text)["access_token"][0].startswith("gho_")
        r = gh_token(github, http, code=code)
        assert r.json()["error"] == "bad_verification_code"  # single use

        github.allow_redirect_uris(["http://127.0.0.1:9/only"])
        assert gh_authorize(github, http).status_code == 400

        github.sign_in_as(None)
        r = gh_authorize(github, http, redirect_uri="http://127.0.0.1:9/only")
        assert query(r.headers["location"])["error"] == "access_denied"


def test_github_api_requires_a_live_token(github):
    with new_client() as http:
        for headers in ({}, {"Authorization": "Bearer gho_bogus"}, {"Authorization": "Basic eDp5"}):
            r = http.get(f"{github.api_url}/user", headers=headers)
            assert r.status_code == 401 and r.json()["message"] == "Bad credentials"
    assert ("GET", "/api/v3/user", False) in github.requests


def test_github_second_user_has_no_orgs(github):
    github.sign_in_as("hubot")
    with new_client() as http:
        code = query(gh_authorize(github, http, scope="read:user").headers["location"])["code"]
        tokens = gh_token(github, http, code=code).json()
        assert tokens["scope"] == "read:user"
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        user = http.get(f"{github.api_url}/user", headers=auth).json()
        assert (user["id"], user["login"], user["email"]) == (1000002, "hubot", None)
        emails = http.get(f"{github.api_url}/user/emails", headers=auth).json()
        assert emails == [{"email": "hubot@elsewhere.example", "primary": True, "verified": True,
                           "visibility": "private"}]
        assert http.get(f"{github.api_url}/user/orgs", headers=auth).json() == []
        assert http.get(f"{github.api_url}/user/teams", headers=auth).json() == []
    assert github.tokens_for("hubot") == [tokens["access_token"]]
    assert github.tokens_for("octocat") == []


def test_github_expiring_tokens_refresh_and_rotate():
    with FakeGitHub(expiring_tokens=True, api_prefix="") as gh, new_client() as http:
        assert gh.api_url == gh.web_url
        code = query(gh_authorize(gh, http).headers["location"])["code"]
        tokens = gh_token(gh, http, code=code).json()
        assert tokens["access_token"].startswith("ghu_") and tokens["refresh_token"].startswith("ghr_")
        assert tokens["expires_in"] == 8 * 3600 and tokens["refresh_token_expires_in"] > tokens["expires_in"]

        gh.expire_access_tokens()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert http.get(f"{gh.api_url}/user", headers=auth).status_code == 401

        r = gh_token(gh, http, basic=True, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
        fresh = r.json()
        assert fresh["refresh_token"] != tokens["refresh_token"] and fresh["access_token"] != tokens["access_token"]
        assert http.get(f"{gh.api_url}/user",
                        headers={"Authorization": f"Bearer {fresh['access_token']}"}).json()["login"] == "octocat"

        r = gh_token(gh, http, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
        assert r.status_code == 200 and r.json()["error"] == "bad_refresh_token"

        gh.revoke_tokens_for("octocat")
        assert gh.tokens_for("octocat") == []
        r = gh_token(gh, http, grant_type="refresh_token", refresh_token=fresh["refresh_token"])
        assert r.json()["error"] == "bad_refresh_token"


def test_github_oauth_app_tokens_cannot_refresh(github):
    with new_client() as http:
        r = gh_token(github, http, grant_type="refresh_token", refresh_token="ghr_x")
        assert r.status_code == 200 and r.json()["error"] == "unsupported_grant_type"
        assert json.loads(r.text)["error_uri"].startswith("https://docs.github.com/")
