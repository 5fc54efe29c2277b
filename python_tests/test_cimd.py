"""Client ID Metadata Documents through the real gateway.

A tiny document server (http.server on 127.0.0.1, port 0, in a thread) serves JSON
documents whose `client_id` is their own URL, plus broken variants. The gateway runs
with `cimd_allow_loopback_http = true` so that it may fetch from loopback over http.
The server counts the requests per path, so the tests can tell a cache hit, a refused
redirect and a refusal before any connection from a fetch.
"""

from __future__ import annotations

import collections
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flow import (REDIRECT_URI, McpClient, arguments_for, authorize_and_consent,
                  authorize_params, exchange_code, get_authorize, pkce_s256, refresh,
                  result_text, tokens_from, unverified_claims)

CLIENT_NAME = "Pytest CIMD Client"
MAX_BYTES = 5 * 1024


class DocServer:
    """Serves client metadata documents on 127.0.0.1:<any port> and counts hits per path."""

    def __init__(self):
        self.hits: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                status, headers, body = server.respond(path)
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="cimd-docs",
                                       daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits[path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=30)

    # -- documents -----------------------------------------------------------

    def doc(self, path: str, **changes) -> dict:
        d = {
            "client_id": self.url(path),
            "client_name": CLIENT_NAME,
            "client_uri": "https://example.com",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "mcp:read",
        }
        d.update(changes)
        return d

    def respond(self, path: str):
        def as_json(doc, ctype="application/json", cache="public, max-age=60", length=True):
            body = json.dumps(doc).encode()
            headers = [("Content-Type", ctype)]
            if cache:
                headers.append(("Cache-Control", cache))
            if length:
                headers.append(("Content-Length", str(len(body))))
            return 200, headers, body

        if path in ("/good", "/good-2"):
            return as_json(self.doc(path))
        if path == "/mismatch":
            return as_json(self.doc(path, client_id=self.url("/other")))
        if path == "/redirect":
            return 302, [("Location", "/good"), ("Content-Length", "0")], b""
        if path == "/html":
            return as_json(self.doc(path), ctype="text/html")
        if path == "/secret":
            return as_json(self.doc(path, client_secret="s3cret-value"), cache=None)
        if path == "/big":
            return as_json(self.doc(path, client_name="x" * (6 * 1024)))
        if path == "/big-unsized":
            # Valid JSON padded past the limit, without Content-Length (read until close).
            body = json.dumps(self.doc(path)).encode() + b" " * (6 * 1024)
            return 200, [("Content-Type", "application/json")], body
        if path == "/bad-redirect-uri":
            return as_json(self.doc(path, redirect_uris=["http://evil.example.com/cb"]))
        return 404, [("Content-Type", "text/plain"), ("Content-Length", "9")], b"not found"


@pytest.fixture
def docs():
    server = DocServer()
    yield server
    server.close()


@pytest.fixture
def cimd_gateway(gateway_factory, tmp_path):
    cfg = tmp_path / "cimd.toml"
    cfg.write_text("cimd_allow_loopback_http = true\n")
    return gateway_factory("--config", str(cfg))


def assert_refused_page(resp, *, secret: str | None = None):
    assert resp.status_code == 400, f"{resp.status_code} {resp.headers} {resp.text[:500]}"
    assert "location" not in resp.headers, "never redirected to an untrusted redirect_uri"
    assert resp.headers.get("content-type", "").startswith("text/html")
    assert "<form" not in resp.text
    if secret:
        assert secret not in resp.text


def authorize(http, gw, client_id: str, **kw):
    params = authorize_params(client_id, pkce_s256(), base=gw.base, **kw)
    return get_authorize(http, gw.base, params)


# -- tests -----------------------------------------------------------------------

def test_metadata_advertises_cimd(cimd_gateway, http):
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        r = http.get(f"{cimd_gateway.base}{path}")
        assert r.status_code == 200, path
        assert r.json().get("client_id_metadata_document_supported") is True, path


def test_url_client_completes_the_whole_flow(cimd_gateway, docs, http):
    gw = cimd_gateway
    client_id = docs.url("/good")

    # The consent page names the client from its document and shows the document's host.
    page = authorize(http, gw, client_id)
    assert page.status_code == 200, page.text[:500]
    assert CLIENT_NAME in page.text
    assert 'id="client-host">127.0.0.1<' in page.text, "the document's host is shown"
    assert 'id="redirect-host">127.0.0.1<' in page.text
    assert docs.count("/good") == 1

    grant = authorize_and_consent(http, gw.base, client_id)
    assert grant.code and grant.redirect_query.get("iss") == gw.base
    tokens = tokens_from(exchange_code(http, gw.base, grant), client_id)
    assert tokens.scope == "mcp:read", "the document's scope is the default"
    claims = unverified_claims(tokens.access_token)
    assert claims["client_id"] == client_id
    assert claims["aud"] == gw.mcp_url
    assert tokens.refresh_token

    refreshed = tokens_from(refresh(http, gw.base, client_id, tokens.refresh_token), client_id)
    assert refreshed.refresh_token != tokens.refresh_token
    assert refreshed.access_token != tokens.access_token
    assert unverified_claims(refreshed.access_token)["client_id"] == client_id

    mcp = McpClient(http, gw.base, refreshed.access_token)
    assert mcp.initialize().status == 200
    tools = mcp.tools_by_name()
    assert "echo" in tools
    assert "add_note" not in tools, "mcp:read only"
    marker = "cimd-echo-7f3a"
    out = mcp.call_tool("echo", arguments_for(tools["echo"], text=marker)).result
    assert marker in result_text(out)

    # Authorize, consent, token and refresh all used the cached document (max-age=60).
    assert docs.count("/good") == 1, docs.hits
    assert docs.total() == 1, docs.hits


@pytest.mark.parametrize("path", ["/mismatch", "/redirect", "/html", "/secret", "/big",
                                  "/big-unsized", "/bad-redirect-uri", "/missing"])
def test_bad_documents_get_a_400_page_and_no_redirect(cimd_gateway, docs, http, path):
    resp = authorize(http, cimd_gateway, docs.url(path))
    assert_refused_page(resp, secret="s3cret-value")
    assert 'id="error">invalid_client<' in resp.text, resp.text[:800]
    assert "x" * 100 not in resp.text, "no document content in the page"
    assert docs.count(path) == 1, f"one fetch of {path}: {docs.hits}"
    assert docs.count("/good") == 0, "the redirect was not followed"
    assert docs.total() == 1
    # Refusals are not cached: the next attempt fetches again.
    assert_refused_page(authorize(http, cimd_gateway, docs.url(path)))
    assert docs.count(path) == 2


def test_token_endpoint_refuses_a_bad_document(cimd_gateway, docs, http):
    r = http.post(f"{cimd_gateway.base}/token", data={
        "grant_type": "authorization_code", "code": "nonexistent", "client_id": docs.url("/secret"),
        "redirect_uri": REDIRECT_URI, "code_verifier": "v" * 43})
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("invalid_client", "invalid_grant"), r.text
    assert "s3cret-value" not in r.text


@pytest.mark.parametrize("redirect_uri", [
    "http://127.0.0.1:47113/elsewhere",
    "http://localhost.evil.example/callback",
    "https://evil.example.com/callback",
])
def test_redirect_uri_not_in_the_document_gets_a_400_page(cimd_gateway, docs, http,
                                                             redirect_uri):
    resp = authorize(http, cimd_gateway, docs.url("/good"), redirect_uri=redirect_uri)
    assert_refused_page(resp)
    assert "evil" not in resp.headers.get("location", "")
    assert docs.count("/good") == 1


def test_document_is_cached_within_max_age(cimd_gateway, docs, http):
    gw = cimd_gateway
    first = authorize(http, gw, docs.url("/good"))
    assert first.status_code == 200
    assert docs.count("/good") == 1
    second = authorize(http, gw, docs.url("/good"))
    assert second.status_code == 200
    assert CLIENT_NAME in second.text
    assert docs.count("/good") == 1, "within max-age: no second fetch"
    # The cache is per document URL.
    third = authorize(http, gw, docs.url("/good-2"))
    assert third.status_code == 200
    assert docs.count("/good-2") == 1
    assert docs.total() == 2


def test_loopback_document_refused_without_the_allowance(gateway_factory, docs, http):
    strict = gateway_factory()
    meta = http.get(f"{strict.base}/.well-known/oauth-authorization-server").json()
    assert meta.get("client_id_metadata_document_supported") is True
    for client_id in (docs.url("/good"), f"http://localhost:{docs.port}/good"):
        resp = authorize(http, strict, client_id)
        assert_refused_page(resp)
    r = http.post(f"{strict.base}/token", data={
        "grant_type": "authorization_code", "code": "x", "client_id": docs.url("/good"),
        "redirect_uri": REDIRECT_URI, "code_verifier": "v" * 43})
    assert r.status_code in (400, 401), r.text
    assert docs.total() == 0, f"no request reached the document server: {docs.hits}"
