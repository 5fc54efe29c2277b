"""Hardening (issue 5): secrets never reach the logs, concurrent redemption and refresh
obey the single-use and rotation rules, and storage faults are answered cleanly.

- Secrets: a gateway with `RUST_LOG=debug` (text, JSON, and with `--debug-trace`) runs a whole
  flow with a public and a confidential client; every token, code, verifier, client secret,
  consent-form field and cookie the test saw is then looked for in everything the process
  wrote to stdout and stderr (and in the `/debug/requests` trace): zero hits, and no string
  shaped like a JWT at all.
- Concurrency: 50 simultaneous redemptions of one code (exactly one token, and the replays
  revoke it: RFC 6819 §4.4.1.1, OAuth 2.1 §4.1.3); 20 simultaneous refreshes of one refresh
  token inside the grace window; 50 simultaneous registrations under the default rate limit.
- Faults: the SQLite database made unwritable while the gateway runs (`chattr +i`, since
  the tests run as root and file modes do not bind root), and a corrupt `gateway.db` at start.

Checklist items: a8 (tokens stored and handled securely), b1 (single-use codes), b9 (refresh
rotation).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import secrets
from http.cookiejar import CookieJar, DefaultCookiePolicy
import json
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from flow import (REDIRECT_URI, McpClient, arguments_for, authorize_params,
                  get_authorize, http_client, location_query, parse_consent_form, parse_forms,
                  pkce_s256, post_consent, refresh, register, token_request, tokens_from,
                  unverified_claims)
from gateway_proc import Gateway, gateway_binary

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
# The window of a secret that must not show up anywhere in the logs. A gateway may log a
# short prefix to correlate requests; 16 characters of a random secret it must not.
WINDOW = 16
BARRIER_TIMEOUT = 30.0


# -- a gateway whose whole output is kept ---------------------------------------------

class RecordingGateway(Gateway):
    """A Gateway that keeps every line it wrote, not just the last 2000."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lines = collections.deque()

    def _record(self, line: str) -> None:
        super()._record(line)
        # With --log-format json the readiness line is a JSON object, not the text form.
        if not self._ready.is_set() and line.startswith("[stderr] {"):
            try:
                fields = json.loads(line[len("[stderr] "):]).get("fields", {})
            except ValueError:
                return
            if fields.get("message") == "listening" and "proxy" in fields:
                (self.proxy_addr, self.mcp_addr, self.routes_addr, self.jwks_addr) = (
                    fields["proxy"], fields["mcp"], fields["routes"], fields["jwks"])
                self._ready.set()

    def output(self) -> str:
        return "\n".join(self.log_lines())


@pytest.fixture
def recording_factory(tmp_path, request):
    started: list[RecordingGateway] = []

    def start(*extra_args: str) -> RecordingGateway:
        gw = RecordingGateway(tmp_path / f"rec-{len(started) + 1}", list(extra_args))
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"---- gateway log ({' '.join(gw.extra_args) or 'default flags'}) ----")
            print(gw.log_tail(120))


# -- small helpers ------------------------------------------------------------------------

def _json_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code} {r.text[:400]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# Issue 12: registering a client_credentials client takes an initial access token, and only
# a configured resource server (`introspect = true`) introspects other clients' tokens.
IAT = "pytest-hardening-iat-" + secrets.token_urlsafe(16)
RS_ID = "pytest-hardening-rs"
RS_SECRET = "rs-" + secrets.token_urlsafe(24)


def _b64_sha256(value: str) -> str:
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _grants_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "grants.toml"
    cfg.write_text(f"""
[[initial_access_tokens]]
name = "pytest"
sha256 = "{_b64_sha256(IAT)}"

[[clients]]
client_id = "{RS_ID}"
secret_sha256 = "{_b64_sha256(RS_SECRET)}"
grant_types = []
introspect = true
""")
    return cfg


@pytest.fixture
def gateway(gateway_factory, tmp_path):
    return gateway_factory("--config", str(_grants_config(tmp_path)))


def _register_confidential(http, base, **extra) -> tuple[str, str]:
    payload = {"client_name": "pytest hardening confidential",
               "token_endpoint_auth_method": "client_secret_basic",
               "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
               "redirect_uris": [REDIRECT_URI], "scope": "mcp:read mcp:write"}
    payload.update(extra)
    r = http.post(f"{base}/register", json=payload,
                  headers={"Authorization": f"Bearer {IAT}"})
    assert r.status_code == 201, f"register: {r.status_code} {r.text}"
    b = r.json()
    return b["client_id"], b["client_secret"]


def _register_public(http, base) -> str:
    r = register(http, base)
    assert r.status_code == 201, f"register: {r.status_code} {r.text}"
    return r.json()["client_id"]


def _authorize(http, base, client_id, seen: list[str] | None = None, scope=None):
    """Authorize and approve on the consent page; returns (pkce, code). Every hidden field
    of the consent form and every cookie goes into `seen`."""
    pkce = pkce_s256()
    params = authorize_params(client_id, pkce, base=base, scope=scope)
    r = get_authorize(http, base, params)
    if r.status_code == 200:
        form = parse_consent_form(r.text)
        if seen is not None:
            seen.extend(v for v in form.hidden.values() if v)
        r = post_consent(http, base, form, "approve")
    assert r.status_code in (302, 303), f"/authorize: {r.status_code} {r.text[:400]}"
    target, q = location_query(r)
    assert target == REDIRECT_URI and q.get("code"), (target, q)
    assert q.get("state") == params["state"], q
    if seen is not None:
        seen.extend(c.value for c in http.cookies.jar if c.value)
    return pkce, q["code"]


def _code_form(base, client_id, code, verifier) -> dict:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "client_id": client_id, "code_verifier": verifier, "resource": f"{base}/mcp"}


def _mcp_status(http, base, token) -> int:
    return McpClient(http, base, token).initialize().status


def _introspect(http, base, token, cid, secret) -> dict:
    r = http.post(f"{base}/introspect", data={"token": token}, auth=(cid, secret))
    assert r.status_code == 200, f"/introspect: {r.status_code} {r.text}"
    return r.json()


def _windows(secret: str) -> list[str]:
    if len(secret) <= WINDOW:
        return [secret]
    return [secret[i:i + WINDOW] for i in range(len(secret) - WINDOW + 1)]


# -- 1. secrets never logged --------------------------------------------------------------

def _whole_flow(http: httpx.Client, base: str) -> tuple[list[str], str]:
    """Run every grant and endpoint once; return every secret the client saw or sent, and
    the public client's id (not a secret, and logged)."""
    seen: list[str] = []

    # A public client: authorize, consent, code, MCP, refresh, introspect, revoke.
    pub = _register_public(http, base)
    pkce, code = _authorize(http, base, pub, seen)
    seen += [pkce.verifier, code]
    t1 = tokens_from(token_request(http, base, _code_form(base, pub, code, pkce.verifier)), pub)
    seen += [t1.access_token, t1.refresh_token]

    mcp = McpClient(http, base, t1.access_token)
    init = mcp.initialize()
    assert init.status == 200, init.text
    # The Mcp-Session-Id is not a credential here (every request needs its bearer token;
    # rmcp logs it at INFO), so it is not on the list.
    tools = mcp.tools_by_name()
    echo = mcp.call_tool("echo", arguments_for(tools["echo"], text="hardening-echo"))
    assert "hardening-echo" in echo.result["content"][0]["text"]
    who = mcp.call_tool("whoami", {})
    assert pub in str(who.result)

    t2 = tokens_from(refresh(http, base, pub, t1.refresh_token), pub)
    seen += [t2.access_token, t2.refresh_token]
    assert _mcp_status(http, base, t2.access_token) == 200

    # A confidential client: code flow with Basic auth, client credentials, introspection.
    conf, secret = _register_confidential(http, base)
    seen += [secret, IAT, RS_SECRET]
    basic = httpx.BasicAuth(conf, secret)
    # The Authorization header's base64(id:secret) must not leak either.
    seen.append(base64.b64encode(f"{conf}:{secret}".encode()).decode())
    cpkce, ccode = _authorize(http, base, conf, seen)
    seen += [cpkce.verifier, ccode]
    form = _code_form(base, conf, ccode, cpkce.verifier)
    del form["client_id"]
    ct = tokens_from(http.post(f"{base}/token", data=form, auth=basic), conf)
    seen += [ct.access_token, ct.refresh_token]
    ct2 = tokens_from(http.post(f"{base}/token", auth=basic, data={
        "grant_type": "refresh_token", "refresh_token": ct.refresh_token}), conf)
    seen += [ct2.access_token, ct2.refresh_token]
    cc = http.post(f"{base}/token", auth=basic,
                   data={"grant_type": "client_credentials", "scope": "mcp:read"})
    assert cc.status_code == 200, cc.text
    seen.append(cc.json()["access_token"])
    cc_mcp = McpClient(http, base, cc.json()["access_token"])
    assert cc_mcp.initialize().status == 200
    assert cc_mcp.call_tool("echo", arguments_for(cc_mcp.tools_by_name()["echo"])).status == 200

    assert _introspect(http, base, t2.access_token, RS_ID, RS_SECRET)["active"] is True
    assert _introspect(http, base, t2.refresh_token, RS_ID, RS_SECRET)["active"] is True
    assert _introspect(http, base, t1.refresh_token, RS_ID, RS_SECRET)["active"] is False
    assert _introspect(http, base, t2.access_token, conf, secret)["active"] is False

    # Failures carry secrets too: a wrong client secret, a wrong verifier, a forged token.
    wrong_secret = "wrong-" + secret[::-1]
    seen.append(wrong_secret)
    r = http.post(f"{base}/token", auth=(conf, wrong_secret),
                  data={"grant_type": "client_credentials"})
    assert r.status_code == 401, r.text
    pkce3, code3 = _authorize(http, base, pub, seen)
    seen += [pkce3.verifier, code3]
    bad_verifier = pkce3.verifier[::-1]
    seen.append(bad_verifier)
    r = token_request(http, base, _code_form(base, pub, code3, bad_verifier))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    forged = t2.access_token[:-12] + "AAAAAAAAAAAA"
    seen.append(forged)
    assert _mcp_status(http, base, forged) == 401
    unknown_refresh = "rt-" + t2.refresh_token[::-1]
    seen.append(unknown_refresh)
    r = refresh(http, base, pub, unknown_refresh)
    assert r.status_code == 400, r.text

    # Revocation: the access token and the refresh token of each client.
    for tok, auth, data in ((t2.access_token, None, {"client_id": pub}),
                            (t2.refresh_token, None, {"client_id": pub}),
                            (ct2.refresh_token, basic, {})):
        r = http.post(f"{base}/revoke", data={"token": tok, **data}, auth=auth)
        assert r.status_code == 200, r.text
    assert _mcp_status(http, base, t2.access_token) == 401
    assert _introspect(http, base, ct2.access_token, conf, secret)["active"] is False

    seen.extend(c.value for c in http.cookies.jar if c.value)
    return [s for s in dict.fromkeys(seen) if s and len(s) >= 8], pub


def _leaks(text: str, secrets_seen: list[str]) -> list[str]:
    found = []
    for s in secrets_seen:
        hit = next((w for w in _windows(s) if w in text), None)
        if hit is not None:
            i = text.index(hit)
            found.append(f"{s[:10]}… ({len(s)} chars) at: {text[max(0, i - 120):i + 60]!r}")
    return found


@pytest.mark.parametrize("level,flags", [("debug", []), ("debug", ["--log-format", "json"]),
                                         ("debug", ["--debug-trace"]), ("trace", [])],
                         ids=["debug-text", "debug-json", "debug-trace-flag", "trace-text"])
def test_secrets_never_logged_at_debug_level(recording_factory, monkeypatch, level, flags,
                                                tmp_path):
    monkeypatch.setenv("RUST_LOG", level)
    gw = recording_factory(*flags, "--config", str(_grants_config(tmp_path)))
    with http_client() as http:
        secrets_seen, public_client_id = _whole_flow(http, gw.base)
        trace = None
        if "--debug-trace" in flags:
            r = http.get(f"{gw.base}/debug/requests")
            assert r.status_code == 200, r.text[:300]
            trace = r.text
            assert "/token" in trace and "/mcp" in trace, "trace recorded nothing"
    assert len(secrets_seen) >= 20, secrets_seen
    gw.stop()
    out = gw.output()
    # The debug level was really on: there is more than the startup line to grep.
    assert len(gw.log_lines()) > 20, out[:2000]
    if "--log-format" in flags:
        assert out.count('"level":"DEBUG"') + out.count('"level":"debug"') > 0, out[:2000]
    else:
        assert "DEBUG" in out, out[:2000]
    # The search itself works: the (public) client id is logged and is found.
    assert _leaks(out, [public_client_id]), "the grep cannot find what the log does show"
    leaks = _leaks(out, secrets_seen)
    assert not leaks, "secrets in the gateway's output:\n" + "\n".join(leaks)
    jwts = JWT_RE.findall(out)
    assert not jwts, f"JWT-shaped strings in the gateway's output: {jwts[:3]}"
    if trace is not None:
        leaks = _leaks(trace, secrets_seen)
        assert not leaks, "secrets in /debug/requests:\n" + "\n".join(leaks)
        assert not JWT_RE.findall(trace), "JWT-shaped strings in /debug/requests"


def _set_cookie_values(resp: httpx.Response) -> list[str]:
    return [raw.split("=", 1)[1].split(";", 1)[0] for raw in resp.headers.get_list("set-cookie")
            if "=" in raw]


def test_sign_in_secrets_never_logged_at_debug_level(recording_factory, monkeypatch,
                                                        tmp_path):
    """With `[[users]]`: the password (right and wrong), its argon2 hash, the session
    cookie and the login form's fields join the list."""
    password = "pw-" + secrets.token_urlsafe(18)
    wrong = "pw-" + secrets.token_urlsafe(18)
    hp = subprocess.run([str(gateway_binary()), "hash-password"],
                        input=(password + "\n").encode(), capture_output=True, timeout=120)
    assert hp.returncode == 0, hp.stderr
    pw_hash = hp.stdout.decode().strip()
    assert pw_hash.startswith("$argon2"), pw_hash
    cfg = tmp_path / "users.toml"
    cfg.write_text(f'[[users]]\nname = "alice"\npassword_hash = "{pw_hash}"\n')
    monkeypatch.setenv("RUST_LOG", "debug")
    gw = recording_factory("--config", str(cfg))
    seen = [password, wrong, pw_hash, pw_hash.rsplit("$", 1)[1]]
    with httpx.Client(follow_redirects=False, timeout=30.0,
                      cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))) as b:
        cid = _register_public(b, gw.base)
        pkce = pkce_s256()
        params = authorize_params(cid, pkce, base=gw.base)
        page = b.get(f"{gw.base}/authorize", params=params)
        form = parse_forms(page.text)[0]
        assert form["attrs"].get("action") == "/login", page.text[:300]
        login = {i["name"]: i.get("value", "") for i in form["inputs"]
                 if i.get("type", "").lower() == "hidden" and i.get("name")}
        seen += [v for v in login.values() if v]
        bad = b.post(f"{gw.base}/login", data={**login, "username": "alice", "password": wrong})
        assert bad.status_code in (200, 401) and not _set_cookie_values(bad), bad.status_code
        form = parse_forms(bad.text)[0]
        login = {i["name"]: i.get("value", "") for i in form["inputs"]
                 if i.get("type", "").lower() == "hidden" and i.get("name")}
        seen += [v for v in login.values() if v]
        ok = b.post(f"{gw.base}/login",
                    data={**login, "username": "alice", "password": password})
        assert ok.status_code == 200, ok.text[:300]
        cookies = _set_cookie_values(ok)
        assert cookies, ok.headers
        seen += cookies
        consent = parse_consent_form(ok.text)
        seen += [v for v in consent.hidden.values() if v]
        r = b.post(f"{gw.base}/consent", data={**consent.hidden, "decision": "approve"},
                   headers={"Cookie": "; ".join(
                       raw.split(";", 1)[0] for raw in ok.headers.get_list("set-cookie"))})
        _, q = location_query(r)
        assert q.get("code"), q
        seen += [q["code"], pkce.verifier]
        t = tokens_from(token_request(b, gw.base,
                                      _code_form(gw.base, cid, q["code"], pkce.verifier)), cid)
        seen += [t.access_token, t.refresh_token]
        assert unverified_claims(t.access_token)["sub"] == "alice"
        assert _mcp_status(b, gw.base, t.access_token) == 200
    gw.stop()
    out = gw.output()
    assert "DEBUG" in out and "alice" in out, out[:2000]
    leaks = _leaks(out, [x for x in dict.fromkeys(seen) if len(x) >= 8])
    assert not leaks, "secrets in the gateway's output:\n" + "\n".join(leaks)
    assert not JWT_RE.findall(out)


# -- 2. concurrency --------------------------------------------------------------------------

def _all_at_once(n: int, work):
    """Run work(i, client) in n threads released together by a barrier; returns results
    in order. Each thread has its own connection."""
    barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT)
    clients = [http_client() for _ in range(n)]

    def run(i):
        barrier.wait()
        return work(i, clients[i])

    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(run, range(n)))
    finally:
        for c in clients:
            c.close()


def _outcome(r: httpx.Response) -> tuple[int, str | None, dict]:
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, body.get("error"), body


def test_fifty_concurrent_redemptions_of_one_code_yield_one_token_then_revoke_it(
        gateway, http):
    cid = _register_public(http, gateway.base)
    pkce, code = _authorize(http, gateway.base, cid)
    form = _code_form(gateway.base, cid, code, pkce.verifier)

    results = _all_at_once(50, lambda i, c: _outcome(token_request(c, gateway.base, form)))
    statuses = collections.Counter((s, e) for s, e, _ in results)
    assert statuses[(200, None)] == 1, statuses
    assert statuses[(400, "invalid_grant")] == 49, statuses
    winner = next(b for s, _, b in results if s == 200)
    assert winner["access_token"] and winner["refresh_token"]

    # 49 replays of the code (RFC 6819 §4.4.1.1, OAuth 2.1 §4.1.3): what it issued is revoked,
    # even when a replay was seen before the winner's tokens were written.
    assert _mcp_status(http, gateway.base, winner["access_token"]) == 401
    _json_error(refresh(http, gateway.base, cid, winner["refresh_token"]), 400, "invalid_grant")
    # And the code stays dead.
    _json_error(token_request(http, gateway.base, form), 400, "invalid_grant")


def test_twenty_concurrent_refreshes_leave_exactly_one_current_token(gateway, http):
    """Default grace window (60 s). Each use of the rotated-out R0 while its successor is
    unused is a retry (`decide_rotation`): it succeeds and supersedes the unused successor.
    So under a burst every request that succeeds rotates within the same family, nothing is
    revoked, and at the end exactly one refresh token is current; presenting a superseded
    one afterwards is a replay that revokes the family."""
    conf, secret = RS_ID, RS_SECRET  # the configured resource server, for introspection
    pub = _register_public(http, gateway.base)
    pkce, code = _authorize(http, gateway.base, pub, scope="mcp:read")
    t0 = tokens_from(token_request(http, gateway.base,
                                   _code_form(gateway.base, pub, code, pkce.verifier)), pub)
    claims0 = unverified_claims(t0.access_token)

    results = _all_at_once(20, lambda i, c: _outcome(
        refresh(c, gateway.base, pub, t0.refresh_token)))
    ok = [b for s, _, b in results if s == 200]
    failed = [(s, e) for s, e, _ in results if s != 200]
    # No successor was used during the burst and it is inside the window: by the documented
    # rule ("the previous token works until its successor is first used or the window
    # passes") every one of the 20 is a retry and succeeds; none is a 5xx or a busy error.
    assert not failed and len(ok) == 20, f"{len(ok)} succeeded, failures: {failed}"
    new_refresh = [b["refresh_token"] for b in ok]
    assert len(set(new_refresh)) == len(ok) and t0.refresh_token not in new_refresh
    assert len({b["access_token"] for b in ok}) == len(ok)
    for b in ok:  # same family: same subject, client and scope
        c = unverified_claims(b["access_token"])
        assert (c["sub"], c["client_id"], c["scope"]) == \
            (claims0["sub"], claims0["client_id"], "mcp:read"), c
        assert b["scope"] == "mcp:read"

    active = [rt for rt in new_refresh
              if _introspect(http, gateway.base, rt, conf, secret)["active"]]
    assert len(active) == 1, f"{len(active)} of {len(ok)} successors are current"
    assert _introspect(http, gateway.base, t0.refresh_token, conf, secret)["active"] is False
    # Nothing was revoked: the newest access token works and the current token rotates on.
    assert _mcp_status(http, gateway.base, ok[-1]["access_token"]) == 200
    nxt = tokens_from(refresh(http, gateway.base, pub, active[0]), pub)
    assert _mcp_status(http, gateway.base, nxt.access_token) == 200
    assert _introspect(http, gateway.base, nxt.refresh_token, conf, secret)["active"] is True
    # The 19 superseded siblings are dead, and presenting one is a replay (issue 12: at most
    # one chain is ever live, so whoever held a sibling lost a race to someone else): the
    # whole family is revoked, the current chain included.
    dropped = [rt for rt in new_refresh if rt != active[0]]
    assert len(dropped) == 19
    _json_error(refresh(http, gateway.base, pub, dropped[0]), 400, "invalid_grant")
    _json_error(refresh(http, gateway.base, pub, nxt.refresh_token), 400, "invalid_grant")
    assert _mcp_status(http, gateway.base, nxt.access_token) == 401
    assert _introspect(http, gateway.base, nxt.refresh_token, conf, secret)["active"] is False


def test_fifty_concurrent_registrations_under_the_default_rate_limit(gateway):
    def reg(i, c):
        r = register(c, gateway.base, client_name=f"concurrent {i}")
        return r.status_code, (r.json().get("client_id") if r.status_code == 201 else r.text)

    results = _all_at_once(50, reg)
    bad = [(s, b) for s, b in results if s != 201]
    assert not bad, f"{len(bad)} registrations failed: {bad[:3]}"
    ids = [b for _, b in results]
    assert len(set(ids)) == 50, "client_ids are not distinct"
    with http_client() as http:  # every one of them is really stored and usable
        for cid in ids[:3] + ids[-3:]:
            r = get_authorize(http, gateway.base,
                              authorize_params(cid, pkce_s256(), base=gateway.base))
            assert r.status_code == 200, f"{cid}: {r.status_code} {r.text[:300]}"
            parse_consent_form(r.text)


# -- 3. faults ------------------------------------------------------------------------------

def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True,
                          timeout=30)


def test_store_unwritable_database_answers_503_on_writes_and_serves_reads(gateway_factory, http,
                                                                         tmp_path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: cannot make the database unwritable for root")
    gw = gateway_factory("--config", str(_grants_config(tmp_path)))
    db = gw.data_dir / "gateway.db"
    # State made while the database is writable.
    conf, secret = RS_ID, RS_SECRET  # the configured resource server, for introspection
    pub = _register_public(http, gw.base)
    pkce, code = _authorize(http, gw.base, pub)
    t = tokens_from(token_request(http, gw.base, _code_form(gw.base, pub, code, pkce.verifier)),
                    pub)
    pkce2, code2 = _authorize(http, gw.base, pub)
    mcp = McpClient(http, gw.base, t.access_token)
    assert mcp.initialize().status == 200

    # The tests run as root, so file modes do not bind: make the database and its WAL
    # immutable instead (the -shm index is mapped into memory and stays writable).
    locked = [p for p in (db, db.with_name("gateway.db-wal")) if p.exists()]
    assert db in locked, f"no database at {db}: {list(gw.data_dir.iterdir())}"
    res = _chattr("+i", locked)
    if res.returncode != 0:
        pytest.skip(f"chattr +i refused here ({res.stderr.strip()}): cannot make the "
                    "database unwritable for root")
    try:
        # Writes: a clear 503 with a JSON error body.
        r = register(http, gw.base)
        _json_error(r, 503)
        assert r.headers.get("retry-after", "").isdigit(), r.headers
        ready = http.get(f"{gw.base}/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["store"] is False
        _json_error(token_request(http, gw.base, _code_form(gw.base, pub, code2, pkce2.verifier)),
                    503)
        _json_error(refresh(http, gw.base, pub, t.refresh_token), 503)
        # Reads still served: metadata, JWKS, MCP with a valid token.
        for path in ("/.well-known/oauth-authorization-server",
                     "/.well-known/oauth-protected-resource/mcp", "/jwks.json"):
            r = http.get(f"{gw.base}{path}")
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
        echo = mcp.call_tool("echo", arguments_for(mcp.tools_by_name()["echo"], text="rd"))
        assert "rd" in echo.result["content"][0]["text"]
        assert _introspect(http, gw.base, t.access_token, conf, secret)["active"] is True
        # A revocation that cannot be stored says so (RFC 7009 §2.2.1) instead of a 200.
        _json_error(http.post(f"{gw.base}/revoke",
                              data={"token": t.access_token, "client_id": pub}), 503)
        _json_error(http.post(f"{gw.base}/revoke",
                              data={"token": t.refresh_token, "client_id": pub}), 503)
    finally:
        undo = _chattr("-i", locked)
        assert undo.returncode == 0, undo.stderr
    # Writable again: the gateway recovers without a restart, and nothing was half-written:
    # the refresh token and the code refused during the fault still work.
    assert register(http, gw.base).status_code == 201
    assert http.get(f"{gw.base}/readyz").status_code == 200
    tokens_from(token_request(http, gw.base, _code_form(gw.base, pub, code2, pkce2.verifier)),
                pub)
    assert _mcp_status(http, gw.base, t.access_token) == 200
    nt = tokens_from(refresh(http, gw.base, pub, t.refresh_token), pub)
    assert _mcp_status(http, gw.base, nt.access_token) == 200
    assert gw.proc.poll() is None, "the gateway died during the fault"


def _assert_clean_startup_failure(gw: Gateway) -> str:
    gw.spawn()
    code = gw.wait_exit()
    out = [l for l in gw.log_lines() if l.strip()]
    text = "\n".join(out)
    assert code not in (0, None), f"gateway started on a corrupt database (exit {code})"
    assert code != 101 and "panicked" not in text and "RUST_BACKTRACE" not in text, text
    errors = [l for l in out if "database" in l.lower() or "store" in l.lower()]
    assert len(out) == 1 and len(errors) == 1, f"expected one line naming the store:\n{text}"
    return errors[0]


def test_store_garbage_database_refuses_to_start_with_one_line(tmp_path):
    data = tmp_path / "garbage"
    data.mkdir()
    (data / "gateway.db").write_bytes(bytes(range(256)) * 64)
    line = _assert_clean_startup_failure(Gateway(data))
    assert "not a database" in line, line


def test_store_damaged_database_refuses_to_start_with_one_line(gateway_factory, http):
    """A real database whose SQLite header survives but whose pages are overwritten."""
    gw = gateway_factory()
    _register_public(http, gw.base)
    assert gw.stop() == 0
    db = gw.data_dir / "gateway.db"
    assert not db.with_name("gateway.db-wal").exists(), "the WAL was not checkpointed at stop"
    raw = bytearray(db.read_bytes())
    assert raw.startswith(b"SQLite format 3\0") and len(raw) > 4096
    for i in range(100, len(raw)):  # keep the 100-byte header, overwrite everything else
        raw[i] = (i * 7) & 0xFF
    db.write_bytes(bytes(raw))
    line = _assert_clean_startup_failure(Gateway(gw.data_dir))
    assert "malformed" in line or "corrupt" in line or "not a database" in line, line


def test_store_corrupt_database_error_names_the_file(tmp_path):
    data = tmp_path / "garbage"
    data.mkdir()
    (data / "gateway.db").write_bytes(bytes(range(256)) * 64)
    line = _assert_clean_startup_failure(Gateway(data))
    assert "gateway.db" in line, line
