#!/usr/bin/env python3
"""Walk the whole MCP OAuth 2.1 flow against a running mcp-oauth-gateway and show every step.

    python3 scripts/debug_oauth2_flow.py http://127.0.0.1:3002          # the public base URL
    python3 scripts/debug_oauth2_flow.py http://127.0.0.1:3002/mcp      # or the MCP URL
    python3 scripts/debug_oauth2_flow.py URL --scope "mcp:read mcp:write" --no-trace

It does what a real MCP client does, one HTTP request at a time, and never follows a
redirect by itself:

  1  POST /mcp without a token           -> 401, WWW-Authenticate names the resource metadata
  2  GET protected resource metadata     -> 200 (RFC 9728)
  3  GET authorization server metadata   -> 200, issuer must be the authorization server (RFC 8414)
  4  POST /register                      -> 201, a public client (RFC 7591)
  5a GET /authorize (PKCE S256, state, resource) -> 200 consent page
  5b POST /consent decision=approve      -> 302 to the redirect URI with code, state and iss
  6  POST /token authorization_code      -> 200 access + refresh token
  7  MCP: initialize, notifications/initialized, tools/list, tools/call echo
  8  POST /token refresh_token           -> 200 a rotated pair

For each step it prints the request, the response and, when the gateway runs with
--debug-trace, what the proxy did with it (from GET {base}/debug/requests): which backend
got the request, its address, the status and how long it took. A summary table closes the
run. The trace is shared by every client of the gateway: each request is matched to the
first new trace entry with its method and path, so on a busy gateway another client's
request can show up instead.

Exit status: 0 when every step got what it should, 1 otherwise (the failing step is
named), 2 for a bad command line.

Tokens, codes, PKCE verifiers, CSRF tokens, secrets and cookies are never printed in full:
they are cut to a short prefix followed by "…". No callback server is started: the
redirect after consent is read from the Location header.

Only the Python standard library is used, so a plain `python3` runs it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import sys
import time
from html.parser import HTMLParser
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

DEFAULT_REDIRECT_URI = "http://127.0.0.1:8976/callback"
MCP_ACCEPT = "application/json, text/event-stream"
CLIENT_PROTOCOL_VERSION = "2025-06-18"
CLIENT_NAME = "debug_oauth2_flow.py"

# Names (of JSON fields, form fields and query parameters) whose values are secrets.
SECRET_NAMES = {
    "access_token", "refresh_token", "id_token", "code", "client_secret", "code_verifier",
    "csrf_token", "registration_access_token", "token", "password", "assertion",
}
# Response headers worth showing; everything else is summarised as a count.
SHOWN_RESPONSE_HEADERS = (
    "content-type", "www-authenticate", "location", "cache-control", "mcp-session-id",
    "mcp-protocol-version", "set-cookie", "content-length", "transfer-encoding",
)
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
BODY_MAX_LINES = 60
# Short names of the steps for the summary table.
STEP_NAMES = {
    "1": "no token -> challenge", "2": "resource metadata", "3": "AS metadata",
    "4": "register client", "5a": "authorize", "5b": "consent approve", "6": "token (code)",
    "7a": "mcp initialize", "7b": "mcp initialized", "7c": "mcp tools/list",
    "7d": "mcp tools/call echo", "8": "token (refresh)",
}
PREFIX_LEN = 6


# -- redaction ---------------------------------------------------------------------

ELLIPSIS = "…"  # "..." when stdout cannot encode it (see main)


def short(value, keep: int = PREFIX_LEN) -> str:
    """A secret shown as its first few characters and an ellipsis (at most 7 characters)."""
    s = str(value)
    if not s:
        return s
    if len(ELLIPSIS) > 1:
        keep = min(keep, 4)
    keep = min(keep, max(1, len(s) // 4))
    return s[:keep] + ELLIPSIS


class Redactor:
    """Remembers every secret the flow has seen and scrubs it from anything printed."""

    def __init__(self):
        self._secrets: set[str] = set()

    def add(self, value) -> None:
        if isinstance(value, str) and len(value) >= 8:
            self._secrets.add(value)
            # The same value as it appears percent-encoded in a URL or a form body.
            self._secrets.add(quote(value, safe=""))

    def scrub(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, short(s))
        return JWT_RE.sub(lambda m: short(m.group(0)), text)

    def json_value(self, value, key: str | None = None):
        """A copy of a JSON document with secret fields cut short."""
        if isinstance(value, dict):
            return {k: self.json_value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json_value(v, key) for v in value]
        if key is not None and key.lower() in SECRET_NAMES and isinstance(value, str):
            self.add(value)
            return short(value)
        return value

    def pairs(self, pairs) -> str:
        """key=value pairs (a query or a form body), secrets cut short, shown unencoded."""
        out = []
        for k, v in pairs:
            if k.lower() in SECRET_NAMES:
                self.add(v)
                v = short(v)
            out.append(f"{k}={v}")
        return "&".join(out)

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        if not parts.query:
            return url
        query = self.pairs(parse_qsl(parts.query, keep_blank_values=True))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def header(self, name: str, value: str) -> str:
        n = name.lower()
        if n in ("authorization", "proxy-authorization"):
            scheme, _, cred = value.partition(" ")
            self.add(cred)
            return f"{scheme} {short(cred)}" if cred else "[redacted]"
        if n == "cookie":
            names = [c.split("=", 1)[0].strip() for c in value.split(";") if c.strip()]
            return "; ".join(f"{c}=[redacted]" for c in names)
        if n == "set-cookie":
            cookie_name, _, rest = value.partition("=")
            attrs = rest.split(";", 1)[1].strip() if ";" in rest else ""
            return f"{cookie_name.strip()}=[redacted]" + (f"; {attrs}" if attrs else "")
        if n == "mcp-session-id":
            return short(value, 4)
        if n == "location":
            return self.url(value)
        return value


# -- HTTP (http.client, no redirects, simple cookie jar) -------------------------------

class Exchange:
    """One request and its response, plus what the proxy trace says about it."""

    def __init__(self, step: str, title: str, method: str, url: str, headers: dict,
                 body: bytes | None, expected: tuple):
        self.step, self.title = step, title
        self.method, self.url, self.headers, self.body = method, url, headers, body
        self.expected = expected
        self.status: int | None = None
        self.reason = ""
        self.response_headers: list[tuple[str, str]] = []
        self.response_body = b""
        self.sse_messages: list | None = None  # SSE events (see _read_sse), if SSE
        self.error: str | None = None  # transport error
        self.elapsed_ms = 0.0
        self.trace_since = 0
        self.trace: list[dict] = []
        self.checks: list[tuple[bool, str]] = []

    def header(self, name: str) -> str | None:
        for k, v in self.response_headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.response_body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def status_ok(self) -> bool:
        return self.status is not None and self.status in self.expected

    @property
    def ok(self) -> bool:
        return self.status_ok and all(ok for ok, _ in self.checks)

    def check(self, ok: bool, text: str) -> bool:
        self.checks.append((bool(ok), text))
        return bool(ok)


class Http:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.cookies: dict[str, str] = {}

    def _connection(self, parts):
        port = parts.port
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, port or 443, timeout=self.timeout)
        return http.client.HTTPConnection(parts.hostname, port or 80, timeout=self.timeout)

    def send(self, ex: Exchange, want_rpc_id=None) -> Exchange:
        parts = urlsplit(ex.url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = dict(ex.headers)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            ex.headers = headers
        conn = self._connection(parts)
        started = time.perf_counter()
        try:
            conn.request(ex.method, target, body=ex.body, headers=headers)
            resp = conn.getresponse()
            ex.status, ex.reason = resp.status, resp.reason
            ex.response_headers = list(resp.getheaders())
            ctype = (resp.getheader("content-type") or "").split(";")[0].strip().lower()
            if ctype == "text/event-stream":
                ex.sse_messages = []
                raw = []
                for event, line_bytes in _read_sse(resp):
                    raw.append(line_bytes)
                    ex.sse_messages.append(event)
                    payload = event["data"]
                    if (want_rpc_id is not None and isinstance(payload, dict)
                            and payload.get("id") == want_rpc_id
                            and ("result" in payload or "error" in payload)):
                        break  # our answer is in; the stream may stay open
                ex.response_body = b"".join(raw)
            else:
                ex.response_body = resp.read()
            for k, v in ex.response_headers:
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    self.cookies[name.strip()] = rest.split(";", 1)[0].strip()
        except (OSError, http.client.HTTPException) as e:
            ex.error = f"{type(e).__name__}: {e}"
        finally:
            ex.elapsed_ms = (time.perf_counter() - started) * 1000.0
            conn.close()
        return ex


def _read_sse(resp):
    """Yield (event, raw bytes) for each SSE event; event = {"data": decoded JSON, text or
    None when the event has no data, "fields": {"id": ..., "event": ..., "retry": ...}}."""
    data: list[str] = []
    fields: dict[str, str] = {}
    raw: list[bytes] = []

    def event():
        payload = _decode_sse_data("\n".join(data)) if data and "".join(data).strip() else None
        return {"data": payload, "fields": dict(fields)}

    while True:
        line_bytes = resp.readline()
        if not line_bytes:
            break
        raw.append(line_bytes)
        line = line_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
        if line == "":
            if data or fields:
                yield event(), b"".join(raw)
            data, fields, raw = [], {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name in ("id", "event", "retry"):
            fields[name] = value
    if data or fields:
        yield event(), b"".join(raw)


def _decode_sse_data(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- HTML consent form ------------------------------------------------------------------

class FormParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._current = None

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


def parse_forms(html: str) -> list[dict]:
    p = FormParser()
    p.feed(html)
    p.close()
    return p.forms


# -- small helpers --------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_AUTH_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(value: str | None) -> dict:
    if not value:
        return {}
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme.lower()}
    for m in _AUTH_PARAM_RE.finditer(rest):
        out[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


def split_gateway_url(url: str) -> tuple[str, str]:
    """(public base URL, MCP URL) from either of them."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/mcp"):
        base_path, mcp_path = path[: -len("/mcp")], path
    else:
        base_path, mcp_path = path, path + "/mcp"
    base = urlunsplit((parts.scheme, parts.netloc, base_path, "", ""))
    return base, urlunsplit((parts.scheme, parts.netloc, mcp_path, "", ""))


def as_metadata_url(issuer: str) -> str:
    """RFC 8414 section 3: the well-known segment goes between host and path."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc,
                       "/.well-known/oauth-authorization-server" + path, "", ""))


def arguments_for(tool: dict, text: str) -> dict:
    """Arguments that satisfy a tool's inputSchema (required fields, or all when none listed)."""
    schema = tool.get("inputSchema") or {}
    props = schema.get("properties") or {}
    names = schema.get("required") or list(props)
    args = {}
    for name in names:
        t = (props.get(name) or {}).get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), "string")
        if t in ("number", "integer"):
            args[name] = 1
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
    parts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
    if "structuredContent" in result:
        parts.append(json.dumps(result["structuredContent"]))
    return "\n".join(parts)


# -- the debugger -----------------------------------------------------------------------

class FlowDebugger:
    def __init__(self, url: str, scope: str | None, trace: bool, timeout: float,
                 redirect_uri: str, out=None):
        self.base, self.mcp_url = split_gateway_url(url)
        self.scope_arg = scope
        self.want_trace = trace
        self.redirect_uri = redirect_uri
        self.http = Http(timeout)
        self.red = Redactor()
        self.out = out or sys.stdout
        self.exchanges: list[Exchange] = []
        self.trace_on = False
        self.trace_note = ""
        self.trace_last_id = 0
        self.trace_entries: list[dict] = []
        self.claimed_trace_ids: set[int] = set()
        self.aborted: str | None = None
        # what the flow learns on the way
        self.resource = self.mcp_url
        self.prm_url = None
        self.challenge_scope = None
        self.issuer = None
        self.as_meta: dict = {}
        self.client_id = None
        self.code = None
        self.verifier = None
        self.access_token = None
        self.refresh_token = None
        self.session_id = None
        self.protocol_version = None
        self.rpc_id = 0

    # -- output --------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        line = self.red.scrub(text) + "\n"
        try:
            self.out.write(line)
        except UnicodeEncodeError:
            enc = getattr(self.out, "encoding", None) or "ascii"
            self.out.write(line.encode(enc, errors="backslashreplace").decode(enc))
        self.out.flush()

    def banner(self, text: str) -> None:
        self.say("")
        self.say(f"== {text} " + "=" * max(3, 76 - len(text)))

    def body_lines(self, body: bytes, ctype: str, sse_messages=None) -> list[str]:
        if sse_messages is not None:
            lines = [f"(text/event-stream, {len(sse_messages)} event(s))"]
            for i, event in enumerate(sse_messages, 1):
                msg = event["data"]
                meta = ", ".join(f"{k} {v!r}" for k, v in event["fields"].items())
                meta = f" ({meta})" if meta else ""
                if msg is None:
                    lines.append(f"event {i}{meta}: no data (a priming event a client can "
                                 f"resume from)")
                    continue
                lines.append(f"event {i}{meta} data:")
                if isinstance(msg, (dict, list)):
                    lines += json.dumps(self.red.json_value(msg), indent=2,
                                        ensure_ascii=False).splitlines()
                else:
                    lines.append(str(msg))
            return lines
        if not body:
            return ["(empty)"]
        text = body.decode("utf-8", errors="replace")
        ctype = ctype.split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json") or text.lstrip()[:1] in "{[":
            try:
                doc = json.loads(text)
                return json.dumps(self.red.json_value(doc), indent=2,
                                  ensure_ascii=False).splitlines()
            except ValueError:
                pass
        if ctype == "application/x-www-form-urlencoded":
            return [self.red.pairs(parse_qsl(text, keep_blank_values=True))]
        if ctype == "text/html":
            return self.html_summary(text)
        return text.splitlines() or [""]

    def html_summary(self, html: str) -> list[str]:
        lines = [f"(HTML page, {len(html)} bytes)"]
        m = re.search(r"<title>(.*?)</title>", html, re.I | re.S)
        if m:
            lines.append(f"title: {m.group(1).strip()}")
        for f in parse_forms(html):
            a = f["attrs"]
            lines.append(f"form method={a.get('method', '')} action={a.get('action', '')}")
            for i in f["inputs"]:
                name, value = i.get("name", ""), i.get("value", "")
                if name.lower() in SECRET_NAMES or name.lower() == "request_id":
                    self.red.add(value)
                    value = short(value)
                lines.append(f"  input type={i.get('type', 'text')} name={name} value={value}")
            for b in f["buttons"]:
                lines.append(f"  button type={b.get('type', 'submit')} name={b.get('name', '')} "
                             f"value={b.get('value', '')}")
        if len(lines) == 1 or (m and len(lines) == 2):
            text = re.sub(r"<[^>]+>", " ", html)
            text = re.sub(r"\s+", " ", text).strip()
            lines.append("text: " + text[:300])
        return lines

    def print_exchange(self, ex: Exchange) -> None:
        self.banner(f"Step {ex.step}: {ex.title}")
        self.say(f"> {ex.method} {self.red.url(ex.url)}")
        for k, v in ex.headers.items():
            self.say(f"> {k}: {self.red.header(k, v)}")
        if ex.body is not None:
            ctype = next((v for k, v in ex.headers.items() if k.lower() == "content-type"), "")
            self.say("> body:")
            for line in self.body_lines(ex.body, ctype)[:BODY_MAX_LINES]:
                self.say("    " + line)
        if ex.error:
            self.say(f"< no response: {ex.error}  ({ex.elapsed_ms:.1f} ms)")
        else:
            self.say(f"< {ex.status} {ex.reason}  ({ex.elapsed_ms:.1f} ms)")
            shown = {h: 0 for h in SHOWN_RESPONSE_HEADERS}
            others = 0
            for k, v in ex.response_headers:
                if k.lower() in shown:
                    self.say(f"< {k.lower()}: {self.red.header(k, v)}")
                else:
                    others += 1
            if others:
                self.say(f"< ({others} other header(s) not shown)")
            self.say("< body:")
            blines = self.body_lines(ex.response_body, ex.header("content-type") or "",
                                     ex.sse_messages)
            for line in blines[:BODY_MAX_LINES]:
                self.say("    " + line)
            if len(blines) > BODY_MAX_LINES:
                self.say(f"    … ({len(blines) - BODY_MAX_LINES} more line(s))")
        self.print_trace(ex)
        exp = "/".join(str(s) for s in ex.expected)
        if ex.status_ok:
            self.say(f"check: ok    status {ex.status} (expected {exp})")
        else:
            got = ex.status if ex.status is not None else "no response"
            self.say(f"check: FAIL  status {got} (expected {exp})")

    def print_checks(self, ex: Exchange, start: int = 0) -> None:
        for ok, text in ex.checks[start:]:
            self.say(f"check: {'ok   ' if ok else 'FAIL '} {text}")

    # -- trace ---------------------------------------------------------------------

    def trace_url(self, since: int | None) -> str:
        url = f"{self.base}/debug/requests"
        return url if since is None else f"{url}?since={since}"

    def fetch_trace(self, since: int | None):
        """(status, entries) from the trace endpoint; status None on a transport error."""
        ex = Exchange("-", "trace", "GET", self.trace_url(since), {"Accept": "application/json"},
                      None, (200,))
        self.http.send(ex)
        if ex.status != 200:
            return ex.status, ex.error or ex.reason
        doc = ex.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
            return ex.status, "the answer is not {\"requests\": [...]}"
        return 200, doc["requests"]

    def start_trace(self) -> None:
        self.banner("Proxy trace")
        if not self.want_trace:
            self.trace_note = "tracing off (--no-trace given)"
            self.say("--no-trace given: not asking the gateway what its proxy did.")
            return
        status, entries = self.fetch_trace(None)
        url = self.trace_url(None)
        if status == 200:
            self.trace_on = True
            ids = [e.get("id", 0) for e in entries if isinstance(e, dict)]
            self.trace_last_id = max(ids) if ids else 0
            self.trace_note = "tracing on"
            self.say(f"GET {url} -> 200: the gateway runs with --debug-trace; each step below "
                     f"shows what the proxy forwarded (starting after trace id "
                     f"{self.trace_last_id}).")
        elif status == 404:
            self.trace_note = "tracing off (the gateway was started without --debug-trace)"
            self.say(f"GET {url} -> 404: the gateway was started without --debug-trace, so "
                     f"there is no proxy trace. Restart it with --debug-trace (or "
                     f"MCP_GATEWAY_DEBUG_TRACE=1) to see which backend served each request. "
                     f"Continuing without it.")
        else:
            self.trace_note = ("tracing unavailable (trace endpoint: "
                               f"{status if status is not None else 'no response'}, {entries})")
            self.say(f"GET {url} -> {status if status is not None else 'no response'} "
                     f"({entries}): no proxy trace available. Continuing without it.")

    def pull_trace(self) -> None:
        if not self.trace_on:
            return
        status, entries = self.fetch_trace(self.trace_last_id)
        if status != 200:
            self.say(f"(trace endpoint answered {status}: {entries})")
            return
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("id"), int):
                continue
            if e["id"] > self.trace_last_id:
                self.trace_last_id = e["id"]
            self.trace_entries.append(e)
        self.attribute_trace()

    def attribute_trace(self) -> None:
        """Give each exchange the first unclaimed trace entry with its method and path."""
        for ex in self.exchanges:
            if ex.trace or ex.status is None:
                continue
            path = urlsplit(ex.url).path or "/"
            for e in self.trace_entries:
                if (e["id"] > ex.trace_since and e["id"] not in self.claimed_trace_ids
                        and e.get("method") == ex.method and e.get("path") == path):
                    ex.trace.append(e)
                    self.claimed_trace_ids.add(e["id"])
                    break

    def trace_line(self, e: dict) -> str:
        dur = e.get("duration_ms")
        dur = f"{dur:.2f} ms" if isinstance(dur, (int, float)) else f"{dur} ms"
        return (f"proxy trace #{e.get('id')}: {e.get('method')} {e.get('path')} -> "
                f"backend={e.get('backend')} ({e.get('backend_addr')}) "
                f"status={e.get('status')} in {dur}")

    def print_trace(self, ex: Exchange) -> None:
        if not self.trace_on:
            return
        self.pull_trace()
        if ex.trace:
            for e in ex.trace:
                self.say(self.trace_line(e))
                if e.get("status") != ex.status:
                    self.say(f"  note: the trace says {e.get('status')}, the client saw "
                             f"{ex.status}")
        elif ex.status is not None:
            self.say("proxy trace: no entry for this request yet (it may show up later; see "
                     "the summary)")

    # -- running steps ---------------------------------------------------------------

    def send(self, step: str, title: str, method: str, url: str, *, headers=None,
             body: bytes | None = None, expected=(200,), want_rpc_id=None,
             quiet_print: bool = False) -> Exchange:
        ex = Exchange(step, title, method, url, dict(headers or {}), body, tuple(expected))
        ex.trace_since = self.trace_last_id
        self.exchanges.append(ex)
        self.http.send(ex, want_rpc_id=want_rpc_id)
        if not quiet_print:
            self.print_exchange(ex)
        return ex

    def abort(self, why: str) -> None:
        self.aborted = why
        self.say("")
        self.say(f"!! cannot go on: {why}")

    def run(self) -> int:
        self.say(f"MCP OAuth 2.1 flow against {self.base} (MCP endpoint {self.mcp_url})")
        self.start_trace()
        steps = (self.step1_unauthenticated, self.step2_prm, self.step3_as_metadata,
                 self.step4_register, self.step5_authorize, self.step6_token, self.step7_mcp,
                 self.step8_refresh)
        for step in steps:
            if not step():
                break
        if self.trace_on:
            self.pull_trace()  # entries recorded after their step was printed
        return self.summary()

    # 1 ------------------------------------------------------------------------------
    def step1_unauthenticated(self) -> bool:
        body = json.dumps(self.initialize_payload(0)).encode()
        ex = self.send("1", "MCP request without a token", "POST", self.mcp_url,
                       headers={"Content-Type": "application/json", "Accept": MCP_ACCEPT},
                       body=body, expected=(401,))
        if ex.status is None:
            self.abort("the gateway does not answer")
            return False
        ch = parse_challenge(ex.header("www-authenticate"))
        ex.check(ch.get("scheme") == "bearer",
                 f"WWW-Authenticate is a Bearer challenge ({ex.header('www-authenticate')!r})")
        self.prm_url = ch.get("resource_metadata")
        ex.check(bool(self.prm_url), f"challenge names resource_metadata = {self.prm_url}")
        self.challenge_scope = ch.get("scope")
        if self.challenge_scope:
            self.say(f"info: the challenge asks for scope \"{self.challenge_scope}\"")
        self.print_checks(ex)
        if not self.prm_url:
            self.prm_url = f"{self.base}/.well-known/oauth-protected-resource" + \
                           urlsplit(self.mcp_url).path
            self.say(f"info: falling back to {self.prm_url}")
        return True

    # 2 ------------------------------------------------------------------------------
    def step2_prm(self) -> bool:
        ex = self.send("2", "protected resource metadata (RFC 9728)", "GET", self.prm_url,
                       headers={"Accept": "application/json"})
        doc = ex.json() if ex.status == 200 else None
        if not isinstance(doc, dict):
            ex.check(False, "the body is a JSON object")
            self.print_checks(ex)
            self.abort("no protected resource metadata")
            return False
        self.resource = doc.get("resource") or self.mcp_url
        ex.check(doc.get("resource") == self.mcp_url,
                 f"resource = {doc.get('resource')} (the MCP URL is {self.mcp_url})")
        servers = doc.get("authorization_servers") or []
        ex.check(bool(servers), f"authorization_servers = {servers}")
        self.issuer = servers[0] if servers else self.base
        self.print_checks(ex)
        return True

    # 3 ------------------------------------------------------------------------------
    def step3_as_metadata(self) -> bool:
        ex = self.send("3", "authorization server metadata (RFC 8414)", "GET",
                       as_metadata_url(self.issuer), headers={"Accept": "application/json"})
        doc = ex.json() if ex.status == 200 else None
        if not isinstance(doc, dict):
            ex.check(False, "the body is a JSON object")
            self.print_checks(ex)
            self.abort("no authorization server metadata")
            return False
        self.as_meta = doc
        ex.check(doc.get("issuer") == self.issuer,
                 f"issuer = {doc.get('issuer')} (expected {self.issuer})")
        methods = doc.get("code_challenge_methods_supported") or []
        ex.check("S256" in methods, f"code_challenge_methods_supported = {methods}")
        for name in ("authorization_endpoint", "token_endpoint", "registration_endpoint"):
            ex.check(bool(doc.get(name)), f"{name} = {doc.get(name)}")
        self.print_checks(ex)
        if not all(doc.get(n) for n in ("authorization_endpoint", "token_endpoint",
                                          "registration_endpoint")):
            self.abort("the metadata lacks an endpoint the flow needs")
            return False
        return True

    # 4 ------------------------------------------------------------------------------
    def step4_register(self) -> bool:
        reg = {"redirect_uris": [self.redirect_uri], "client_name": CLIENT_NAME,
               "token_endpoint_auth_method": "none",
               "grant_types": ["authorization_code", "refresh_token"],
               "response_types": ["code"]}
        ex = self.send("4", "dynamic client registration (RFC 7591)", "POST",
                       self.as_meta["registration_endpoint"],
                       headers={"Content-Type": "application/json",
                                "Accept": "application/json"},
                       body=json.dumps(reg).encode(), expected=(201,))
        doc = ex.json() if ex.status_ok else None
        self.client_id = doc.get("client_id") if isinstance(doc, dict) else None
        ex.check(bool(self.client_id), f"client_id = {self.client_id}")
        self.print_checks(ex)
        if not self.client_id:
            self.abort("registration gave no client_id")
            return False
        return True

    # 5 ------------------------------------------------------------------------------
    def step5_authorize(self) -> bool:
        self.verifier = b64url(os.urandom(32))
        self.red.add(self.verifier)
        challenge = b64url(hashlib.sha256(self.verifier.encode("ascii")).digest())
        state = secrets.token_urlsafe(12)
        scope = self.scope_arg or self.challenge_scope
        why = ("--scope" if self.scope_arg else
               "the WWW-Authenticate challenge" if self.challenge_scope else None)
        params = {"response_type": "code", "client_id": self.client_id,
                  "redirect_uri": self.redirect_uri, "code_challenge": challenge,
                  "code_challenge_method": "S256", "state": state, "resource": self.resource}
        if scope:
            params["scope"] = scope
        self.say("")
        self.say(f"info: PKCE S256: verifier {short(self.verifier)} (kept secret), challenge "
                 f"{challenge}; state {state}; scope "
                 + (f"\"{scope}\" (from {why})" if scope else "not sent (server default)"))
        endpoint = self.as_meta["authorization_endpoint"]
        sep = "&" if urlsplit(endpoint).query else "?"
        ex = self.send("5a", "authorization request (consent page)", "GET",
                       endpoint + sep + urlencode(params), headers={"Accept": "text/html"},
                       expected=(200, 302, 303))
        if ex.status in (302, 303):
            loc_query = dict(parse_qsl(urlsplit(ex.header("location") or "").query))
            if "error" in loc_query:
                self.say(f"info: the authorization server refused the request with "
                         f"error={loc_query['error']} (sent back to the redirect URI)")
            else:
                # A gateway started with --auto-approve skips the consent page.
                self.say("info: the gateway redirected right away (auto-approve): no consent "
                         "page")
            self.print_checks(ex)
            return self.check_redirect(ex, state)
        if ex.status != 200:
            self.print_checks(ex)
            self.abort("no consent page")
            return False
        forms = parse_forms(ex.response_body.decode("utf-8", errors="replace"))
        ex.check(len(forms) == 1, f"the consent page has exactly one form (found {len(forms)})")
        if not forms:
            self.print_checks(ex)
            self.abort("no form on the consent page")
            return False
        form = forms[0]
        hidden = {i.get("name"): i.get("value", "") for i in form["inputs"]
                  if i.get("type", "").lower() == "hidden" and i.get("name")}
        for v in hidden.values():
            self.red.add(v)
        decisions = [b.get("value") for b in form["buttons"] if b.get("name") == "decision"]
        ex.check("approve" in decisions, f"decision buttons = {decisions}")
        ex.check("csrf_token" in hidden and "request_id" in hidden,
                 f"hidden inputs = {sorted(hidden)}")
        self.print_checks(ex)
        action = urljoin(ex.url, form["attrs"].get("action") or "/consent")
        data = dict(hidden)
        data["decision"] = "approve"
        # A browser sends the page's origin with the form post; the gateway refuses
        # cross-site posts.
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(action))
        c = self.send("5b", "consent: approve", (form["attrs"].get("method") or "post").upper(),
                      action, headers={"Content-Type": "application/x-www-form-urlencoded",
                                       "Origin": origin},
                      body=urlencode(data).encode(), expected=(302, 303))
        return self.check_redirect(c, state)

    def check_redirect(self, ex: Exchange, state: str) -> bool:
        start = len(ex.checks)
        loc = ex.header("location") or ""
        parts = urlsplit(loc)
        q = dict(parse_qsl(parts.query, keep_blank_values=True))
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        ex.check(target == self.redirect_uri, f"redirects to {target or '(nothing)'}")
        if "error" in q:
            ex.check(False, f"error={q['error']} {q.get('error_description', '')}")
        self.code = q.get("code")
        if self.code:
            self.red.add(self.code)
        ex.check(bool(self.code), f"code = {short(self.code) if self.code else None}")
        ex.check(q.get("state") == state, f"state round-tripped ({q.get('state')})")
        ex.check(q.get("iss") == self.as_meta.get("issuer"),
                 f"iss = {q.get('iss')} (RFC 9207; expected {self.as_meta.get('issuer')})")
        self.print_checks(ex, start)
        if not self.code:
            self.abort("no authorization code")
            return False
        return True

    # 6 ------------------------------------------------------------------------------
    def token_request(self, step: str, title: str, data: dict) -> tuple[Exchange, dict | None]:
        ex = self.send(step, title, "POST", self.as_meta["token_endpoint"],
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "Accept": "application/json"},
                       body=urlencode(data).encode())
        doc = ex.json() if ex.status == 200 else None
        if isinstance(doc, dict):
            for k in ("access_token", "refresh_token"):
                self.red.add(doc.get(k))
            ex.check(bool(doc.get("access_token")), "access_token issued")
            ex.check(str(doc.get("token_type", "")).lower() == "bearer",
                     f"token_type = {doc.get('token_type')}")
            ex.check("no-store" in (ex.header("cache-control") or ""),
                     f"Cache-Control = {ex.header('cache-control')}")
            claims = jwt_claims(doc.get("access_token"))
            if claims:
                shown = {k: claims.get(k) for k in ("iss", "aud", "sub", "client_id", "scope",
                                                    "exp")}
                self.say(f"info: access token claims (unverified): {json.dumps(shown)}")
                ex.check(claims.get("aud") in (self.resource, [self.resource]),
                         f"aud = {claims.get('aud')}")
            return ex, doc
        return ex, None

    def step6_token(self) -> bool:
        data = {"grant_type": "authorization_code", "code": self.code,
                "redirect_uri": self.redirect_uri, "client_id": self.client_id,
                "code_verifier": self.verifier, "resource": self.resource}
        ex, doc = self.token_request("6", "token request (authorization_code + PKCE)", data)
        if doc:
            self.access_token = doc.get("access_token")
            self.refresh_token = doc.get("refresh_token")
            ex.check(bool(self.refresh_token), "refresh_token issued")
        self.print_checks(ex)
        if not self.access_token:
            self.abort("no access token")
            return False
        return True

    # 7 ------------------------------------------------------------------------------
    def initialize_payload(self, rpc_id: int) -> dict:
        return {"jsonrpc": "2.0", "id": rpc_id, "method": "initialize",
                "params": {"protocolVersion": CLIENT_PROTOCOL_VERSION, "capabilities": {},
                           "clientInfo": {"name": CLIENT_NAME, "version": "1.0"}}}

    def mcp_headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": MCP_ACCEPT,
             "Authorization": f"Bearer {self.access_token}"}
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        if self.protocol_version:
            h["MCP-Protocol-Version"] = self.protocol_version
        return h

    def rpc(self, step: str, title: str, method: str, params=None) -> tuple[Exchange, dict | None]:
        self.rpc_id += 1
        payload = {"jsonrpc": "2.0", "id": self.rpc_id, "method": method}
        if params is not None:
            payload["params"] = params
        if method == "initialize":
            payload = self.initialize_payload(self.rpc_id)
        ex = self.send(step, title, "POST", self.mcp_url, headers=self.mcp_headers(),
                       body=json.dumps(payload).encode(), want_rpc_id=self.rpc_id)
        msg = None
        if ex.status == 200:
            if ex.sse_messages is not None:
                msg = next((e["data"] for e in ex.sse_messages if isinstance(e["data"], dict)
                            and e["data"].get("id") == self.rpc_id), None)
            else:
                doc = ex.json()
                if isinstance(doc, list):
                    doc = next((m for m in doc if isinstance(m, dict)
                                and m.get("id") == self.rpc_id), None)
                msg = doc if isinstance(doc, dict) else None
            ex.check(msg is not None, "a JSON-RPC response with our id")
            if msg is not None and "error" in msg:
                ex.check(False, f"JSON-RPC error {json.dumps(msg['error'])}")
        return ex, (msg.get("result") if msg and isinstance(msg.get("result"), dict) else None)

    def step7_mcp(self) -> bool:
        ex, result = self.rpc("7a", "MCP initialize", "initialize")
        if result is not None:
            sid = ex.header("mcp-session-id")
            if sid:
                self.session_id = sid
                self.red.add(sid)
            self.protocol_version = result.get("protocolVersion") or CLIENT_PROTOCOL_VERSION
            info = result.get("serverInfo") or {}
            self.say(f"info: server {info.get('name')} {info.get('version')}, protocol "
                     f"{self.protocol_version}, session "
                     + (short(sid, 4) if sid else "none (stateless)"))
        self.print_checks(ex)
        if result is None:
            self.abort("initialize failed")
            return False

        n = self.send("7b", "MCP notifications/initialized", "POST", self.mcp_url,
                      headers=self.mcp_headers(),
                      body=json.dumps({"jsonrpc": "2.0",
                                       "method": "notifications/initialized"}).encode(),
                      expected=(200, 202, 204))
        self.print_checks(n)

        ex, result = self.rpc("7c", "MCP tools/list", "tools/list", {})
        tools = {t.get("name"): t for t in (result or {}).get("tools", []) if isinstance(t, dict)}
        if result is not None:
            ex.check("echo" in tools, f"tools = {sorted(tools)}")
        self.print_checks(ex)

        marker = "hello from debug_oauth2_flow " + secrets.token_hex(3)
        args = arguments_for(tools.get("echo") or {"inputSchema": {"properties": {
            "text": {"type": "string"}}}}, marker)
        ex, result = self.rpc("7d", "MCP tools/call echo", "tools/call",
                              {"name": "echo", "arguments": args})
        if result is not None:
            ex.check(not result.get("isError"), "the tool did not report an error")
            ex.check(marker in result_text(result), "the echo came back")
        self.print_checks(ex)
        return True

    # 8 ------------------------------------------------------------------------------
    def step8_refresh(self) -> bool:
        if not self.refresh_token:
            self.abort("no refresh token to use")
            return False
        data = {"grant_type": "refresh_token", "refresh_token": self.refresh_token,
                "client_id": self.client_id, "resource": self.resource}
        ex, doc = self.token_request("8", "token refresh (refresh_token, rotation)", data)
        if doc:
            new_refresh = doc.get("refresh_token")
            ex.check(bool(new_refresh) and new_refresh != self.refresh_token,
                     "a new refresh token (rotated)")
            ex.check(doc.get("access_token") != self.access_token, "a new access token")
        self.print_checks(ex)
        return True

    # -- summary ----------------------------------------------------------------------

    def summary(self) -> int:
        self.banner("Summary")
        rows = [("step", "name", "request", "expected", "status", "result", "backend", "proxy ms",
                 "client ms")]
        for ex in self.exchanges:
            path = urlsplit(ex.url).path
            backend = ",".join(str(e.get("backend")) for e in ex.trace) or (
                "?" if self.trace_on else "-")
            proxy_ms = ",".join(f"{e.get('duration_ms'):.2f}" if isinstance(
                e.get("duration_ms"), (int, float)) else str(e.get("duration_ms"))
                for e in ex.trace) or "-"
            rows.append((ex.step, STEP_NAMES.get(ex.step, ex.title), f"{ex.method} {path}",
                         "/".join(map(str, ex.expected)),
                         str(ex.status) if ex.status is not None else "none",
                         "ok" if ex.ok else "FAIL", backend, proxy_ms, f"{ex.elapsed_ms:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            self.say("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                self.say("  ".join("-" * w for w in widths))
        self.say("")
        self.say(f"trace: {self.trace_note}")
        failed = [ex for ex in self.exchanges if not ex.ok]
        if not failed and not self.aborted:
            self.say(f"RESULT: OK, all {len(self.exchanges)} requests of the flow behaved as "
                     f"expected")
            return 0
        for ex in failed:
            reasons = []
            if not ex.status_ok:
                got = ex.status if ex.status is not None else f"none, no response ({ex.error})"
                reasons.append(f"status {got} (expected {'/'.join(map(str, ex.expected))})")
            reasons += [text for ok, text in ex.checks if not ok]
            self.say(f"FAILED step {ex.step} ({ex.title}): " + "; ".join(reasons))
        if self.aborted:
            self.say(f"flow stopped early: {self.aborted}")
        first = failed[0] if failed else None
        self.say("RESULT: FAILED" + (f" at step {first.step} ({first.title})" if first else ""))
        return 1


def jwt_claims(token) -> dict | None:
    """The payload of a JWT, unverified (for display only)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Walk the MCP OAuth 2.1 flow against an mcp-oauth-gateway and show each "
                    "request, response and (with --debug-trace on the gateway) what its proxy "
                    "did. Secrets are never printed in full.")
    ap.add_argument("url", help="the gateway's public base URL (http://127.0.0.1:3002) or its "
                                "MCP URL (…/mcp)")
    ap.add_argument("--scope", help="scope to ask for (default: the scope named in the 401 "
                                    "challenge, else the server's default)")
    ap.add_argument("--no-trace", action="store_true",
                    help="do not read the gateway's /debug/requests trace")
    ap.add_argument("--redirect-uri", default=DEFAULT_REDIRECT_URI,
                    help=f"redirect URI to register (nothing listens on it; default "
                         f"{DEFAULT_REDIRECT_URI})")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    args = ap.parse_args(argv)
    global ELLIPSIS
    try:
        "…".encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        ELLIPSIS = "..."
    try:
        return FlowDebugger(args.url, args.scope, not args.no_trace, args.timeout,
                            args.redirect_uri).run()
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
