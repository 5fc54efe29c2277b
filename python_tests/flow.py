"""Client-side helpers for the flow tests: registration, authorize + consent,
PKCE S256, token grants, minting test tokens and a small MCP client.

Everything talks HTTP through the gateway's public (proxy) URL with httpx and
never follows redirects, so each Location header can be inspected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives import serialization

REDIRECT_URI = "http://127.0.0.1:47113/callback"
DEFAULT_SCOPE = "mcp:read mcp:write"
MCP_ACCEPT = "application/json, text/event-stream"
CLIENT_PROTOCOL_VERSION = "2025-06-18"


def http_client() -> httpx.Client:
    """A client that keeps cookies (consent CSRF) and never follows redirects."""
    return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(30.0))


# -- PKCE (RFC 7636) ---------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Pkce:
    verifier: str
    challenge: str
    method: str = "S256"


def pkce_s256() -> Pkce:
    verifier = b64url(os.urandom(32))  # 43 chars from the unreserved set
    challenge = b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    return Pkce(verifier, challenge)


# -- registration (RFC 7591) -------------------------------------------------

def register(http: httpx.Client, base: str, redirect_uris=None, client_name="pytest flow client",
             **extra) -> httpx.Response:
    body = {
        "redirect_uris": list(redirect_uris) if redirect_uris is not None else [REDIRECT_URI],
        "client_name": client_name,
        "token_endpoint_auth_method": "none",
    }
    body.update(extra)
    return http.post(f"{base}/register", json=body)


def register_client_id(http: httpx.Client, base: str, redirect_uri: str = REDIRECT_URI) -> str:
    r = register(http, base, [redirect_uri])
    assert r.status_code == 201, f"register failed: {r.status_code} {r.text}"
    return r.json()["client_id"]


# -- authorize + consent -----------------------------------------------------

class _FormParser(HTMLParser):
    """Collects <form>s with their <input>s and <button>s."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._current = {"attrs": a, "inputs": [], "buttons": []}
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None:
            self._current["inputs"].append(a)
        elif tag == "button" and self._current is not None:
            self._current["buttons"].append(a)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


@dataclass
class ConsentForm:
    action: str
    method: str
    hidden: dict
    decisions: list  # values of submit buttons named "decision"


def parse_forms(html: str) -> list[dict]:
    p = _FormParser()
    p.feed(html)
    p.close()
    return p.forms


def parse_consent_form(html: str) -> ConsentForm:
    forms = parse_forms(html)
    assert len(forms) == 1, f"expected exactly one form on the consent page, got {len(forms)}"
    f = forms[0]
    hidden = {i.get("name"): i.get("value", "") for i in f["inputs"]
              if i.get("type", "").lower() == "hidden" and i.get("name")}
    decisions = [b.get("value") for b in f["buttons"]
                 if b.get("name") == "decision" and b.get("type", "submit").lower() == "submit"]
    return ConsentForm(action=f["attrs"].get("action", ""),
                       method=f["attrs"].get("method", "").lower(),
                       hidden=hidden, decisions=decisions)


def authorize_params(client_id: str, pkce: Pkce | None, *, base: str,
                     redirect_uri: str = REDIRECT_URI, scope: str | None = None,
                     state: str | None = None, resource: str | None = "default",
                     method: str | None = None, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state if state is not None else secrets.token_urlsafe(12),
    }
    if pkce is not None:
        params["code_challenge"] = pkce.challenge
        params["code_challenge_method"] = method or pkce.method
    if scope is not None:
        params["scope"] = scope
    if resource == "default":
        params["resource"] = f"{base}/mcp"
    elif resource is not None:
        params["resource"] = resource
    params.update(extra)
    return params


def get_authorize(http: httpx.Client, base: str, params: dict) -> httpx.Response:
    return http.get(f"{base}/authorize", params=params)


def post_consent(http: httpx.Client, base: str, form: ConsentForm, decision: str,
                 override: dict | None = None) -> httpx.Response:
    data = dict(form.hidden)
    data["decision"] = decision
    if override:
        data.update(override)
    action = form.action or "/consent"
    url = action if action.startswith("http") else f"{base}{action}"
    return http.post(url, data=data)


def location_query(resp: httpx.Response) -> tuple[str, dict]:
    """(location without query, {param: single value}) of a redirect."""
    loc = resp.headers.get("location")
    assert loc, f"expected a Location header, got {resp.status_code} {resp.text[:300]}"
    parts = urlsplit(loc)
    q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return f"{parts.scheme}://{parts.netloc}{parts.path}", q


@dataclass
class Grant:
    client_id: str
    pkce: Pkce
    state: str
    code: str
    redirect_query: dict


def authorize_and_consent(http: httpx.Client, base: str, client_id: str, *,
                          scope: str | None = None, redirect_uri: str = REDIRECT_URI,
                          resource: str | None = "default", decision: str = "approve") -> Grant:
    pkce = pkce_s256()
    params = authorize_params(client_id, pkce, base=base, redirect_uri=redirect_uri,
                              scope=scope, resource=resource)
    r = get_authorize(http, base, params)
    if r.status_code in (302, 303) and decision == "approve":
        # The user already approved this client for these scopes: no page again.
        c = r
    else:
        assert r.status_code == 200, f"/authorize: {r.status_code} {r.headers} {r.text[:500]}"
        form = parse_consent_form(r.text)
        c = post_consent(http, base, form, decision)
    assert c.status_code in (302, 303), f"/consent: {c.status_code} {c.text[:500]}"
    target, q = location_query(c)
    assert target == redirect_uri, f"redirected to {target}, not {redirect_uri}"
    assert q.get("state") == params["state"], f"state not round-tripped: {q}"
    return Grant(client_id, pkce, params["state"], q.get("code", ""), q)


# -- token endpoint ----------------------------------------------------------

def token_request(http: httpx.Client, base: str, data: dict) -> httpx.Response:
    return http.post(f"{base}/token", data=data)


def exchange_code(http: httpx.Client, base: str, grant: Grant, *, verifier: str | None = None,
                  redirect_uri: str = REDIRECT_URI, resource: str | None = "default",
                  client_id: str | None = None) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": grant.code,
        "redirect_uri": redirect_uri,
        "client_id": client_id or grant.client_id,
        "code_verifier": verifier if verifier is not None else grant.pkce.verifier,
    }
    if resource == "default":
        data["resource"] = f"{base}/mcp"
    elif resource is not None:
        data["resource"] = resource
    return token_request(http, base, data)


def refresh(http: httpx.Client, base: str, client_id: str, refresh_token: str,
            **extra) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    data.update(extra)
    return token_request(http, base, data)


@dataclass
class Tokens:
    client_id: str
    access_token: str
    refresh_token: str
    scope: str
    expires_in: int
    body: dict = field(default_factory=dict)


def tokens_from(resp: httpx.Response, client_id: str) -> Tokens:
    assert resp.status_code == 200, f"/token: {resp.status_code} {resp.text}"
    b = resp.json()
    return Tokens(client_id, b["access_token"], b.get("refresh_token", ""), b.get("scope", ""),
                  b.get("expires_in", 0), b)


def full_flow(http: httpx.Client, base: str, *, scope: str | None = None,
              client_id: str | None = None) -> Tokens:
    """Register (unless given a client), authorize, approve, exchange the code."""
    cid = client_id or register_client_id(http, base)
    grant = authorize_and_consent(http, base, cid, scope=scope)
    assert grant.code, f"no code in redirect: {grant.redirect_query}"
    return tokens_from(exchange_code(http, base, grant), cid)


# -- JWT helpers ---------------------------------------------------------------

def unverified_claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def unverified_header(token: str) -> dict:
    return jwt.get_unverified_header(token)


def mint(pem: bytes, kid: str, claims: dict) -> str:
    """Sign claims with the gateway's own key (ES256), typed at+jwt as its tokens are."""
    key = serialization.load_pem_private_key(pem, password=None)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def now() -> int:
    return int(time.time())


# -- WWW-Authenticate ------------------------------------------------------------

_AUTH_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_bearer_challenge(value: str | None) -> dict:
    """'Bearer a="x", b="y"' -> {'scheme': 'bearer', 'a': 'x', 'b': 'y'}."""
    assert value, "missing WWW-Authenticate header"
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme.lower()}
    for m in _AUTH_PARAM_RE.finditer(rest):
        out[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


# -- MCP over streamable HTTP ----------------------------------------------------

@dataclass
class RpcReply:
    status: int
    headers: httpx.Headers
    message: dict | None  # the JSON-RPC response with our id, if any
    text: str  # body for non-200 answers (or JSON bodies)

    @property
    def result(self) -> dict:
        assert self.status == 200, f"HTTP {self.status}: {self.text[:500]}"
        assert self.message is not None, f"no JSON-RPC response in body: {self.text[:500]}"
        assert "error" not in self.message, f"JSON-RPC error: {self.message['error']}"
        return self.message["result"]


def _sse_messages(lines):
    """Yield decoded JSON payloads of SSE events from an iterator of lines."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = "\n".join(data)
                data = []
                if payload.strip():
                    yield json.loads(payload)
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    if data and "\n".join(data).strip():
        yield json.loads("\n".join(data))


class McpClient:
    def __init__(self, http: httpx.Client, base: str, token: str | None):
        self.http = http
        self.url = f"{base}/mcp"
        self.token = token
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._next_id = 0

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Accept": MCP_ACCEPT, "Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            h["MCP-Protocol-Version"] = self.protocol_version
        if extra:
            h.update(extra)
        return h

    def post(self, payload: dict, *, extra_headers: dict | None = None,
             url: str | None = None) -> RpcReply:
        want_id = payload.get("id")
        with self.http.stream("POST", url or self.url, content=json.dumps(payload),
                              headers=self.headers(extra_headers)) as r:
            ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
            if r.status_code != 200 or ctype != "text/event-stream":
                r.read()
                message = None
                if r.status_code == 200 and r.content.strip():
                    body = r.json()
                    if isinstance(body, list):
                        body = next((m for m in body if m.get("id") == want_id), None)
                    message = body
                return RpcReply(r.status_code, r.headers, message, r.text)
            seen = []
            for msg in _sse_messages(r.iter_lines()):
                seen.append(msg)
                if want_id is not None and msg.get("id") == want_id and (
                        "result" in msg or "error" in msg):
                    return RpcReply(r.status_code, r.headers, msg, json.dumps(msg))
            return RpcReply(r.status_code, r.headers, None, json.dumps(seen))

    def rpc(self, method: str, params: dict | None = None, **kw) -> RpcReply:
        self._next_id += 1
        payload = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            payload["params"] = params
        return self.post(payload, **kw)

    def notify(self, method: str, params: dict | None = None) -> httpx.Response:
        payload = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            payload["params"] = params
        return self.http.post(self.url, content=json.dumps(payload), headers=self.headers())

    def initialize(self) -> RpcReply:
        reply = self.rpc("initialize", {
            "protocolVersion": CLIENT_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "pytest-flow", "version": "0.1.0"},
        })
        if reply.status == 200 and reply.message and "result" in reply.message:
            self.session_id = reply.headers.get("mcp-session-id") or self.session_id
            self.protocol_version = reply.message["result"].get("protocolVersion",
                                                                CLIENT_PROTOCOL_VERSION)
            n = self.notify("notifications/initialized")
            assert n.status_code in (200, 202, 204), \
                f"notifications/initialized: {n.status_code} {n.text[:300]}"
        return reply

    def list_tools(self) -> RpcReply:
        return self.rpc("tools/list", {})

    def call_tool(self, name: str, arguments: dict) -> RpcReply:
        return self.rpc("tools/call", {"name": name, "arguments": arguments})

    def tools_by_name(self) -> dict:
        return {t["name"]: t for t in self.list_tools().result["tools"]}


def arguments_for(tool: dict, text: str = "hello from pytest", numbers=(2, 3)) -> dict:
    """Build arguments that satisfy a tool's inputSchema (required fields only)."""
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") or {}
    required = schema.get("required") or list(props)
    args = {}
    nums = list(numbers)
    for name in required:
        t = (props.get(name) or {}).get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), "string")
        if t in ("number", "integer"):
            args[name] = nums.pop(0) if nums else 1
        elif t == "boolean":
            args[name] = True
        elif t == "array":
            args[name] = [text]
        elif t == "object":
            args[name] = {}
        else:
            args[name] = text
    return args


def result_text(result: dict) -> str:
    """All text of a tools/call result, including structured content, as one string."""
    parts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
    if "structuredContent" in result:
        parts.append(json.dumps(result["structuredContent"]))
    return "\n".join(parts)


def query_string(d: dict) -> str:
    return urlencode(d)
