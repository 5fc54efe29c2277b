"""The binary as a process: readiness line, SIGTERM, exit code 2 on a busy port,
and the signing key persisted in the data directory."""

import socket

from flow import http_client
from gateway_proc import Gateway


def test_process_sigterm_exits_zero(tmp_path):
    gw = Gateway(tmp_path / "data").start()
    with http_client() as http:
        assert http.get(f"{gw.base}/.well-known/oauth-authorization-server").status_code == 200
    assert gw.stop() == 0, gw.log_tail()


def test_process_port_in_use_exits_2(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        addr = "127.0.0.1:%d" % busy.getsockname()[1]
        gw = Gateway(tmp_path / "data", addrs={"proxy": addr})
        gw.spawn()
        try:
            code = gw.wait_exit()
        finally:
            gw.stop()
        assert code == 2, gw.log_tail()


def test_process_all_four_listeners_are_distinct_loopback_ports(gateway):
    addrs = [gateway.proxy_addr, gateway.mcp_addr, gateway.routes_addr, gateway.jwks_addr]
    assert all(a.startswith("127.0.0.1:") for a in addrs), addrs
    assert len(set(addrs)) == 4
    assert all(int(a.rsplit(":", 1)[1]) > 0 for a in addrs)


def test_b2_signing_key_and_kid_persist_across_restart(gateway_factory, tmp_path):
    data = tmp_path / "persist"
    first = gateway_factory(data_dir=data)
    kid = first.signing_kid
    pem = first.signing_key_pem
    with http_client() as http:
        k1 = http.get(f"{first.base}/.well-known/jwks.json").json()["keys"]
    assert first.stop() == 0
    second = gateway_factory(data_dir=data)
    assert second.signing_kid == kid
    assert second.signing_key_pem == pem
    with http_client() as http:
        k2 = http.get(f"{second.base}/.well-known/jwks.json").json()["keys"]
    assert [k["kid"] for k in k2] == [k["kid"] for k in k1]
