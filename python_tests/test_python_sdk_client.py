"""The official Python MCP SDK client (`mcp` on PyPI, pinned in requirements.txt)
completes the whole OAuth flow against the gateway with nothing but the MCP URL:
401 challenge, protected resource metadata, authorization server metadata, dynamic
client registration, authorize + consent (approved headlessly with httpx, the way a
person pressing Approve would), code exchange with PKCE, then initialize, tools/list
and tools/call through the gateway's public proxy URL.

The SDK picks the scope from the 401 challenge (`scope="mcp:read"`), so the listing
must show `echo` and hide `add_note` (which needs mcp:write).
"""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
from mcp.client import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from flow import REDIRECT_URI, parse_consent_form, unverified_claims

FLOW_TIMEOUT_SECONDS = 60.0


class MemoryTokenStorage(TokenStorage):
    """In-memory TokenStorage (the SDK's protocol): nothing touches the disk."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class HeadlessConsent:
    """redirect_handler + callback_handler for OAuthClientProvider.

    redirect_handler opens the authorization URL like a browser (GET, keeping cookies),
    reads the consent form's hidden request_id / csrf_token, posts decision=approve
    without following the redirect, and keeps code, state and iss from the Location
    header. callback_handler hands them to the SDK.
    """

    def __init__(self, base: str, redirect_uri: str) -> None:
        self.base = base
        self.redirect_uri = redirect_uri
        self.authorization_urls: list[str] = []
        self.consent_pages: list[str] = []
        self._result: AuthorizationCodeResult | None = None

    async def redirect_handler(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        async with httpx.AsyncClient(follow_redirects=False, timeout=30.0) as browser:
            page = await browser.get(authorization_url)
            assert page.status_code == 200, \
                f"/authorize: {page.status_code} {page.headers} {page.text[:500]}"
            self.consent_pages.append(page.text)
            form = parse_consent_form(page.text)
            assert form.method == "post", form
            assert "approve" in form.decisions, form.decisions
            for field in ("request_id", "csrf_token"):
                assert form.hidden.get(field), f"consent form lacks {field}: {form.hidden}"
            action = form.action or "/consent"
            url = action if action.startswith("http") else f"{self.base}{action}"
            answer = await browser.post(url, data={**form.hidden, "decision": "approve"})
        assert answer.status_code in (302, 303), \
            f"/consent: {answer.status_code} {answer.text[:500]}"
        location = answer.headers.get("location", "")
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == self.redirect_uri, location
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert "error" not in query, query
        self._result = AuthorizationCodeResult(code=query.get("code", ""),
                                               state=query.get("state"), iss=query.get("iss"))

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self._result is not None, "callback_handler called before redirect_handler"
        result, self._result = self._result, None
        return result


async def _run_sdk_client(base: str) -> dict:
    mcp_url = f"{base}/mcp"
    storage = MemoryTokenStorage()
    consent = HeadlessConsent(base, REDIRECT_URI)
    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="python-sdk e2e",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=consent.redirect_handler,
        callback_handler=consent.callback_handler,
    )
    marker = "py-sdk-" + secrets.token_hex(6)
    async with httpx2.AsyncClient(auth=provider, timeout=30.0) as http_client:
        transport = streamable_http_client(mcp_url, http_client=http_client)
        async with Client(transport, client_info=None) as client:
            tools = await client.list_tools()
            names = sorted(t.name for t in tools.tools)
            echo = next((t for t in tools.tools if t.name == "echo"), None)
            assert echo is not None, f"echo missing from {names}"
            props = (echo.input_schema or {}).get("properties") or {}
            arg = next(iter(props), "message")
            result = await client.call_tool("echo", {arg: marker})
            protocol_version = client.protocol_version
    return {
        "names": names,
        "result": result,
        "marker": marker,
        "storage": storage,
        "consent": consent,
        "protocol_version": protocol_version,
    }


def test_python_sdk_client_oauth_flow_and_tools(gateway):
    out = asyncio.run(asyncio.wait_for(_run_sdk_client(gateway.base), FLOW_TIMEOUT_SECONDS))
    storage: MemoryTokenStorage = out["storage"]
    consent: HeadlessConsent = out["consent"]

    # The SDK went through discovery, registration and one consent.
    assert storage.client_info is not None and storage.client_info.client_id
    assert len(consent.authorization_urls) == 1, consent.authorization_urls
    auth_url = urlsplit(consent.authorization_urls[0])
    assert f"{auth_url.scheme}://{auth_url.netloc}{auth_url.path}" == f"{gateway.base}/authorize"
    params = {k: v[0] for k, v in parse_qs(auth_url.query).items()}
    assert params["client_id"] == storage.client_info.client_id
    assert params["code_challenge_method"] == "S256"
    assert params.get("scope") == "mcp:read", params  # the 401 challenge's scope
    assert params.get("resource") in (None, f"{gateway.base}/mcp"), params

    # Tokens the gateway issued to it: a JWT bound to this resource with the scope asked for.
    assert storage.tokens is not None and storage.tokens.access_token
    claims = unverified_claims(storage.tokens.access_token)
    assert claims["aud"] == f"{gateway.base}/mcp", claims
    assert claims["client_id"] == storage.client_info.client_id
    assert claims["scope"].split() == ["mcp:read"], claims
    assert storage.tokens.refresh_token

    # tools/list filtered by scope, and the echo call went through.
    names = out["names"]
    assert "echo" in names and "whoami" in names, names
    assert "add_note" not in names, names
    result = out["result"]
    assert not result.is_error, result
    texts = [getattr(c, "text", "") for c in result.content]
    assert any(out["marker"] in t for t in texts), result
    assert out["protocol_version"], "no protocol version negotiated"
