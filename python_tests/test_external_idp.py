"""auth_mode = "external" against a real OpenID provider: npm `oidc-provider` (a certified
implementation, pinned in clients/thirdparty/package-lock.json), run by
clients/thirdparty/idp.mjs with its own freshly generated keys.

A confidential client gets JWT access tokens from the IdP's token endpoint by
client_credentials (client_secret_basic) with an RFC 8707 `resource`; the IdP sets `aud` to
that resource. The gateway, configured with the IdP as `[external] issuer` and its own
resource URL as `audience`, must accept exactly those tokens: a token the same IdP signed for
another resource, or one from another IdP, is refused. In this mode the protected resource
metadata names the IdP and the gateway's own authorization endpoints are gone.

Every process is started by the test and stopped by its own PID.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import signal
import socket
import subprocess
import threading

import httpx
import pytest

from flow import (McpClient, arguments_for, parse_bearer_challenge, result_text, unverified_claims,
                  unverified_header)
from gateway_proc import REPO_ROOT, Gateway

THIRDPARTY = REPO_ROOT / "clients" / "thirdparty"
IDP_SCRIPT = THIRDPARTY / "idp.mjs"
OIDC_PROVIDER = THIRDPARTY / "node_modules" / "oidc-provider" / "package.json"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
READY_RE = re.compile(r"idp listening issuer=(\S+)")

CLIENT_ID = "mcp-service"
CLIENT_SECRET = "s3cret-" + secrets.token_urlsafe(24)  # unreserved characters only
OTHER_RESOURCE = "https://other-api.example.test/mcp"


def free_port() -> int:
    """A port that was free a moment ago (bind 0 on loopback, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Idp:
    """idp.mjs on 127.0.0.1, any free port; ready when it prints its issuer."""

    def __init__(self, resources: list[str]):
        self.resources = resources
        self.proc: subprocess.Popen | None = None
        self.issuer: str | None = None
        self._ready = threading.Event()
        self._lines: collections.deque[str] = collections.deque(maxlen=500)
        self._reader: threading.Thread | None = None

    def start(self) -> "Idp":
        if not OIDC_PROVIDER.exists():
            pytest.fail(f"{OIDC_PROVIDER.parent.relative_to(REPO_ROOT)} is missing: run `npm ci` "
                        "in clients/thirdparty (python3 run_tests.py flow does it)")
        args = [os.environ.get("NODE_BIN", "node"), str(IDP_SCRIPT), "0",
                "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET]
        for r in self.resources:
            args += ["--resource", r]
        self.proc = subprocess.Popen(args, cwd=THIRDPARTY, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, NO_COLOR="1"))
        self._reader = threading.Thread(target=self._drain, daemon=True,
                                        name=f"idp-{self.proc.pid}")
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT) or self.issuer is None:
            self.stop()
            raise AssertionError(f"oidc-provider did not become ready\n{self.log_tail()}")
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._lines.append(line)
                m = READY_RE.search(line)
                if m and not self._ready.is_set():
                    self.issuer = m.group(1)
                    self._ready.set()
        finally:
            self._ready.set()  # EOF: stop waiting; start() reports it
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(list(self._lines)[-n:]) or "(no output)"

    def token(self, http: httpx.Client, resource: str | None, scope: str = "mcp:read",
              secret: str = CLIENT_SECRET) -> httpx.Response:
        data = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            data["resource"] = resource
        return http.post(f"{self.issuer}/token", data=data, auth=(CLIENT_ID, secret))

    def access_token(self, http: httpx.Client, resource: str, scope: str = "mcp:read") -> str:
        r = self.token(http, resource, scope)
        assert r.status_code == 200, f"oidc-provider /token: {r.status_code} {r.text}"
        return r.json()["access_token"]


@pytest.fixture(scope="module")
def _environment(tmp_path_factory):
    """One IdP and one gateway trusting it, for its own resource URL, shared by the module
    (no test changes their state)."""
    tmp = tmp_path_factory.mktemp("external-idp")
    started: list = []
    proxy_port = free_port()
    audience = f"http://127.0.0.1:{proxy_port}/mcp"
    try:
        idp = Idp([audience, OTHER_RESOURCE]).start()
        started.append(idp)
        config = tmp / "gateway.toml"
        config.write_text(
            'auth_mode = "external"\n\n'
            "[external]\n"
            f'issuer = "{idp.issuer}"\n'
            f'audience = "{audience}"\n')
        gw = Gateway(tmp / "data", ["--config", str(config)],
                     addrs={"proxy": f"127.0.0.1:{proxy_port}"})
        started.append(gw)
        gw.start()
        assert gw.mcp_url == audience
        yield gw, idp, audience
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture
def setup(_environment, request):
    """(gateway, idp, audience); their logs are printed when the test fails."""
    yield _environment
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        gw, idp, _ = _environment
        print("---- gateway log ----")
        print(gw.log_tail(100))
        print("---- oidc-provider log ----")
        print(idp.log_tail(100))


@pytest.fixture
def http():
    with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(30.0)) as c:
        yield c


def _assert_invalid_token(reply, gw) -> None:
    assert reply.status == 401, f"expected 401, got {reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch.get("error") == "invalid_token", ch
    assert ch.get("resource_metadata") == f"{gw.base}/.well-known/oauth-protected-resource/mcp"


def test_external_idp_token_for_our_audience_calls_tools(setup, http):
    gw, idp, audience = setup
    token = idp.access_token(http, audience, "mcp:read")
    header, claims = unverified_header(token), unverified_claims(token)
    # What the gateway relies on, as oidc-provider puts it: a JWS from the IdP's JWKS, `aud`
    # the requested resource, the granted scopes space-separated in `scope`.
    assert header["alg"] == "RS256" and header.get("kid"), header
    assert claims["iss"] == idp.issuer and claims["aud"] == audience, claims
    assert claims["scope"] == "mcp:read" and claims["sub"] == CLIENT_ID, claims

    mcp = McpClient(http, gw.base, token)
    reply = mcp.initialize()
    assert reply.status == 200, f"initialize: {reply.status} {reply.text[:300]}"
    tools = mcp.tools_by_name()
    assert "echo" in tools and "add_note" not in tools, sorted(tools)
    marker = "from oidc-provider " + secrets.token_hex(6)
    result = mcp.call_tool("echo", arguments_for(tools["echo"], text=marker)).result
    assert marker in result_text(result), result
    who = result_text(mcp.call_tool("whoami", {}).result)
    assert CLIENT_ID in who and "mcp:read" in who, who
    # mcp:read only: a write tool is a 403 naming the scope, not a 401.
    reply = mcp.call_tool("add_note", {"text": "nope"})
    assert reply.status == 403, f"{reply.status} {reply.text[:300]}"
    ch = parse_bearer_challenge(reply.headers.get("www-authenticate"))
    assert ch.get("error") == "insufficient_scope" and ch.get("scope") == "mcp:write", ch


def test_external_idp_write_scope_token_may_write(setup, http):
    gw, idp, audience = setup
    mcp = McpClient(http, gw.base, idp.access_token(http, audience, "mcp:read mcp:write"))
    assert mcp.initialize().status == 200
    assert "add_note" in mcp.tools_by_name()


def test_external_idp_token_for_another_audience_is_401(setup, http):
    gw, idp, _ = setup
    token = idp.access_token(http, OTHER_RESOURCE, "mcp:read")
    assert unverified_claims(token)["aud"] == OTHER_RESOURCE
    mcp = McpClient(http, gw.base, token)
    _assert_invalid_token(mcp.initialize(), gw)
    _assert_invalid_token(mcp.rpc("tools/list", {}), gw)


def test_external_idp_token_from_another_idp_is_401(setup, http):
    gw, _, audience = setup
    # Another oidc-provider with its own keys, issuing for our very audience.
    stranger = Idp([audience]).start()
    try:
        token = stranger.access_token(http, audience, "mcp:read")
    finally:
        stranger.stop()
    assert unverified_claims(token)["aud"] == audience
    _assert_invalid_token(McpClient(http, gw.base, token).initialize(), gw)


def test_external_idp_tampered_token_is_401(setup, http):
    gw, idp, audience = setup
    token = idp.access_token(http, audience, "mcp:read")
    head, payload, sig = token.split(".")
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    _assert_invalid_token(McpClient(http, gw.base, f"{head}.{payload}.{flipped}").initialize(), gw)


def test_external_idp_no_token_points_at_metadata_naming_the_idp(setup, http):
    gw, idp, audience = setup
    r = http.post(gw.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                  headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401, f"{r.status_code} {r.text[:300]}"
    ch = parse_bearer_challenge(r.headers.get("www-authenticate"))
    prm_url = ch.get("resource_metadata")
    assert prm_url == f"{gw.base}/.well-known/oauth-protected-resource/mcp", ch
    for url in (prm_url, f"{gw.base}/.well-known/oauth-protected-resource"):
        prm = http.get(url)
        assert prm.status_code == 200, f"{url}: {prm.status_code} {prm.text[:300]}"
        body = prm.json()
        assert body.get("authorization_servers") == [idp.issuer], body
        assert body.get("resource") == audience, body
    # The IdP it names really is discoverable there, and its token endpoint is what works.
    meta = http.get(f"{idp.issuer}/.well-known/openid-configuration").json()
    assert meta["issuer"] == idp.issuer and meta["token_endpoint"].startswith(idp.issuer)


def test_external_idp_builtin_authorization_endpoints_are_off(setup, http):
    gw, _, audience = setup
    for path in ("/.well-known/oauth-authorization-server",
                 "/.well-known/oauth-authorization-server/mcp",
                 "/.well-known/openid-configuration"):
        r = http.get(f"{gw.base}{path}")
        assert r.status_code == 404, f"GET {path}: {r.status_code} {r.text[:200]}"
    r = http.post(f"{gw.base}/token", data={"grant_type": "client_credentials",
                                             "client_id": CLIENT_ID, "resource": audience})
    assert r.status_code == 404, f"POST /token: {r.status_code} {r.text[:200]}"
    r = http.post(f"{gw.base}/register", json={"redirect_uris": ["http://127.0.0.1:1/cb"]})
    assert r.status_code == 404, f"POST /register: {r.status_code} {r.text[:200]}"
    r = http.get(f"{gw.base}/authorize", params={"response_type": "code", "client_id": "x"})
    assert r.status_code == 404, f"GET /authorize: {r.status_code} {r.text[:200]}"


def test_external_idp_refuses_unknown_client_and_resource(setup, http):
    """The IdP side of the contract: only the configured client, only known resources."""
    _, idp, _ = setup
    r = idp.token(http, "https://unknown.example.test/mcp")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target", r.text
    r = idp.token(http, OTHER_RESOURCE, secret="wrong-secret")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text


def test_external_idp_outage_keeps_cached_keys(tmp_path, http):
    """Once the gateway has the IdP's keys, tokens keep verifying while the IdP is down."""
    proxy_port = free_port()
    audience = f"http://127.0.0.1:{proxy_port}/mcp"
    idp = Idp([audience]).start()
    gw = None
    try:
        config = tmp_path / "gateway.toml"
        config.write_text(f'auth_mode = "external"\n\n[external]\nissuer = "{idp.issuer}"\n'
                          f'audience = "{audience}"\n')
        gw = Gateway(tmp_path / "data", ["--config", str(config)],
                     addrs={"proxy": f"127.0.0.1:{proxy_port}"}).start()
        token = idp.access_token(http, audience)
        assert McpClient(http, gw.base, token).initialize().status == 200
        idp.stop()
        mcp = McpClient(http, gw.base, token)
        reply = mcp.initialize()
        assert reply.status == 200, f"after the IdP stopped: {reply.status} {reply.text[:300]}"
        assert "echo" in mcp.tools_by_name()
    except BaseException:
        if gw is not None:
            print("---- gateway log ----")
            print(gw.log_tail(100))
        raise
    finally:
        if gw is not None:
            gw.stop()
        idp.stop()
