"""The organisation's identity provider for the SSO flow tests: a real OpenID provider.

`SsoIdp` runs clients/thirdparty/sso_idp.mjs (oidc-provider 8.8.1) on 127.0.0.1, any free
port, with one confidential client. Readiness is the stdout line

    sso-idp listening issuer=http://127.0.0.1:PORT

which a reader thread waits for and signals through a threading.Event (no sleeps); reader
threads drain stdout and stderr for the whole life of the process. Stopping sends SIGTERM to
the PID this module started, and nothing else, then waits for it to exit.

The provider's users are alice (alice@example.com, verified, groups engineering+admins),
bob (bob@other.org, verified, sales) and carol (carol@example.com, NOT verified,
engineering); any password. See the header of sso_idp.mjs for the pages, claims, and the
/__control/ endpoints this class wraps.

    with SsoIdp() as idp:
        idp.allow_redirect_uris([f"{gw.base}/sso/callback"])
        location = idp.sign_in(http, authorize_url, "alice")   # the client's redirect_uri?code=…
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import signal
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
THIRDPARTY = REPO_ROOT / "clients" / "thirdparty"
SSO_IDP_SCRIPT = THIRDPARTY / "sso_idp.mjs"
OIDC_PROVIDER = THIRDPARTY / "node_modules" / "oidc-provider" / "package.json"

READY_RE = re.compile(r"sso-idp listening issuer=(\S+)")
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0

MISBEHAVIOURS = ("wrong_nonce", "foreign_key", "alg_none", "replay", "wrong_aud", "expired", "wrong_iss")

# The built-in users: login -> the claims the provider releases for them.
USERS = {
    "alice": {"sub": "alice-0001", "email": "alice@example.com", "email_verified": True,
              "name": "Alice Example", "groups": ["engineering", "admins"]},
    "bob": {"sub": "bob-0002", "email": "bob@other.org", "email_verified": True,
            "name": "Bob Other", "groups": ["sales"]},
    "carol": {"sub": "carol-0003", "email": "carol@example.com", "email_verified": False,
              "name": "Carol Unverified", "groups": ["engineering"]},
}


class SsoIdpStartError(RuntimeError):
    pass


class SsoSignInError(RuntimeError):
    """The provider's pages did not end in a redirect away from the provider."""


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _Forms(HTMLParser):
    """Collects <form>s (id, method, action) with their named <input>s, and element ids."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.ids: set[str] = set()
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "form":
            self._current = {"id": a.get("id"), "method": (a.get("method") or "get").lower(),
                             "action": a.get("action") or "", "fields": {}}
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current["fields"][a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def _request(session, method: str, url: str, data: dict | None = None):
    """One request without following redirects, on an httpx.Client or a requests.Session."""
    if isinstance(session, httpx.Client):
        return session.request(method, url, data=data, follow_redirects=False)
    return session.request(method, url, data=data, allow_redirects=False)  # requests.Session


class SsoIdp:
    """sso_idp.mjs as a child process; a context manager (start on enter, stop on exit)."""

    def __init__(self, client_id: str = "mcp-gateway", client_secret: str | None = None,
                 access_token_ttl: int = 30, redirect_uris: list[str] | None = None):
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.access_token_ttl = int(access_token_ttl)
        self.initial_redirect_uris = list(redirect_uris or [])
        self.issuer: str | None = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=2000)
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set on the readiness line or on stdout EOF
        self._threads: list[threading.Thread] = []
        self._http: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [os.environ.get("NODE_BIN", "node"), str(SSO_IDP_SCRIPT), "0",
               "--client-id", self.client_id, "--client-secret", self.client_secret,
               "--access-token-ttl", str(self.access_token_ttl)]
        for uri in self.initial_redirect_uris:
            cmd += ["--redirect-uri", uri]
        return cmd

    def start(self) -> "SsoIdp":
        if not OIDC_PROVIDER.exists():
            raise SsoIdpStartError(
                f"oidc-provider is not installed in {THIRDPARTY / 'node_modules'}: run `npm ci` in "
                f"{THIRDPARTY} (`python3 run_tests.py flow` does it)")
        self.proc = subprocess.Popen(self.command(), cwd=THIRDPARTY, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, pipe, watch in (("stdout", self.proc.stdout, True),
                                  ("stderr", self.proc.stderr, False)):
            t = threading.Thread(target=self._drain, args=(name, pipe, watch),
                                 name=f"sso-idp-{name}-{self.proc.pid}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self._ready.wait(READY_TIMEOUT_SECONDS):
            self.stop()
            raise SsoIdpStartError(f"sso-idp not ready within {READY_TIMEOUT_SECONDS}s\n{self.log_tail()}")
        if self.issuer is None:
            code = self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            self.returncode = code
            self._join_readers()
            raise SsoIdpStartError(f"sso-idp exited (code {code}) before it was ready\n{self.log_tail()}")
        self._http = httpx.Client(timeout=httpx.Timeout(10.0), trust_env=False, follow_redirects=False)
        return self

    def stop(self) -> int | None:
        """SIGTERM our own PID and wait; SIGKILL (still our PID) only if it hangs."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.returncode = self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._record("[test harness] sso-idp ignored SIGTERM; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
                self.returncode = None
        else:
            self.returncode = self.proc.returncode
        self._join_readers()
        return self.returncode

    def __enter__(self) -> "SsoIdp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _join_readers(self) -> None:
        for t in self._threads:
            t.join(timeout=STOP_TIMEOUT_SECONDS)

    def _record(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def _drain(self, name: str, pipe, watch_ready: bool) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._record(f"[{name}] {line}")
                if watch_ready and not self._ready.is_set():
                    m = READY_RE.search(line)
                    if m:
                        self.issuer = m.group(1)
                        self._ready.set()
        finally:
            if watch_ready:
                self._ready.set()
            pipe.close()

    def log_tail(self, n: int = 100) -> str:
        with self._lock:
            return "\n".join(list(self._lines)[-n:])

    # -- the provider's endpoints ------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("SsoIdp is not running")
        return self._http

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def discovery(self) -> dict:
        r = self._client().get(self.discovery_url)
        r.raise_for_status()
        return r.json()

    def userinfo(self, access_token: str) -> tuple[int, dict | None]:
        """GET the userinfo endpoint with the bearer token: (status, JSON body or None)."""
        r = self._client().get(f"{self.issuer}/me", headers={"Authorization": f"Bearer {access_token}"})
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body

    # -- /__control/ -------------------------------------------------------

    def _control(self, path: str, body: dict | None = None):
        url = f"{self.issuer}/__control/{path}"
        c = self._client()
        r = c.post(url, json=body) if body is not None else c.get(url)
        if r.status_code != 200:
            raise RuntimeError(f"sso-idp control {path}: {r.status_code} {r.text}")
        return r.json()

    def allow_redirect_uris(self, uris) -> None:
        """Replace the client's registered redirect_uris (exact match, as registered)."""
        self._control("redirect_uris", {"redirect_uris": list(uris)})

    def misbehave(self, mode: str | None) -> None:
        """Defect the id_token of the next authorization_code token responses (None: stop)."""
        if mode is not None and mode not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {mode!r}; one of {MISBEHAVIOURS}")
        self._control("misbehave", {"mode": mode})

    def set_down(self, down: bool) -> None:
        """While down, every non-control request answers 503."""
        self._control("down", {"down": bool(down)})

    def last_token_request(self) -> dict | None:
        """The last /token request: {"fields": {...form, client_secret masked}, "client_auth",
        "basic_client_id", "status", "error", "id_token_mode"}, or None."""
        return self._control("last_token_request")

    def token_requests(self) -> list[dict]:
        return self._control("token_requests")

    # -- driving the pages -------------------------------------------------

    def sign_in(self, session, authorize_url: str, login: str, password: str = "any-password",
                approve: bool = True, max_steps: int = 20) -> str:
        """Drive the provider's pages as a browser would and return the URL the provider finally
        redirects to (the client's redirect_uri with code, state and iss, or with error=...),
        without requesting it.

        `session` is an httpx.Client or a requests.Session; its cookies carry the provider's
        session. `authorize_url` may be the provider's authorization URL or any URL that
        redirects to it (e.g. the gateway's sign-in start): redirects are followed only while
        they point at the provider's origin. The login form gets `login` and `password`; the
        consent page is answered Allow (or Deny when approve=False). An unknown login raises
        SsoSignInError (the provider shows its login form again).
        """
        if not self.issuer:
            raise RuntimeError("SsoIdp is not running")
        idp_origin = _origin(self.issuer)
        method, url, data = "GET", authorize_url, None
        logins_sent = 0
        for _ in range(max_steps):
            r = _request(session, method, url, data)
            if r.status_code in (301, 302, 303, 307, 308):
                location = r.headers.get("location")
                if not location:
                    raise SsoSignInError(f"{r.status_code} without Location from {url}")
                target = urljoin(url, location)
                if _origin(target) != idp_origin:
                    if _origin(url) == idp_origin:
                        return target
                    # a redirect before reaching the provider, e.g. from the gateway
                    raise SsoSignInError(f"{url} redirects to {target}, not to the provider {self.issuer}")
                method, url, data = "GET", target, None
                continue
            if _origin(url) != idp_origin:
                raise SsoSignInError(f"{url} answered {r.status_code}, not a redirect to the provider")
            if r.status_code != 200:
                raise SsoSignInError(f"provider answered {r.status_code} at {url}: {r.text[:500]}")
            page = _Forms()
            page.feed(r.text)
            forms = {f["id"]: f for f in page.forms if f["id"]}
            if "login-form" in forms:
                if logins_sent:
                    raise SsoSignInError(f"login {login!r} refused by the provider")
                form = forms["login-form"]
                data = {**form["fields"], "login": login, "password": password}
                logins_sent += 1
            elif "consent-form" in forms:
                form = forms["consent-form" if approve else "deny-form"]
                data = dict(form["fields"])
            else:
                raise SsoSignInError(f"unexpected provider page at {url}: {r.text[:500]}")
            method, url = form["method"].upper(), urljoin(url, form["action"])
        raise SsoSignInError(f"no redirect away from the provider within {max_steps} steps")
