"""Three replicas on one PostgreSQL behind nginx: an OAuth flow and an MCP session through
the balancer, and a replica that is killed and comes back.
"""

from __future__ import annotations

import pytest

from flow import (McpClient, authorize_params, full_flow, get_authorize, http_client,
                  pkce_s256, register_client_id)




@pytest.fixture
def http():
    with http_client() as c:
        yield c


def metadata(http, base: str) -> dict:
    r = http.get(f"{base}/.well-known/oauth-authorization-server")
    assert r.status_code == 200, f"{base}: {r.status_code} {r.text[:300]}"
    return r.json()


def test_an_oauth_flow_through_nginx_over_three_replicas(fleet, http):
    f = fleet(3)
    assert metadata(http, f.url)["issuer"] == f.url
    for gw in f.replicas:  # each replica, asked directly, names the balancer
        assert metadata(http, gw.base)["issuer"] == f.url

    # Registration, authorization, consent and the token request go round-robin over the
    # replicas: each step finds what another replica stored.
    tokens = full_flow(http, f.url)
    # The token works on every replica, whichever signed it.
    for gw in f.replicas:
        direct = McpClient(http, gw.base, tokens.access_token).initialize()
        assert direct.status == 200, f"{gw.base}: {direct.status} {direct.text[:300]}"


def test_mcp_sessions_opened_through_nginx_keep_working(fleet, http):
    """An `initialize` carries no Mcp-Session-Id, so nginx sends it round-robin; every
    later request of the session carries the id and nginx hashes it to one replica. With
    three replicas that is another replica than the one that opened the session two times
    in three, so six sessions find out whether a replica serves a session another opened."""
    f = fleet(3)
    tokens = full_flow(http, f.url)
    broken = []
    for n in range(6):
        mcp = McpClient(http, f.url, tokens.access_token)
        try:
            init = mcp.initialize()
            assert init.status == 200 and init.message and "result" in init.message, \
                f"initialize: {init.status} {init.text[:200]}"
            for _ in range(2):
                reply = mcp.list_tools()
                assert reply.status == 200 and reply.message and "result" in reply.message, \
                    f"tools/list: {reply.status} {reply.text[:200]}"
        except AssertionError as e:
            broken.append(f"session {n} ({mcp.session_id}): {e}")
    assert not broken, (f"{len(broken)} of 6 MCP sessions opened through nginx broke on a "
                        "later request (hashed to a replica that did not open them):\n"
                        + "\n".join(broken))


def test_a_killed_replica_is_skipped_and_comes_back_on_its_port(fleet, http):
    f = fleet(3)
    client_id = register_client_id(http, f.url)

    f.kill(1)
    for _ in range(9):  # POSTs: nginx retries a refused connection on another replica
        register_client_id(http, f.url)
    assert metadata(http, f.url)["issuer"] == f.url

    port = f.backends[1]
    gw = f.restart(1)
    assert gw.proxy_addr == port
    assert metadata(http, gw.base)["issuer"] == f.url
    # The restarted replica (fresh data dir) knows a client registered before it died.
    params = authorize_params(client_id, pkce_s256(), base=f.url)
    r = get_authorize(http, gw.base, params)
    assert r.status_code in (200, 302, 303), f"/authorize: {r.status_code} {r.text[:300]}"
    # And nginx sends it traffic again once it forgets the failure (a reload does that now).
    f.nginx.reload(f.backends)
    with http_client() as c:
        assert metadata(c, f.url)["issuer"] == f.url
