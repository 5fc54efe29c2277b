"""The binary as a process: readiness line, SIGTERM, exit code 2 on a busy port,
and the signing key persisted in the data directory."""

import socket

import pytest

from flow import http_client
from gateway_proc import Gateway


def test_process_sigterm_exits_zero(tmp_path):
    gw = Gateway(tmp_path / "data").start()
    with http_client() as http:
        assert http.get(f"{gw.base}/.well-known/oauth-authorization-server").status_code == 200
    assert gw.stop() == 0, gw.log_tail()


@pytest.mark.parametrize("listener", ["proxy", "mcp"])
def test_a_taken_port_exits_2_naming_the_setting_that_moves_it(tmp_path, listener):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        addr = "127.0.0.1:%d" % busy.getsockname()[1]
        gw = Gateway(tmp_path / "data", addrs={listener: addr})
        gw.spawn()
        try:
            code = gw.wait_exit()
        finally:
            gw.stop()
        assert code == 2, gw.log_tail()
        line = gw.log_tail()
        assert f"cannot listen on {addr} ({listener})" in line, line
        env = f"MCP_GATEWAY_{listener.upper()}_ADDR"
        assert f"{listener}_addr (--{listener}-addr, {env})" in line, line


def test_an_upstream_on_the_gateways_own_listener_is_refused_naming_it(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gw = Gateway(tmp_path / "data", ["--upstream", f"http://localhost:{port}/mcp"],
                 addrs={"mcp": f"127.0.0.1:{port}"})
    gw.spawn()
    try:
        code = gw.wait_exit()
    finally:
        gw.stop()
    assert code == 2, gw.log_tail()
    assert f"is the gateway's own mcp_addr (127.0.0.1:{port})" in gw.log_tail(), gw.log_tail()


def test_process_all_four_listeners_are_distinct_loopback_ports(gateway):
    addrs = [gateway.proxy_addr, gateway.mcp_addr, gateway.routes_addr, gateway.jwks_addr]
    assert all(a.startswith("127.0.0.1:") for a in addrs), addrs
    assert len(set(addrs)) == 4
    assert all(int(a.rsplit(":", 1)[1]) > 0 for a in addrs)


def test_signing_key_and_kid_persist_across_restart(gateway_factory, tmp_path):
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


def _exit_of(tmp_path, *args):
    gw = Gateway(tmp_path / "data", extra_args=list(args))
    gw.spawn()
    try:
        code = gw.wait_exit()
    finally:
        gw.stop()
    return code, gw.log_lines()


def test_public_url_without_sign_in_refuses_to_start_with_one_line(tmp_path):
    # Anyone reaching a public gateway would approve consent as the local user.
    code, lines = _exit_of(tmp_path, "--public-url", "https://mcp.example.com")
    assert code == 2, lines
    errors = [line for line in lines if "mcp-oauth-gateway:" in line]
    assert len(errors) == 1, lines
    assert "[[users]]" in errors[0] and "allow_anonymous_consent" in errors[0], errors


def test_auto_approve_off_loopback_refuses_to_start(tmp_path):
    code, lines = _exit_of(tmp_path, "--public-url", "https://mcp.example.com",
                           "--auto-approve")
    assert code == 2, lines
    assert any("auto_approve" in line for line in lines), lines


def test_anonymous_consent_opt_in_starts_and_warns(tmp_path):
    gw = Gateway(tmp_path / "data", extra_args=[
        "--public-url", "https://mcp.example.com", "--allow-anonymous-consent"]).start()
    try:
        assert any("WARN" in line and "allow_anonymous_consent" in line
                   for line in gw.log_lines()), gw.log_tail()
    finally:
        assert gw.stop() == 0, gw.log_tail()


def test_a_bad_trusted_proxy_refuses_to_start_naming_the_key(tmp_path):
    code, lines = _exit_of(tmp_path, "--trusted-proxy", "10.0.0.0/8",
                           "--trusted-proxy", "lb.internal")
    assert code == 2, lines
    errors = [line for line in lines if "mcp-oauth-gateway:" in line]
    assert len(errors) == 1, lines
    assert "trusted_proxies" in errors[0] and "lb.internal" in errors[0], errors


def test_trusted_proxies_flags_start(tmp_path):
    gw = Gateway(tmp_path / "data", extra_args=[
        "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1/128"]).start()
    assert gw.stop() == 0, gw.log_tail()


def test_version_names_the_release_and_the_git_revision():
    import re
    import subprocess

    from gateway_proc import REPO_ROOT, gateway_binary

    out = subprocess.run([str(gateway_binary()), "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    m = re.fullmatch(r"mcp-oauth-gateway (\d+\.\d+\.\d+) \(([0-9a-f]{12}|unknown)\)\n", out.stdout)
    assert m, out.stdout
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    if head.returncode == 0:  # built from this checkout: the revision it was built from
        assert head.stdout.startswith(m.group(2)), (m.group(2), head.stdout)
