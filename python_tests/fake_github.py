"""A stand-in for GitHub with GitHub's OAuth-app and REST shapes, on loopback.

The flow tests can reach only 127.0.0.1, so the gateway's "sign in with GitHub" is tested
against this server, which answers the way github.com / GitHub Enterprise Server answer
(https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps):

  web (`web_url`, http://127.0.0.1:PORT)
    GET  /login/oauth/authorize?client_id&redirect_uri&state&scope[&code_challenge&code_challenge_method]
         The user chosen with sign_in_as() (default "octocat") "approves" at once: 302 to
         redirect_uri?code=…&state=… (no `iss`: GitHub sends none). sign_in_as(None): the user
         denies, 302 to redirect_uri?error=access_denied&error_description=…&state=….
         Unknown client_id: 404 page. A redirect_uri not allowed (see allow_redirect_uris; by
         default every one is): 400 page "redirect_uri_mismatch", no redirect.
    POST /login/oauth/access_token  form client_id, client_secret (or HTTP Basic), code,
         redirect_uri, code_verifier; or grant_type=refresh_token + refresh_token.
         With Accept: application/json the answer is JSON, otherwise form-encoded (GitHub's
         default). Errors are HTTP 200 too, {"error": "bad_verification_code" |
         "incorrect_client_credentials" | "redirect_uri_mismatch" | "bad_refresh_token" |
         "unsupported_grant_type", "error_description", "error_uri"}. Codes are single use and
         live 10 minutes; PKCE S256 (or plain) is checked when the authorize request had a
         challenge. OAuth-app tokens (gho_…) never expire; with expiring_tokens=True (GitHub
         App user tokens) the answer also has expires_in, refresh_token (ghr_…),
         refresh_token_expires_in, and a refresh rotates the refresh token.
  REST (`api_url`, web_url + api_prefix, "/api/v3" like GitHub Enterprise; "" like api.github.com)
    GET /user          {"id", "login", "name", "email" (the public email, may be null), ...}
    GET /user/emails   [{"email", "primary", "verified", "visibility"}]
    GET /user/orgs     [{"login", "id", ...}]
    GET /user/teams    [{"slug", "name", "id", "organization": {"login", ...}}]
    `Authorization: Bearer <token>` or `token <token>` of a live token, else 401
    {"message": "Bad credentials", ...}. Responses carry X-OAuth-Scopes.

Users: octocat (id 583231, "The Octocat", octocat@github.example primary verified and
old@example.org unverified, org acme, team acme/platform) and hubot (id 1000002, "Hubot",
hubot@elsewhere.example primary verified, no orgs).

`requests` records (method, path, authorization header present) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

DEFAULT_USERS = {
    "octocat": {
        "id": 583231,
        "name": "The Octocat",
        "public_email": "octocat@github.example",
        "emails": [
            {"email": "octocat@github.example", "primary": True, "verified": True, "visibility": "public"},
            {"email": "old@example.org", "primary": False, "verified": False, "visibility": None},
        ],
        "orgs": ["acme"],
        "teams": [("acme", "platform", "Platform")],
    },
    "hubot": {
        "id": 1000002,
        "name": "Hubot",
        "public_email": None,
        "emails": [
            {"email": "hubot@elsewhere.example", "primary": True, "verified": True, "visibility": "private"},
        ],
        "orgs": [],
        "teams": [],
    },
}

ERROR_DESCRIPTIONS = {
    "bad_verification_code": "The code passed is incorrect or expired.",
    "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
    "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for this application.",
    "bad_refresh_token": "The refresh token passed is incorrect or expired.",
    "unsupported_grant_type": "The grant type is not supported.",
}
ERROR_URI = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
CODE_TTL_SECONDS = 600


def _b64url_sha256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode("ascii")).digest()).rstrip(b"=").decode()


def _scope_list(raw: str | None) -> list[str]:
    return [s for s in (raw or "").replace(",", " ").split() if s]


class FakeGitHub:
    """The fake GitHub server in a thread; a context manager (start on enter, stop on exit)."""

    def __init__(self, client_id: str = "Iv1.fakegithubclient", client_secret: str | None = None,
                 api_prefix: str = "/api/v3", expiring_tokens: bool = False,
                 access_token_ttl: int = 8 * 3600, refresh_token_ttl: int = 184 * 24 * 3600,
                 users: dict | None = None):
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_hex(20)
        self.api_prefix = "/" + api_prefix.strip("/") if api_prefix.strip("/") else ""
        self.expiring_tokens = expiring_tokens
        self.access_token_ttl = int(access_token_ttl)
        self.refresh_token_ttl = int(refresh_token_ttl)
        self.users = json.loads(json.dumps(users or DEFAULT_USERS))  # deep copy, tuples -> lists
        self.requests: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._signed_in: str | None = "octocat"
        self._redirect_uris: list[str] | None = None  # None: any redirect_uri is accepted
        self._codes: dict[str, dict] = {}
        self._tokens: dict[str, dict] = {}  # access token -> {login, scope, expires_at}
        self._refresh: dict[str, dict] = {}  # refresh token -> {login, scope, expires_at}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "FakeGitHub":
        fake = self

        class Handler(_Handler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FakeGitHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeGitHub is not running"
        return self._server.server_address[1]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.web_url}{self.api_prefix}"

    @property
    def authorize_url(self) -> str:
        return f"{self.web_url}/login/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.web_url}/login/oauth/access_token"

    # -- test controls -----------------------------------------------------

    def sign_in_as(self, login: str | None) -> None:
        """The user who approves the next authorizations; None: the user denies."""
        if login is not None and login not in self.users:
            raise ValueError(f"unknown user {login!r}")
        with self._lock:
            self._signed_in = login

    def allow_redirect_uris(self, uris) -> None:
        """Only these redirect_uris (exact match); before any call every one is accepted."""
        with self._lock:
            self._redirect_uris = list(uris)

    def tokens_for(self, login: str) -> list[str]:
        """The live access tokens issued to `login`, oldest first."""
        now = time.time()
        with self._lock:
            return [t for t, v in self._tokens.items()
                    if v["login"] == login and (v["expires_at"] is None or v["expires_at"] > now)]

    def revoke_tokens_for(self, login: str) -> None:
        """The user revokes the app: every access and refresh token of `login` dies."""
        with self._lock:
            for table in (self._tokens, self._refresh):
                for t in [t for t, v in table.items() if v["login"] == login]:
                    del table[t]

    def expire_access_tokens(self) -> None:
        """Every access token expires now (refresh tokens stay valid)."""
        with self._lock:
            for v in self._tokens.values():
                v["expires_at"] = time.time() - 1

    # -- behaviour (called from the handler threads) -----------------------

    def _authorize(self, q: dict) -> tuple[int, dict, bytes]:
        if q.get("client_id") != self.client_id:
            return 404, {"content-type": "text/html; charset=utf-8"}, b"<h1>404</h1><p>Not Found</p>"
        redirect_uri = q.get("redirect_uri")
        if not redirect_uri:
            return 400, {"content-type": "text/html; charset=utf-8"}, b"<p>redirect_uri is required here</p>"
        state = q.get("state")
        with self._lock:
            allowed = self._redirect_uris
            login = self._signed_in
        if allowed is not None and redirect_uri not in allowed:
            # GitHub shows an error page and never redirects to an unregistered URI.
            return 400, {"content-type": "text/html; charset=utf-8"}, \
                b"<h1>Redirect URI mismatch</h1><p>redirect_uri_mismatch</p>"
        if login is None:
            return self._redirect(redirect_uri, {"error": "access_denied",
                                                 "error_description": "The user has denied your application access.",
                                                 "error_uri": ERROR_URI, "state": state})
        method = q.get("code_challenge_method") or ("plain" if q.get("code_challenge") else None)
        code = secrets.token_hex(10)
        with self._lock:
            self._codes[code] = {
                "login": login, "redirect_uri": redirect_uri, "scope": ",".join(_scope_list(q.get("scope"))),
                "challenge": q.get("code_challenge"), "method": method,
                "expires_at": time.time() + CODE_TTL_SECONDS,
            }
        return self._redirect(redirect_uri, {"code": code, "state": state})

    @staticmethod
    def _redirect(uri: str, params: dict) -> tuple[int, dict, bytes]:
        parts = urlsplit(uri)
        extra = urlencode({k: v for k, v in params.items() if v is not None})
        query = f"{parts.query}&{extra}" if parts.query else extra
        return 302, {"location": urlunsplit(parts._replace(query=query))}, b""

    def _issue(self, login: str, scope: str) -> dict:
        prefix = "ghu_" if self.expiring_tokens else "gho_"
        token = prefix + secrets.token_hex(18)
        now = time.time()
        answer = {"access_token": token, "token_type": "bearer", "scope": scope}
        record = {"login": login, "scope": scope, "expires_at": None}
        if self.expiring_tokens:
            record["expires_at"] = now + self.access_token_ttl
            refresh = "ghr_" + secrets.token_hex(30)
            self._refresh[refresh] = {"login": login, "scope": scope,
                                      "expires_at": now + self.refresh_token_ttl}
            answer.update(expires_in=self.access_token_ttl, refresh_token=refresh,
                          refresh_token_expires_in=self.refresh_token_ttl)
        self._tokens[token] = record
        return answer

    def _access_token(self, form: dict, basic: tuple[str, str] | None) -> dict:
        client_id, client_secret = basic if basic else (form.get("client_id"), form.get("client_secret"))
        if client_id != self.client_id or not client_secret or \
                not secrets.compare_digest(client_secret, self.client_secret):
            return _error("incorrect_client_credentials")
        grant_type = form.get("grant_type") or "authorization_code"
        now = time.time()
        with self._lock:
            if grant_type == "refresh_token":
                if not self.expiring_tokens:
                    return _error("unsupported_grant_type")
                entry = self._refresh.pop(form.get("refresh_token") or "", None)  # rotation: single use
                if entry is None or entry["expires_at"] <= now:
                    return _error("bad_refresh_token")
                return self._issue(entry["login"], entry["scope"])
            if grant_type != "authorization_code":
                return _error("unsupported_grant_type")
            entry = self._codes.pop(form.get("code") or "", None)  # single use, even on failure
            if entry is None or entry["expires_at"] <= now:
                return _error("bad_verification_code")
            if form.get("redirect_uri") and form["redirect_uri"] != entry["redirect_uri"]:
                return _error("redirect_uri_mismatch")
            if entry["challenge"]:
                verifier = form.get("code_verifier") or ""
                computed = _b64url_sha256(verifier) if entry["method"] == "S256" else verifier
                if not verifier or not secrets.compare_digest(computed, entry["challenge"]):
                    return _error("bad_verification_code", "The code_verifier does not match the code_challenge.")
            return self._issue(entry["login"], entry["scope"])

    def _api(self, path: str, authorization: str | None) -> tuple[int, object, dict]:
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() in ("bearer", "token"):
                token = value.strip()
        with self._lock:
            entry = self._tokens.get(token) if token else None
            if entry is not None and entry["expires_at"] is not None and entry["expires_at"] <= time.time():
                entry = None
        if entry is None:
            return 401, {"message": "Bad credentials",
                         "documentation_url": "https://docs.github.com/rest", "status": "401"}, {}
        headers = {"x-oauth-scopes": entry["scope"].replace(",", ", "), "x-accepted-oauth-scopes": ""}
        login = entry["login"]
        user = self.users[login]
        if path == "/user":
            return 200, {"login": login, "id": user["id"], "node_id": f"U_{user['id']}",
                         "type": "User", "site_admin": False, "name": user["name"],
                         "email": user["public_email"],
                         "html_url": f"{self.web_url}/{login}",
                         "avatar_url": f"{self.web_url}/avatars/{login}"}, headers
        if path == "/user/emails":
            return 200, [dict(e) for e in user["emails"]], headers
        if path == "/user/orgs":
            return 200, [self._org(o) for o in user["orgs"]], headers
        if path == "/user/teams":
            return 200, [{"id": 100 + i, "slug": slug, "name": name,
                          "organization": self._org(org)}
                         for i, (org, slug, name) in enumerate(user["teams"])], headers
        return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest",
                     "status": "404"}, {}

    @staticmethod
    def _org(login: str) -> dict:
        return {"login": login, "id": 9000 + sum(map(ord, login)), "node_id": f"O_{login}",
                "description": None}


def _error(code: str, description: str | None = None) -> dict:
    return {"error": code, "error_description": description or ERROR_DESCRIPTIONS[code],
            "error_uri": f"{ERROR_URI}#{code.replace('_', '-')}"}


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeGitHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, {"content-type": "application/json; charset=utf-8", **(headers or {})},
                   json.dumps(obj).encode())

    def _note(self, path: str) -> None:
        with self.github._lock:
            self.github.requests.append((self.command, path, self.headers.get("authorization") is not None))

    def do_GET(self):
        parts = urlsplit(self.path)
        path = parts.path
        self._note(path)
        gh = self.github
        if path == "/login/oauth/authorize":
            status, headers, body = gh._authorize(dict(parse_qsl(parts.query)))
            return self._send(status, headers, body)
        if gh.api_prefix == "" or path.startswith(gh.api_prefix + "/"):
            status, obj, headers = gh._api(path[len(gh.api_prefix):], self.headers.get("authorization"))
            return self._send_json(status, obj, headers)
        return self._send_json(404, {"message": "Not Found"})

    def do_POST(self):
        parts = urlsplit(self.path)
        path = parts.path
        self._note(path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        if path != "/login/oauth/access_token":
            return self._send_json(404, {"message": "Not Found"})
        # GitHub takes the parameters from the query string or the body.
        form = dict(parse_qsl(parts.query))
        ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype == "application/json" and raw:
            try:
                form.update({k: str(v) for k, v in json.loads(raw).items()})
            except (ValueError, AttributeError):
                pass
        else:
            form.update(parse_qsl(raw))
        basic = None
        authz = self.headers.get("authorization") or ""
        if authz[:6].lower() == "basic ":
            try:
                user, _, pw = base64.b64decode(authz[6:].strip()).decode("utf-8").partition(":")
                basic = (unquote(user.replace("+", " ")), unquote(pw.replace("+", " ")))
            except ValueError:
                basic = ("", "")
        answer = self.github._access_token(form, basic)
        if "application/json" in (self.headers.get("accept") or ""):
            return self._send_json(200, answer)
        return self._send(200, {"content-type": "application/x-www-form-urlencoded; charset=utf-8"},
                          urlencode(answer).encode())
