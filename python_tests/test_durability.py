"""A crash loses at most the request in flight: the gateway is killed with SIGKILL (no
shutdown path runs) and started again on the same data directory, and everything it had
answered before is still true.

The public URL is pinned, so the issuer and the resource stay the same across the two
processes even though each binds new ports.
"""

from __future__ import annotations

import os
import signal

from flow import (McpClient, authorize_and_consent, exchange_code, get_authorize,
                  authorize_params, pkce_s256, refresh, register_client_id, token_request,
                  tokens_from)

PUBLIC = "http://127.0.0.1:9"
RESOURCE = f"{PUBLIC}/mcp"


def _mcp_ok(http, base, token) -> bool:
    return McpClient(http, base, token).initialize().status == 200


def test_sigkill_then_restart_keeps_clients_consents_codes_grants_and_revocations(
        gateway_factory, http, tmp_path):
    data = tmp_path / "state"
    gw = gateway_factory("--public-url", PUBLIC, data_dir=data)
    cid = register_client_id(http, gw.base)
    grant = authorize_and_consent(http, gw.base, cid, resource=RESOURCE)
    t = tokens_from(exchange_code(http, gw.base, grant, resource=RESOURCE), cid)
    assert _mcp_ok(http, gw.base, t.access_token)
    # A second grant whose refresh token is revoked, and a code issued but not redeemed.
    other = tokens_from(exchange_code(
        http, gw.base, authorize_and_consent(http, gw.base, cid, resource=RESOURCE),
        resource=RESOURCE), cid)
    r = http.post(f"{gw.base}/revoke", data={"token": other.refresh_token, "client_id": cid})
    assert r.status_code == 200
    pending_code = authorize_and_consent(http, gw.base, cid, resource=RESOURCE)

    os.kill(gw.proc.pid, signal.SIGKILL)
    assert gw.wait_exit() == -signal.SIGKILL

    gw2 = gateway_factory("--public-url", PUBLIC, data_dir=data)
    # Access tokens issued before still validate (same key, same issuer).
    assert _mcp_ok(http, gw2.base, t.access_token)
    # The code issued before the crash is still redeemable, once.
    late = exchange_code(http, gw2.base, pending_code, resource=RESOURCE)
    assert late.status_code == 200, late.text
    # The refresh token refreshes; the revoked one stays revoked.
    nt = tokens_from(refresh(http, gw2.base, cid, t.refresh_token), cid)
    assert _mcp_ok(http, gw2.base, nt.access_token)
    r = refresh(http, gw2.base, cid, other.refresh_token)
    assert (r.status_code, r.json().get("error")) == (400, "invalid_grant"), r.text
    # The client is still registered and its consent remembered: nothing is asked twice.
    params = authorize_params(cid, pkce_s256(), base=gw2.base, resource=RESOURCE)
    r = get_authorize(http, gw2.base, params)
    assert r.status_code in (302, 303), f"asked again: {r.status_code} {r.text[:300]}"
    assert "code=" in r.headers["location"]
    # And an unknown client is still unknown (nothing invented either).
    r = token_request(http, gw2.base, {"grant_type": "refresh_token",
                                       "refresh_token": nt.refresh_token,
                                       "client_id": "never-registered"})
    assert r.status_code in (400, 401) and r.json()["error"] in ("invalid_client",
                                                                  "invalid_grant")
