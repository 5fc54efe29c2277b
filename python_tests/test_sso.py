"""Signing in at the organisation's identity provider before consent (`[[identity_providers]]`).

Against a real OpenID provider (oidc-provider, clients/thirdparty/sso_idp.mjs, see
sso_idp.py) and a local server with GitHub's OAuth and REST shapes (fake_github.py): the
person goes from the gateway's sign-in page to the provider and back, the access rules let
them in or show a refusal page, the ID token's defects are each refused with nothing
created, the person's email and name reach `whoami` and the upstream's identity headers,
and the provider's own token reaches the upstream MCP server (refreshed when it is about
to expire) but never the MCP client. Revoking the grant or signing out drops it.

The browser here is an httpx client with a cookie jar: like a browser, it sends the
gateway's cookies back to the gateway and the provider's to the provider (both on
127.0.0.1; cookies ignore ports, and their names differ).
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from fake_github import FakeGitHub
from flow import (REDIRECT_URI, Grant, McpClient, authorize_params, exchange_code,
                  location_query, parse_forms, pkce_s256, refresh, register_client_id,
                  result_text, tokens_from, unverified_claims)
from gateway_proc import Gateway, gateway_binary
from sso_idp import MISBEHAVIOURS, USERS, SsoIdp

SECRET_ENV = "CORP_OIDC_SECRET"


# -- a recording upstream MCP server ------------------------------------------------

class RecordingUpstream:
    """A plain-http MCP server that answers initialize, tools/list (one tool `hello`) and
    tools/call, and records the headers of every request it gets."""

    def __init__(self):
        self.headers: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "id" not in msg:
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "recording-upstream", "version": "1"}}
                if msg.get("method") == "tools/list":
                    result = {"tools": [{"name": "hello", "description": "hi",
                                         "inputSchema": {"type": "object"}}]}
                elif msg.get("method") == "tools/call":
                    result = {"content": [{"type": "text", "text": "hello"}]}
                body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mcp"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- config and processes -----------------------------------------------------------

def oidc_provider_toml(idp: SsoIdp, secret_file: Path, rules: str) -> str:
    return f"""
[[identity_providers]]
id = "corp"
kind = "oidc"
name = "Corp SSO"
issuer = "{idp.issuer}"
client_id = "{idp.client_id}"
client_secret_file = "{secret_file}"
groups_claim = "groups"
{rules}
"""


DOMAIN_RULES = """allowed_domains = ["example.com"]

[[identity_providers.scope_rules]]
groups = ["admins"]
scopes = ["mcp:read", "mcp:write"]

[[identity_providers.scope_rules]]
groups = ["engineering"]
scopes = ["mcp:read"]
"""

HEADERS = """
[identity_headers]
subject = "X-MCP-Subject"
email = "X-MCP-Email"
name = "X-MCP-Name"
upstream_token = "X-Upstream-Token"
"""


@pytest.fixture(scope="module")
def idp():
    with SsoIdp(access_token_ttl=3600) as p:
        yield p


@pytest.fixture(autouse=True)
def well_behaved(request):
    yield
    if "idp" in request.fixturenames:
        p = request.getfixturevalue("idp")
        p.misbehave(None)
        p.set_down(False)


@pytest.fixture
def start_sso(tmp_path, request):
    """Start a gateway whose config is `body` (plus any `extra_args`); the provider `idp`
    is told the gateway's callback."""
    started: list[Gateway] = []

    def start(body: str, idp: SsoIdp | None = None, *extra_args: str, env=None) -> Gateway:
        n = len(started) + 1
        cfg = tmp_path / f"sso-{n}.toml"
        cfg.write_text(body)
        gw = Gateway(tmp_path / f"data-{n}", ["--config", str(cfg), *extra_args], env=env)
        started.append(gw)
        gw.start()
        if idp is not None:
            idp.allow_redirect_uris([f"{gw.base}/login/callback"])
        return gw

    yield start
    failed = getattr(request.node, "rep_call", None)
    for gw in started:
        gw.stop()
        if failed is not None and failed.failed:
            print(gw.log_tail(200))


def secret_file(tmp_path: Path, idp: SsoIdp) -> Path:
    f = tmp_path / "corp-secret"
    f.write_text(idp.client_secret + "\n")
    return f


def browser() -> httpx.Client:
    return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(30.0))


class SignIn:
    """One person's way from the MCP client's /authorize through the provider and back."""

    def __init__(self, gw: Gateway, b: httpx.Client, scope: str = "mcp:read mcp:write"):
        self.gw, self.b = gw, b
        with httpx.Client(timeout=30.0) as http:
            self.client_id = register_client_id(http, gw.base)
        self.pkce = pkce_s256()
        self.params = authorize_params(self.client_id, self.pkce, base=gw.base, scope=scope)

    def login_page(self) -> httpx.Response:
        r = self.b.get(f"{self.gw.base}/authorize", params=self.params)
        assert r.status_code == 200, f"/authorize: {r.status_code} {r.text[:300]}"
        return r

    def leave_for_provider(self, provider: str = "corp") -> httpx.Response:
        page = self.login_page()
        forms = [f for f in parse_forms(page.text) if f["attrs"].get("action") == "/login/provider"]
        form = next(f for f in forms if any(i.get("name") == "provider" and i.get("value") == provider
                                            for i in f["inputs"]))
        data = {i["name"]: i.get("value", "") for i in form["inputs"] if i.get("name")}
        r = self.b.post(f"{self.gw.base}/login/provider", data=data)
        assert r.status_code == 303, f"/login/provider: {r.status_code} {r.text[:300]}"
        return r

    def at_provider(self, idp: SsoIdp, login: str) -> str:
        """The callback URL the provider sends the browser to."""
        r = self.leave_for_provider()
        return idp.sign_in(self.b, r.headers["location"], login)

    def back(self, callback: str) -> httpx.Response:
        return self.b.get(callback)

    def approve(self, consent: httpx.Response) -> str:
        assert consent.status_code == 200, f"not a consent page: {consent.status_code} {consent.text[:500]}"
        form = next(f for f in parse_forms(consent.text) if f["attrs"].get("action") == "/consent")
        data = {i["name"]: i.get("value", "") for i in form["inputs"]
                if i.get("type", "").lower() == "hidden" and i.get("name")}
        data["decision"] = "approve"
        r = self.b.post(f"{self.gw.base}/consent", data=data)
        target, q = location_query(r)
        assert target == REDIRECT_URI and q.get("code"), q
        return q["code"]

    def tokens(self, code: str):
        with httpx.Client(timeout=30.0) as http:
            grant = Grant(self.client_id, self.pkce, self.params["state"], code, {})
            return tokens_from(exchange_code(http, self.gw.base, grant), self.client_id)

    def all_the_way(self, idp: SsoIdp, login: str):
        return self.tokens(self.approve(self.back(self.at_provider(idp, login))))


def whoami(gw: Gateway, token: str) -> dict:
    with httpx.Client(timeout=30.0) as http:
        mcp = McpClient(http, gw.base, token)
        assert mcp.initialize().status == 200
        return json.loads(result_text(mcp.call_tool("whoami", {}).result))


def session_cookie(b: httpx.Client) -> str | None:
    return b.cookies.get("mog_session")


# -- OIDC --------------------------------------------------------------------------

def test_a_person_signs_in_at_the_provider_and_whoami_shows_them(idp, start_sso, tmp_path):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    assert "register this redirect URI" in gw.log_tail(200)
    assert f"{gw.base}/login/callback" in gw.log_tail(200)
    with browser() as b:
        s = SignIn(gw, b)
        page = s.login_page()
        assert "Sign in with Corp SSO" in page.text
        assert 'name="password"' not in page.text, "no [[users]]: no password form"
        r = s.leave_for_provider()
        loc = urlsplit(r.headers["location"])
        q = {k: v[0] for k, v in parse_qs(loc.query).items()}
        assert f"{loc.scheme}://{loc.netloc}" == idp.issuer
        assert q["redirect_uri"] == f"{gw.base}/login/callback"
        assert q["code_challenge_method"] == "S256" and q["nonce"] and q["state"]
        assert "mog_login" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        callback = idp.sign_in(b, r.headers["location"], "alice")
        assert parse_qs(urlsplit(callback).query)["iss"] == [idp.issuer]
        consent = s.back(callback)
        assert "Signed in as <strong>Alice Example &lt;alice@example.com&gt;</strong>" in consent.text
        tokens = s.tokens(s.approve(consent))
    sent = idp.last_token_request()["fields"]
    assert sent["grant_type"] == "authorization_code" and sent.get("code_verifier")
    claims = unverified_claims(tokens.access_token)
    assert claims["sub"] == f"{idp.issuer}#alice-0001"
    assert claims["email"] == "alice@example.com" and claims["name"] == "Alice Example"
    assert tokens.scope.split() == ["mcp:read", "mcp:write"], "admins may grant both"
    me = whoami(gw, tokens.access_token)
    assert me["sub"] == f"{idp.issuer}#alice-0001"
    assert me["email"] == "alice@example.com" and me["name"] == "Alice Example"


def test_the_access_rules_refuse_with_a_page_and_no_code(idp, start_sso, tmp_path):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    for login, why in (("bob", "bob@other.org"), ("carol", "Carol Unverified")):
        with browser() as b:
            s = SignIn(gw, b)
            r = s.back(s.at_provider(idp, login))
            assert r.status_code == 403, f"{login}: {r.status_code} {r.text[:300]}"
            assert "access_denied" in r.text and why in r.text, r.text[:500]
            assert "location" not in r.headers and session_cookie(b) is None
    gw.wait_for_log("login_refused")


def test_group_rules_admit_and_narrow_the_scopes(idp, start_sso, tmp_path):
    rules = """allowed_groups = ["engineering"]

[[identity_providers.scope_rules]]
groups = ["admins"]
scopes = ["mcp:read", "mcp:write"]

[[identity_providers.scope_rules]]
groups = ["engineering"]
scopes = ["mcp:read"]
"""
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), rules), idp)
    with browser() as b:
        # carol is in engineering; her unverified email is not kept.
        tokens = SignIn(gw, b).all_the_way(idp, "carol")
    assert tokens.scope == "mcp:read"
    claims = unverified_claims(tokens.access_token)
    assert "email" not in claims and claims["name"] == "Carol Unverified"
    with browser() as b:
        s = SignIn(gw, b)
        assert s.back(s.at_provider(idp, "bob")).status_code == 403, "sales is not engineering"


def test_allowed_emails_admit_exactly_those(idp, start_sso, tmp_path):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp),
                                      'allowed_emails = ["BOB@other.org"]'), idp)
    with browser() as b:
        tokens = SignIn(gw, b).all_the_way(idp, "bob")
    assert unverified_claims(tokens.access_token)["email"] == "bob@other.org"
    with browser() as b:
        s = SignIn(gw, b)
        assert s.back(s.at_provider(idp, "alice")).status_code == 403


# What the gateway's log says about each defect: each is caught by its own check.
WHY = {
    "wrong_nonce": "the nonce is not this sign-in's",
    "replay": "the nonce is not this sign-in's",
    "foreign_key": "the signature does not verify",
    "alg_none": "not a signed JWT",
    "wrong_aud": "issued for another client",
    "expired": "ID token: expired",
    "wrong_iss": "issued by someone else",
}


@pytest.mark.parametrize("defect", MISBEHAVIOURS)
def test_an_id_token_that_does_not_verify_creates_nothing(idp, start_sso, tmp_path, defect):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    if defect == "replay":
        with browser() as b:  # an earlier sign-in whose ID token the provider will replay
            SignIn(gw, b).all_the_way(idp, "alice")
    with browser() as b:
        s = SignIn(gw, b)
        callback = s.at_provider(idp, "alice")
        idp.misbehave(defect)
        r = s.back(callback)
        idp.misbehave(None)
        assert r.status_code == 400, f"{defect}: {r.status_code} {r.text[:300]}"
        assert "did not verify" in r.text
        assert session_cookie(b) is None, "no session for a sign-in that failed"
        # The pending request was used up; a new one asks to sign in again.
        assert "Sign in with Corp SSO" in s.login_page().text
    # The log reader may be a line behind the answer: wait for the lines, not on time.
    gw.wait_for_log("sign-in at the identity provider failed")
    gw.wait_for_log(WHY[defect])


def test_a_wrong_iss_in_the_answer_or_another_browser_is_refused(idp, start_sso, tmp_path):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    with browser() as b:
        s = SignIn(gw, b)
        callback = urlsplit(s.at_provider(idp, "alice"))
        q = {k: v[0] for k, v in parse_qs(callback.query).items()}
        q["iss"] = "https://evil.example"
        r = s.back(urlunsplit(callback._replace(query=urlencode(q))))
        assert r.status_code == 400 and "did not verify" in r.text
    with browser() as b, browser() as elsewhere:
        s = SignIn(gw, b)
        callback = s.at_provider(idp, "alice")
        # The answer taken to a browser that did not start this sign-in (login CSRF).
        r = elsewhere.get(callback)
        assert r.status_code == 400 and "not started in this browser" in r.text
        assert session_cookie(elsewhere) is None
        # A state that is not this sign-in's.
        parts = urlsplit(callback)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        q["state"] = "x" + q["state"][1:]
        assert s.back(urlunsplit(parts._replace(query=urlencode(q)))).status_code == 400


def test_a_provider_that_is_down_gets_a_clear_page(idp, start_sso, tmp_path):
    # Down before the gateway ever read its metadata: no way to the provider.
    idp.set_down(True)
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    with browser() as b:
        s = SignIn(gw, b)
        page = s.login_page()
        form = next(f for f in parse_forms(page.text) if f["attrs"].get("action") == "/login/provider")
        data = {i["name"]: i.get("value", "") for i in form["inputs"] if i.get("name")}
        r = b.post(f"{gw.base}/login/provider", data=data)
        assert r.status_code == 502 and "could not be reached" in r.text
    idp.set_down(False)
    # Down between the sign-in and the code exchange.
    with browser() as b:
        s = SignIn(gw, b)
        callback = s.at_provider(idp, "alice")
        idp.set_down(True)
        r = s.back(callback)
        assert r.status_code == 502 and "could not be reached" in r.text
        assert session_cookie(b) is None
        idp.set_down(False)
        # Nothing half-created: the person is asked to sign in again, and can.
        assert "Sign in with Corp SSO" in s.login_page().text
        SignIn(gw, b).all_the_way(idp, "alice")


def test_the_upstream_gets_the_provider_token_and_the_client_never_does(idp, start_sso, tmp_path):
    up = RecordingUpstream()
    try:
        gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES) + HEADERS,
                       idp, "--upstream", up.url)
        with browser() as b:
            s = SignIn(gw, b)
            code = s.approve(s.back(s.at_provider(idp, "alice")))
            with httpx.Client(timeout=30.0) as http:
                grant = Grant(s.client_id, s.pkce, s.params["state"], code, {})
                token_answer = exchange_code(http, gw.base, grant)
                tokens = tokens_from(token_answer, s.client_id)
                mcp = McpClient(http, gw.base, tokens.access_token)
                answers = [mcp.initialize(), mcp.list_tools(), mcp.call_tool("hello", {})]
        sent = [h for h in up.headers if "x-upstream-token" in h]
        assert sent, f"no upstream token sent: {up.headers}"
        upstream_token = sent[-1]["x-upstream-token"]
        status, info = idp.userinfo(upstream_token)
        assert status == 200 and info["sub"] == "alice-0001", "a live token of the provider"
        h = sent[-1]
        assert h["x-mcp-email"] == "alice@example.com" and h["x-mcp-name"] == "Alice Example"
        assert h["x-mcp-subject"] == f"{idp.issuer}#alice-0001"
        assert "authorization" not in h, "the gateway's own token stays with the gateway"
        everything_the_client_saw = token_answer.text + "".join(
            json.dumps(dict(a.headers)) + json.dumps(a.message) + a.text for a in answers)
        assert "hello" in everything_the_client_saw, "what the client saw is really here"
        assert upstream_token not in everything_the_client_saw
        assert upstream_token not in tokens.access_token
        assert upstream_token not in gw.log_tail(2000), "never logged"
    finally:
        up.close()


def test_revoking_the_grant_drops_the_provider_token(idp, start_sso, tmp_path):
    up = RecordingUpstream()
    try:
        gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES) + HEADERS,
                       idp, "--upstream", up.url)
        with browser() as b:
            first = SignIn(gw, b)
            tokens = first.all_the_way(idp, "alice")
            # A second client of the same person, approved in the same browser session.
            second = SignIn(gw, b)
            other = second.tokens(second.approve(second.login_page()))
            with httpx.Client(timeout=30.0) as http:
                r = http.post(f"{gw.base}/revoke", data={"token": tokens.refresh_token,
                                                         "client_id": first.client_id})
                assert r.status_code == 200
                up.headers.clear()
                mcp = McpClient(http, gw.base, other.access_token)
                assert mcp.initialize().status == 200
                assert all("x-upstream-token" not in h for h in up.headers), "dropped"
                # The other grant cannot be refreshed without a new sign-in at the provider...
                r = refresh(http, gw.base, second.client_id, other.refresh_token)
                assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
                assert "authorize again" in r.json()["error_description"]
            # ...and the browser session ended: the sign-in page again, not consent.
            assert "Sign in with Corp SSO" in SignIn(gw, b).login_page().text
            # Signing in again brings a fresh provider token.
            again = SignIn(gw, b).all_the_way(idp, "alice")
            with httpx.Client(timeout=30.0) as http:
                up.headers.clear()
                assert McpClient(http, gw.base, again.access_token).initialize().status == 200
            assert any("x-upstream-token" in h for h in up.headers)
    finally:
        up.close()


def test_an_expiring_provider_token_is_refreshed_before_it_is_sent(start_sso, tmp_path):
    up = RecordingUpstream()
    # Tokens of 30 s: within the gateway's 60 s margin, so refreshed before every use.
    with SsoIdp(access_token_ttl=30) as short:
        try:
            gw = start_sso(oidc_provider_toml(short, secret_file(tmp_path, short), DOMAIN_RULES)
                           + HEADERS, short, "--upstream", up.url)
            with browser() as b:
                tokens = SignIn(gw, b).all_the_way(short, "alice")
            with httpx.Client(timeout=30.0) as http:
                assert McpClient(http, gw.base, tokens.access_token).initialize().status == 200
            grants = [t["fields"]["grant_type"] for t in short.token_requests()]
            assert grants[-1] == "refresh_token", grants
            sent = [h["x-upstream-token"] for h in up.headers if "x-upstream-token" in h]
            assert sent and short.userinfo(sent[-1])[0] == 200
            gw.wait_for_log("provider token refreshed")
        finally:
            up.close()


def test_sign_out_ends_the_session(idp, start_sso, tmp_path):
    gw = start_sso(oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES), idp)
    with browser() as b:
        SignIn(gw, b).all_the_way(idp, "alice")
        assert session_cookie(b)
        s = SignIn(gw, b)
        assert 'value="approve"' in s.login_page().text, "signed in: straight to consent"
        r = b.post(f"{gw.base}/logout", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403, "a cross-site sign-out is refused"
        r = b.post(f"{gw.base}/logout", headers={"Origin": gw.base})
        assert r.status_code == 200 and "signed out" in r.text.lower()
        assert "Sign in with Corp SSO" in SignIn(gw, b).login_page().text


def test_password_users_keep_working_beside_a_provider(idp, start_sso, tmp_path):
    pw = subprocess.run([str(gateway_binary()), "hash-password"], input=b"wonderland\n",
                        capture_output=True, timeout=120).stdout.decode().strip()
    body = oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES) + f"""
[[users]]
name = "ops"
password_hash = "{pw}"
"""
    gw = start_sso(body, idp)
    with browser() as b:
        s = SignIn(gw, b)
        page = s.login_page()
        assert "Sign in with Corp SSO" in page.text and 'name="password"' in page.text
        form = next(f for f in parse_forms(page.text) if f["attrs"].get("action") == "/login")
        data = {i["name"]: i.get("value", "") for i in form["inputs"]
                if i.get("type", "").lower() == "hidden" and i.get("name")}
        r = b.post(f"{gw.base}/login", data={**data, "username": "ops", "password": "wonderland"})
        tokens = s.tokens(s.approve(r))
    assert unverified_claims(tokens.access_token)["sub"] == "ops"


def test_provider_settings_that_cannot_work_stop_the_start(idp, tmp_path):
    cases = {
        "say who may sign in": oidc_provider_toml(idp, secret_file(tmp_path, idp), ""),
        "no [[identity_providers]]": HEADERS,
        "client_secret_env": oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES)
        .replace(f'client_secret_file = "{tmp_path / "corp-secret"}"',
                 'client_secret_env = "MOG_TEST_UNSET_SECRET"'),
    }
    for n, (expected, body) in enumerate(cases.items()):
        cfg = tmp_path / f"bad-{n}.toml"
        cfg.write_text(body)
        p = subprocess.run([str(gateway_binary()), "--config", str(cfg), "--data-dir",
                            str(tmp_path / f"bad-data-{n}"), "--proxy-addr", "127.0.0.1:0",
                            "--mcp-addr", "127.0.0.1:0", "--routes-addr", "127.0.0.1:0",
                            "--jwks-addr", "127.0.0.1:0"],
                           capture_output=True, timeout=60)
        assert p.returncode != 0, f"{expected}: started"
        assert expected in p.stderr.decode(), p.stderr.decode()[-500:]


# -- GitHub ------------------------------------------------------------------------

def github_toml(gh: FakeGitHub, rules: str) -> str:
    return f"""
[[identity_providers]]
kind = "github"
client_id = "{gh.client_id}"
client_secret_env = "GH_SECRET"
authorize_url = "{gh.authorize_url}"
token_url = "{gh.token_url}"
api_url = "{gh.api_url}"
{rules}
"""


def test_github_sign_in_with_org_and_team_rules(start_sso):
    with FakeGitHub() as gh:
        rules = 'allowed_groups = ["acme/platform"]'
        gw = start_sso(github_toml(gh, rules), None, env={"GH_SECRET": gh.client_secret})
        with browser() as b:
            s = SignIn(gw, b)
            assert "Sign in with GitHub" in s.login_page().text
            r = s.leave_for_provider("github")
            q = parse_qs(urlsplit(r.headers["location"]).query)
            assert q["redirect_uri"] == [f"{gw.base}/login/callback"]
            assert q["code_challenge_method"] == ["S256"]
            callback = b.get(r.headers["location"]).headers["location"]
            tokens = s.tokens(s.approve(s.back(callback)))
        claims = unverified_claims(tokens.access_token)
        assert claims["sub"] == f"{gh.web_url}#583231"
        assert claims["email"] == "octocat@github.example" and claims["name"] == "The Octocat"
        assert any(p.endswith("/user/teams") or "/user/teams?" in p for _, p, _ in gh.requests)
        gh.sign_in_as("hubot")
        with browser() as b:
            s = SignIn(gw, b)
            r = s.leave_for_provider("github")
            r = s.back(b.get(r.headers["location"]).headers["location"])
            assert r.status_code == 403 and "hubot@elsewhere.example" in r.text


def test_github_errors_in_a_200_answer_are_refusals(start_sso):
    with FakeGitHub() as gh:
        gw = start_sso(github_toml(gh, "allow_all_users = true"), None,
                       env={"GH_SECRET": "not-the-secret"})
        with browser() as b:
            s = SignIn(gw, b)
            r = s.leave_for_provider("github")
            r = s.back(b.get(r.headers["location"]).headers["location"])
            assert r.status_code == 502 and "refused" in r.text
            assert session_cookie(b) is None
        gw.wait_for_log("incorrect_client_credentials")
        assert "not-the-secret" not in gw.log_tail(2000)


def test_a_route_gets_the_provider_token_as_its_bearer(idp, start_sso, tmp_path):
    up = RecordingUpstream()
    try:
        body = oidc_provider_toml(idp, secret_file(tmp_path, idp), DOMAIN_RULES) + f"""
[[routes]]
path = "/gh/mcp"
upstream = "{up.url}"
[routes.identity_headers]
upstream_token = "Authorization"

[[routes]]
path = "/demo/mcp"
"""
        gw = start_sso(body, idp)
        with browser() as b:
            s = SignIn(gw, b)
            s.params["resource"] = f"{gw.base}/gh/mcp"
            code = s.approve(s.back(s.at_provider(idp, "alice")))
        with httpx.Client(timeout=30.0) as http:
            grant = Grant(s.client_id, s.pkce, s.params["state"], code, {})
            tokens = tokens_from(exchange_code(http, gw.base, grant,
                                               resource=f"{gw.base}/gh/mcp"), s.client_id)
            assert McpClient(http, f"{gw.base}/gh", tokens.access_token).initialize().status == 200
        bearer = up.headers[-1].get("authorization", "")
        assert bearer.startswith("Bearer "), up.headers[-1]
        assert idp.userinfo(bearer.removeprefix("Bearer "))[0] == 200, "the provider's token"
        assert bearer.removeprefix("Bearer ") != tokens.access_token
    finally:
        up.close()
