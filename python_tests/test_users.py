"""Users who sign in before consent, scopes per user, and remembered consent.

Checklist a11 (per-client user consent) and b1 (OAuth 2.1 code flow): with `[[users]]`
in the config a login page (argon2 hashes from `mcp-oauth-gateway hash-password`) comes
before the consent page, the token's `sub` is the user, each user grants only the scopes
they hold, and approvals are remembered per (user, client, scopes) until revoked on
`/consents`.

Cookies are handled by hand: every browser-like client here has a cookie jar that stores
nothing, and the session cookie `mog_session` is sent explicitly, so each request carries
exactly the session the test means it to carry.
"""

from __future__ import annotations

import subprocess
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import httpx
import pytest

from flow import (REDIRECT_URI, Grant, McpClient, authorize_params, exchange_code,
                  location_query, parse_forms, pkce_s256, register_client_id, result_text,
                  tokens_from, unverified_claims)
from gateway_proc import Gateway, gateway_binary

ALICE_PASSWORD = "wonderland"
BOB_PASSWORD = "builder"
SESSION_TTL = 3600
SUBPROCESS_TIMEOUT = 120


# -- helpers ---------------------------------------------------------------------

def run_hash_password(stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(gateway_binary()), "hash-password"], input=stdin,
                          capture_output=True, timeout=SUBPROCESS_TIMEOUT)


def hash_of(password: str) -> str:
    p = run_hash_password(password.encode() + b"\n")
    assert p.returncode == 0, f"hash-password failed: {p.returncode} {p.stderr!r}"
    out = p.stdout.decode().strip()
    assert out.startswith("$argon2"), out
    return out


def jarless() -> httpx.Client:
    """A browser-ish client whose cookie jar never stores anything."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(30.0), cookies=jar)


def cookie_header(value: str | None) -> dict:
    return {"Cookie": f"mog_session={value}"} if value else {}


def session_from(resp: httpx.Response) -> tuple[str | None, str | None]:
    """(mog_session value, full Set-Cookie header) of a response, if it set one."""
    for raw in resp.headers.get_list("set-cookie"):
        name, _, rest = raw.partition("=")
        if name.strip() == "mog_session":
            return rest.split(";", 1)[0], raw
    return None, None


def the_form(html: str) -> dict:
    forms = parse_forms(html)
    assert len(forms) == 1, f"expected one form, got {len(forms)}: {html[:500]}"
    return forms[0]


def input_names(form: dict) -> set:
    return {i.get("name") for i in form["inputs"] if i.get("name")}


def hidden(form: dict) -> dict:
    return {i["name"]: i.get("value", "") for i in form["inputs"]
            if i.get("type", "").lower() == "hidden" and i.get("name")}


def is_login_page(resp: httpx.Response) -> bool:
    if resp.status_code not in (200, 401):
        return False
    f = the_form(resp.text)
    return f["attrs"].get("action") == "/login" and "password" in input_names(f)


def is_consent_page(resp: httpx.Response) -> bool:
    if resp.status_code != 200:
        return False
    f = the_form(resp.text)
    decisions = {b.get("value") for b in f["buttons"] if b.get("name") == "decision"}
    return (f["attrs"].get("action") == "/consent" and decisions == {"approve", "deny"}
            and "password" not in input_names(f))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def users_toml(hashes: dict, extra: str = "") -> str:
    return (
        f"session_ttl_seconds = {SESSION_TTL}\n"
        f"{extra}\n"
        "[[users]]\n"
        'name = "alice"\n'
        f"password_hash = \"{hashes['alice']}\"\n"
        "\n"
        "[[users]]\n"
        'name = "bob"\n'
        f"password_hash = \"{hashes['bob']}\"\n"
        'scopes = ["mcp:read"]\n'
    )


class Flow:
    """One authorization attempt by one browser against one gateway."""

    def __init__(self, gw: Gateway, browser: httpx.Client, client_id: str,
                 scope: str | None = "mcp:read mcp:write"):
        self.gw = gw
        self.browser = browser
        self.client_id = client_id
        self.pkce = pkce_s256()
        self.params = authorize_params(client_id, self.pkce, base=gw.base, scope=scope)

    def authorize(self, cookie: str | None = None) -> httpx.Response:
        return self.browser.get(f"{self.gw.base}/authorize", params=self.params,
                                headers=cookie_header(cookie))

    def login(self, page: httpx.Response, username: str, password: str) -> httpx.Response:
        assert is_login_page(page), f"not a login page: {page.status_code} {page.text[:500]}"
        h = hidden(the_form(page.text))
        assert set(h) == {"request_id", "csrf_token"}, h
        return self.browser.post(f"{self.gw.base}/login", data={
            "request_id": h["request_id"], "csrf_token": h["csrf_token"],
            "username": username, "password": password})

    def sign_in(self, username: str, password: str) -> tuple[str, httpx.Response]:
        """Authorize (no cookie), sign in; returns (session cookie, consent page)."""
        page = self.authorize()
        resp = self.login(page, username, password)
        assert resp.status_code == 200, f"login: {resp.status_code} {resp.text[:500]}"
        cookie, _ = session_from(resp)
        assert cookie, f"no session cookie: {resp.headers}"
        return cookie, resp

    def consent(self, page: httpx.Response, cookie: str | None,
                decision: str = "approve") -> httpx.Response:
        assert is_consent_page(page), f"not a consent page: {page.status_code} {page.text[:500]}"
        data = dict(hidden(the_form(page.text)))
        data["decision"] = decision
        return self.browser.post(f"{self.gw.base}/consent", data=data,
                                 headers=cookie_header(cookie))

    def code_from(self, resp: httpx.Response) -> str:
        assert resp.status_code == 302, f"{resp.status_code} {resp.text[:500]}"
        target, q = location_query(resp)
        assert target == REDIRECT_URI
        assert q.get("state") == self.params["state"]
        assert q.get("iss") == self.gw.base
        assert q.get("code"), q
        return q["code"]

    def redeem(self, http: httpx.Client, code: str):
        grant = Grant(self.client_id, self.pkce, self.params["state"], code, {})
        return tokens_from(exchange_code(http, self.gw.base, grant), self.client_id)


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hashes() -> dict:
    return {"alice": hash_of(ALICE_PASSWORD), "bob": hash_of(BOB_PASSWORD)}


@pytest.fixture
def start_with_config(gateway_factory, tmp_path):
    counter = {"n": 0}

    def start(text: str) -> Gateway:
        counter["n"] += 1
        cfg = write_config(tmp_path / f"config-{counter['n']}.toml", text)
        return gateway_factory("--config", str(cfg))

    return start


@pytest.fixture
def users_gateway(start_with_config, hashes) -> Gateway:
    return start_with_config(users_toml(hashes))


@pytest.fixture
def browser():
    with jarless() as c:
        yield c


# -- hash-password and config validation ---------------------------------------------

def test_hash_password_prints_a_salted_argon2id_hash():
    a = run_hash_password(b"correct horse\n")
    b = run_hash_password(b"correct horse\n")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    ha, hb = a.stdout.decode().strip(), b.stdout.decode().strip()
    assert ha.startswith("$argon2id$v=19$"), ha
    assert "correct horse" not in ha
    assert ha != hb, "each hash has its own random salt"
    assert a.stdout.decode().count("\n") == 1, "exactly one line on stdout"


@pytest.mark.parametrize("stdin", [b"", b"\n", b"\r\n"], ids=["eof", "newline", "crlf"])
def test_hash_password_refuses_an_empty_password(stdin):
    p = run_hash_password(stdin)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == b"", "no hash printed"
    assert b"empty" in p.stderr, p.stderr


def test_non_argon2_password_hash_stops_the_gateway_with_exit_2(tmp_path):
    cfg = write_config(tmp_path / "bad.toml",
                       '[[users]]\nname = "mallory"\npassword_hash = "plaintext-password"\n')
    gw = Gateway(tmp_path / "data", ["--config", str(cfg)])
    try:
        gw.spawn()
        code = gw.wait_exit()
    finally:
        gw.stop()
    assert code == 2, gw.log_tail()
    log = gw.log_tail()
    assert "argon2" in log and "mallory" in log, log
    assert gw.proxy_addr is None, "never started listening"
    assert "plaintext-password" not in log, "the bad value is not echoed"


# -- login before consent ----------------------------------------------------------

def test_login_page_comes_before_consent(users_gateway, http, browser):
    gw = users_gateway
    f = Flow(gw, browser, register_client_id(http, gw.base))
    page = f.authorize()
    assert page.status_code == 200, page.text[:500]
    assert is_login_page(page), page.text[:800]
    assert not is_consent_page(page)
    assert "Sign in" in page.text
    assert 'name="decision"' not in page.text, "no approve/deny buttons yet"
    assert session_from(page) == (None, None), "no session before signing in"
    assert page.headers.get("cache-control") == "no-store"
    assert "location" not in page.headers
    form = the_form(page.text)
    assert form["attrs"].get("method", "").lower() == "post"
    assert {"request_id", "csrf_token", "username", "password"} <= input_names(form)


def test_wrong_password_and_unknown_user_are_refused(users_gateway, http, browser):
    gw = users_gateway
    f = Flow(gw, browser, register_client_id(http, gw.base))
    page = f.authorize()
    for username, password in (("alice", "wrong"), ("alice", ""), ("nobody", ALICE_PASSWORD),
                               ("ALICE", ALICE_PASSWORD), ("bob", ALICE_PASSWORD)):
        resp = f.login(page, username, password)
        assert resp.status_code == 401, f"{username}/{password!r}: {resp.status_code}"
        assert session_from(resp) == (None, None), f"{username}: cookie set on failure"
        assert "location" not in resp.headers
        assert "Wrong user or password" in resp.text
        assert not is_consent_page(resp)
        assert is_login_page(resp), "the sign-in form is shown again"
        page = resp
    # The same pending request can still be completed with the right password.
    resp = f.login(page, "alice", ALICE_PASSWORD)
    assert resp.status_code == 200, resp.text[:500]
    assert is_consent_page(resp)
    assert session_from(resp)[0]


def test_a_sign_in_post_with_a_forged_token_does_not_spend_the_request(users_gateway, http,
                                                                      browser):
    gw = users_gateway
    f = Flow(gw, browser, register_client_id(http, gw.base))
    page = f.authorize()
    request_id = hidden(the_form(page.text))["request_id"]
    forged = browser.post(f"{gw.base}/login", data={
        "request_id": request_id, "csrf_token": "guessed", "username": "alice",
        "password": ALICE_PASSWORD})
    assert forged.status_code == 403, forged.status_code
    assert session_from(forged) == (None, None)
    # The user's own form still works.
    resp = f.login(page, "alice", ALICE_PASSWORD)
    assert resp.status_code == 200, resp.text[:500]
    assert is_consent_page(resp)


def test_sign_in_sets_a_session_cookie_and_consent_needs_it(users_gateway, http, browser):
    gw = users_gateway
    cid = register_client_id(http, gw.base)
    f = Flow(gw, browser, cid)
    page = f.authorize()
    resp = f.login(page, "alice", ALICE_PASSWORD)
    assert resp.status_code == 200, resp.text[:500]
    assert is_consent_page(resp)
    assert "alice" in resp.text and "Approve" in resp.text
    cookie, raw = session_from(resp)
    assert cookie and len(cookie) >= 32, raw
    attrs = [a.strip() for a in raw.split(";")[1:]]
    lower = [a.lower() for a in attrs]
    assert "httponly" in lower, raw
    assert "samesite=lax" in lower, raw
    assert "path=/" in lower, raw
    assert f"max-age={SESSION_TTL}" in lower, raw
    assert "secure" not in lower, "plain-http issuer: no Secure flag"

    # Approving without the session cookie is refused (and uses up the request).
    denied = f.consent(resp, None)
    assert denied.status_code == 403, denied.text[:500]
    assert "location" not in denied.headers

    # Another user's session cannot approve alice's request either.
    bob_cookie, _ = Flow(gw, browser, cid).sign_in("bob", BOB_PASSWORD)
    page = f.login(f.authorize(), "alice", ALICE_PASSWORD)
    assert is_consent_page(page)
    wrong = f.consent(page, bob_cookie)
    assert wrong.status_code == 403, wrong.text[:500]
    assert "location" not in wrong.headers

    # With alice's session: a code, redeemed for a token whose subject is alice.
    page = f.login(f.authorize(), "alice", ALICE_PASSWORD)
    ok = f.consent(page, cookie)
    code = f.code_from(ok)
    tokens = f.redeem(http, code)
    claims = unverified_claims(tokens.access_token)
    assert claims["sub"] == "alice"
    assert claims["client_id"] == cid
    assert set(tokens.scope.split()) == {"mcp:read", "mcp:write"}

    # The MCP server sees alice too.
    mcp = McpClient(http, gw.base, tokens.access_token)
    assert mcp.initialize().status == 200
    assert "alice" in result_text(mcp.call_tool("whoami", {}).result)


def test_signed_in_user_skips_the_login_page(users_gateway, http, browser):
    gw = users_gateway
    cid = register_client_id(http, gw.base)
    cookie, _ = Flow(gw, browser, cid).sign_in("alice", ALICE_PASSWORD)
    # A new request from the same browser goes straight to consent.
    page = Flow(gw, browser, cid).authorize(cookie)
    assert is_consent_page(page), page.text[:500]
    # A made-up session is no session.
    page = Flow(gw, browser, cid).authorize("not-a-real-session")
    assert is_login_page(page), page.text[:500]


def test_user_grants_only_the_scopes_they_hold(users_gateway, http, browser):
    gw = users_gateway
    cid = register_client_id(http, gw.base)
    f = Flow(gw, browser, cid, scope="mcp:read mcp:write")
    cookie, page = f.sign_in("bob", BOB_PASSWORD)
    assert is_consent_page(page)
    assert "mcp:read" in page.text
    assert "mcp:write" not in page.text, "bob cannot grant write"
    assert "bob" in page.text
    tokens = f.redeem(http, f.code_from(f.consent(page, cookie)))
    assert tokens.scope == "mcp:read"
    claims = unverified_claims(tokens.access_token)
    assert claims["sub"] == "bob"
    assert claims["scope"] == "mcp:read"
    # The token really lacks write: add_note is refused with insufficient_scope.
    mcp = McpClient(http, gw.base, tokens.access_token)
    assert mcp.initialize().status == 200
    reply = mcp.call_tool("add_note", {"text": "nope"})
    assert reply.status == 403, reply.text[:300]

    # Asking only for a scope bob does not hold: access_denied back at the client.
    g = Flow(gw, browser, cid, scope="mcp:admin")
    resp = g.login(g.authorize(), "bob", BOB_PASSWORD)
    assert resp.status_code == 302, resp.text[:500]
    target, q = location_query(resp)
    assert target == REDIRECT_URI
    assert q.get("error") == "access_denied", q
    assert "code" not in q
    assert q.get("state") == g.params["state"]
    assert q.get("iss") == gw.base
    # Signed in already: the same answer straight from /authorize.
    h = Flow(gw, browser, cid, scope="mcp:admin")
    resp = h.authorize(cookie)
    assert resp.status_code == 302
    assert location_query(resp)[1].get("error") == "access_denied"


# -- remembered consent ------------------------------------------------------------

def _consents(gw: Gateway, browser: httpx.Client, cookie: str | None) -> httpx.Response:
    return browser.get(f"{gw.base}/consents", headers=cookie_header(cookie))


def test_remembered_consent_skips_the_page_until_revoked(users_gateway, http, browser):
    gw = users_gateway
    cid = register_client_id(http, gw.base)
    other = register_client_id(http, gw.base)
    f = Flow(gw, browser, cid, scope="mcp:read")
    cookie, page = f.sign_in("alice", ALICE_PASSWORD)
    f.redeem(http, f.code_from(f.consent(page, cookie)))

    # Same user, client and scopes: a code straight away, no page.
    again = Flow(gw, browser, cid, scope="mcp:read")
    resp = again.authorize(cookie)
    assert resp.status_code == 302, resp.text[:500]
    assert "<form" not in resp.text
    tokens = again.redeem(http, again.code_from(resp))
    assert unverified_claims(tokens.access_token)["sub"] == "alice"
    assert tokens.scope == "mcp:read"

    # More scopes than approved, another client, or no session: asked again.
    assert is_consent_page(Flow(gw, browser, cid, scope="mcp:read mcp:write").authorize(cookie))
    assert is_consent_page(Flow(gw, browser, other, scope="mcp:read").authorize(cookie))
    assert is_login_page(Flow(gw, browser, cid, scope="mcp:read").authorize())
    # Another user has not approved anything.
    bob_cookie, bob_page = Flow(gw, browser, cid, scope="mcp:read").sign_in("bob", BOB_PASSWORD)
    assert is_consent_page(bob_page)

    # /consents: alice's list has the client; bob's does not; no session is a 401.
    listing = _consents(gw, browser, cookie)
    assert listing.status_code == 200
    assert cid in listing.text and "alice" in listing.text
    assert other not in listing.text
    assert cid not in _consents(gw, browser, bob_cookie).text
    anon = _consents(gw, browser, None)
    assert anon.status_code == 401
    assert cid not in anon.text

    # Revoking: not without a session, not cross-site, then for real.
    r = browser.post(f"{gw.base}/consents/revoke", data={"client_id": cid})
    assert r.status_code == 401
    r = browser.post(f"{gw.base}/consents/revoke", data={"client_id": cid},
                     headers={**cookie_header(cookie), "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert Flow(gw, browser, cid, scope="mcp:read").authorize(cookie).status_code == 302, \
        "failed revocations changed nothing"
    r = browser.post(f"{gw.base}/consents/revoke", data={"client_id": cid},
                     headers=cookie_header(cookie))
    assert r.status_code == 303, r.text[:500]
    assert r.headers.get("location") == "/consents"
    assert cid not in _consents(gw, browser, cookie).text

    # The consent page again.
    page = Flow(gw, browser, cid, scope="mcp:read").authorize(cookie)
    assert page.status_code == 200
    assert is_consent_page(page)


def test_remember_consent_zero_asks_every_time(start_with_config, hashes, http, browser):
    gw = start_with_config(users_toml(hashes, "remember_consent_seconds = 0"))
    cid = register_client_id(http, gw.base)
    f = Flow(gw, browser, cid, scope="mcp:read")
    cookie, page = f.sign_in("alice", ALICE_PASSWORD)
    f.redeem(http, f.code_from(f.consent(page, cookie)))
    for _ in range(2):
        g = Flow(gw, browser, cid, scope="mcp:read")
        page = g.authorize(cookie)
        assert page.status_code == 200, "asked every time"
        assert is_consent_page(page)
        g.code_from(g.consent(page, cookie))
    listing = _consents(gw, browser, cookie)
    assert listing.status_code == 200
    assert cid not in listing.text


# -- no users: the one local user -----------------------------------------------------

def test_without_users_there_is_no_login_page(gateway, http, browser):
    cid = register_client_id(http, gateway.base)
    f = Flow(gateway, browser, cid, scope="mcp:read")
    page = f.authorize()
    assert is_consent_page(page), page.text[:500]
    assert not is_login_page(page)
    assert "local-user" in page.text
    resp = f.consent(page, None)
    assert session_from(resp) == (None, None), "no session cookie for the local user"
    tokens = f.redeem(http, f.code_from(resp))
    assert unverified_claims(tokens.access_token)["sub"] == "local-user"
    # The approval is remembered by default for the local user too.
    g = Flow(gateway, browser, cid, scope="mcp:read")
    resp = g.authorize()
    assert resp.status_code == 302
    g.code_from(resp)
    r = browser.post(f"{gateway.base}/login", data={"request_id": "x", "csrf_token": "y",
                                                     "username": "a", "password": "b"})
    assert r.status_code in (400, 404), r.status_code
    assert session_from(r) == (None, None)


def test_one_user_without_password_needs_no_login(start_with_config, http, browser):
    gw = start_with_config('[[users]]\nname = "carol"\nscopes = ["mcp:read"]\n')
    cid = register_client_id(http, gw.base)
    f = Flow(gw, browser, cid, scope="mcp:read mcp:write")
    page = f.authorize()
    assert is_consent_page(page), page.text[:500]
    assert "carol" in page.text
    assert "mcp:write" not in page.text
    tokens = f.redeem(http, f.code_from(f.consent(page, None)))
    claims = unverified_claims(tokens.access_token)
    assert claims["sub"] == "carol"
    assert tokens.scope == "mcp:read"
