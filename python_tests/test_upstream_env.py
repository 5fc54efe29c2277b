"""`--upstream-cmd` children get a clean environment: PATH, HOME, LANG and TZ when the
gateway has them, what `upstream_env.pass` names (when set) and what `upstream_env.set`
sets — never the gateway's MCP_GATEWAY_* variables or anything else of its environment.

The child is env_report_server.py, a stdlib-only stdio MCP server whose one tool answers
with the environment it was started with.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from pathlib import Path

from flow import McpClient, full_flow, result_text

SERVER = Path(__file__).resolve().parent / "env_report_server.py"
BASE = ("PATH", "HOME", "LANG", "TZ")


def test_upstream_cmd_child_gets_only_the_allowed_environment(gateway_factory, http, tmp_path,
                                                              monkeypatch):
    # What the gateway process will see: a secret of its own, an unrelated variable, and
    # one the configuration passes through.
    monkeypatch.setenv("MCP_GATEWAY_TEST_SECRET", "gw-secret-" + secrets.token_hex(8))
    monkeypatch.setenv("UNRELATED_GATEWAY_VAR", "unrelated")
    monkeypatch.setenv("PASSED_THROUGH", "passed")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[upstream_env]\n"
        'pass = ["PASSED_THROUGH", "NOT_SET_ANYWHERE"]\n'
        "[upstream_env.set]\n"
        'SET_BY_CONFIG = "configured"\n'
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(SERVER))}"
    gw = gateway_factory("--config", str(config), "--upstream-cmd", command)

    tokens = full_flow(http, gw.base)
    mcp = McpClient(http, gw.base, tokens.access_token)
    assert mcp.initialize().status == 200
    env = json.loads(result_text(mcp.call_tool("environment", {}).result))

    expected = {name for name in BASE if name in os.environ}
    expected |= {"PASSED_THROUGH", "SET_BY_CONFIG"}
    assert set(env) == expected, f"the child got {sorted(env)}"
    assert env["PASSED_THROUGH"] == "passed"
    assert env["SET_BY_CONFIG"] == "configured"
    for name in expected & set(BASE):
        assert env[name] == os.environ[name]


def test_upstream_env_naming_a_gateway_variable_is_refused_at_start(gateway_factory, tmp_path):
    from gateway_proc import Gateway

    config = tmp_path / "gateway.toml"
    config.write_text('[upstream_env]\npass = ["MCP_GATEWAY_SHARED_SECRET"]\n')
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(SERVER))}"
    gw = Gateway(tmp_path / "data", ["--config", str(config), "--upstream-cmd", command])
    gw.spawn()
    try:
        code = gw.wait_exit()
    finally:
        gw.stop()
    assert code != 0
    assert "MCP_GATEWAY_SHARED_SECRET" in gw.log_tail(), gw.log_tail()
