"""The operator's side: values as an operator writes them, and logs a machine can read.

- Enum flags take any case (`--signing-alg ES256` as the README spells it, `--store SQLite`).
- JSON log lines carry plain values: an audit event's `sub` is `local-user`, not the
  debug form of an optional (`Some("local-user")`); each names its client address and
  request id.
- The access log and W3C trace context.
"""

from __future__ import annotations

import json

from flow import full_flow, unverified_header


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.removeprefix("[stderr] ").strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def test_enum_flags_take_any_case_and_json_logs_carry_plain_values(gateway_factory, http,
                                                                      tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = gateway_factory("--signing-alg", "RS256", "--store", "Memory",
                         "--audit-log", str(audit))
    tokens = full_flow(http, gw.base)
    assert unverified_header(tokens.access_token)["alg"] == "RS256"
    gw.stop()
    events = [e for e in json_lines(audit.read_text())
              if e.get("fields", {}).get("event") in ("code_issued", "consent_granted",
                                                       "client_registered")]
    assert {e["fields"]["event"] for e in events} >= {"code_issued", "client_registered"}, events
    for e in events:
        for key, value in e["fields"].items():
            assert not str(value).startswith(("Some(", "None")), f"{key}={value!r} in {e}"
    issued = next(e for e in events if e["fields"]["event"] == "code_issued")
    assert issued["fields"]["sub"] == "local-user"
    # Each security event names where it came from and which request it was.
    for e in events:
        assert e["fields"]["source"] == "127.0.0.1", e
        assert len(e["fields"]["request_id"]) >= 8, e


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_access_log_and_trace_context_reach_the_log_and_the_upstream(gateway_factory, http,
                                                                     tmp_path):
    from test_sso import RecordingUpstream
    up = RecordingUpstream()
    try:
        cfg = tmp_path / "gw.toml"
        cfg.write_text("access_log = true\n")
        gw = gateway_factory("--config", str(cfg), "--upstream", up.url)
        tokens = full_flow(http, gw.base)
        from flow import McpClient
        mcp = McpClient(http, gw.base, tokens.access_token)
        r = mcp.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}},
            extra_headers={"traceparent": TRACEPARENT, "X-Request-Id": "req-trace-1"})
        assert r.status == 200
        assert up.headers[-1].get("traceparent") == TRACEPARENT, "propagated to the upstream"
        line = gw.wait_for_log("request_id=req-trace-1 ")
        for part in ("method=POST", "path=/mcp", "route=\"mcp\"", "status=200", "client=127.0.0.1",
                     "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"):
            assert part in line, f"{part} not in {line}"
        # A malformed traceparent is dropped, not passed on.
        mcp.post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                 extra_headers={"traceparent": "00-zz-00f067aa0ba902b7-01"})
        assert "traceparent" not in up.headers[-1]
    finally:
        up.close()


def test_hash_password_on_a_terminal_prompts_without_echo():
    """On a terminal, `hash-password` prompts and the typed password is not echoed."""
    import os
    import pty
    import select

    from gateway_proc import gateway_binary

    def read_some(fd, timeout) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(fd, 4096)
        except OSError:  # the child closed its terminal
            return b""

    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execv(str(gateway_binary()), [str(gateway_binary()), "hash-password"])
    seen = b""
    try:
        while b"Password" not in seen:
            chunk = read_some(fd, 30)
            assert chunk, f"no prompt on the terminal: {seen!r}"
            seen += chunk
        # Type only once the program has turned echo off (as a person would, after the
        # prompt): the terminal's own flags say when.
        import termios
        import time
        deadline = time.monotonic() + 10
        while termios.tcgetattr(fd)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "echo never turned off"
            select.select([], [], [], 0.005)
        os.write(fd, b"s3cret-on-a-tty\n")
        while b"$argon2" not in seen:
            chunk = read_some(fd, 60)
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"$argon2" in seen, seen
    assert b"s3cret-on-a-tty" not in seen, f"the password was echoed: {seen!r}"


def test_the_license_file_is_the_license_cargo_toml_names():
    import tomllib

    from gateway_proc import REPO_ROOT

    declared = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["package"]["license"]
    assert declared == "Apache-2.0"
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"], text[:200]
    assert "END OF TERMS AND CONDITIONS" in text
