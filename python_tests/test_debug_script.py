"""scripts/debug_oauth2_flow.py against the real gateway, with and without --debug-trace,
and the /debug/requests endpoint being absent when the flag is off.

The script runs as a subprocess (as a newcomer would run it); its output must name every
step, show the backends from the proxy trace, and never contain a full token, code,
verifier or CSRF token."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "debug_oauth2_flow.py"
SCRIPT_TIMEOUT_SECONDS = 120

STEP_TITLES = {
    "1": "MCP request without a token",
    "2": "protected resource metadata",
    "3": "authorization server metadata",
    "4": "dynamic client registration",
    "5a": "authorization request",
    "5b": "consent: approve",
    "6": "token request (authorization_code",
    "7a": "MCP initialize",
    "7b": "MCP notifications/initialized",
    "7c": "MCP tools/list",
    "7d": "MCP tools/call echo",
    "8": "token refresh",
}
# Which backend the proxy must pick for each step.
STEP_BACKENDS = {"1": "mcp", "2": "routes", "3": "routes", "4": "routes", "5a": "routes",
                 "5b": "routes", "6": "routes", "7a": "mcp", "7b": "mcp", "7c": "mcp",
                 "7d": "mcp", "8": "routes"}

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")
CODE_RE = re.compile(r"(?<![A-Za-z_])code=([^&\s\"'<>]*)")
# `request_id` as a form field is the pending consent's id (a capability); in a JSON error
# body it is the X-Request-Id, which is meant to be quoted in bug reports.
SECRET_FIELD_RE = re.compile(
    r"(access_token|refresh_token|code_verifier|csrf_token|client_secret)"
    r"(?:\"?\s*[:=]\s*\"?)([^\"&\s,]*)|(request_id)=([^&\s,]*)")
BEARER_RE = re.compile(r"(?i)authorization:\s*bearer\s+(\S+)")
TRACE_LINE_RE = re.compile(r"^proxy trace #(\d+): (\S+) (\S+) -> backend=(\S+) \((\S+)\) "
                           r"status=(\d+) in ([0-9.]+) ms$", re.M)
SUMMARY_ROW_RE = re.compile(r"^(1|2|3|4|5a|5b|6|7a|7b|7c|7d|8)\s{2,}(.*)$", re.M)


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", NO_COLOR="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, encoding="utf-8", env=env,
                          timeout=SCRIPT_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    # Shown by pytest when a test fails.
    print(f"---- {SCRIPT.name} {' '.join(args)} -> exit {proc.returncode} ----")
    print(proc.stdout)
    if proc.stderr:
        print("---- stderr ----")
        print(proc.stderr)
    return proc


def summary_section(out: str) -> str:
    assert "== Summary" in out, "no summary table"
    return out.split("== Summary", 1)[1]


def assert_no_secrets(out: str, known_secrets=()) -> None:
    m = JWT_RE.search(out)
    assert m is None, f"a JWT-looking string is printed: {m.group(0)[:20]}..."
    for m in CODE_RE.finditer(out):
        assert len(m.group(1)) <= 8, f"a full code= value is printed: {m.group(0)[:14]}..."
    for m in SECRET_FIELD_RE.finditer(out):
        name, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        assert len(value) <= 8, f"{name} printed in full: {m.group(0)[:30]}..."
    for m in BEARER_RE.finditer(out):
        assert len(m.group(1)) <= 8, f"a bearer token is printed: {m.group(0)[:30]}..."
    for secret in known_secrets:
        assert secret not in out, f"a secret from the trace is printed: {secret[:4]}..."


def assert_names_every_step(out: str) -> None:
    for step, title in STEP_TITLES.items():
        assert f"== Step {step}: {title}" in out, f"step {step} ({title}) missing"
    rows = dict(SUMMARY_ROW_RE.findall(summary_section(out)))
    assert sorted(rows) == sorted(STEP_TITLES), f"summary rows: {sorted(rows)}"
    for step, row in rows.items():
        assert " ok " in f" {row} ", f"summary row {step} not ok: {row}"


def _codes_in_trace(http, base: str) -> list[str]:
    """Authorization codes the trace itself shows (in Location headers), if any."""
    r = http.get(f"{base}/debug/requests")
    assert r.status_code == 200
    found = []
    for e in r.json()["requests"]:
        loc = (e.get("response_headers") or {}).get("location") or ""
        m = re.search(r"[?&]code=([^&]+)", loc)
        if m and len(m.group(1)) > 8:
            found.append(m.group(1))
    return found


# -- with --debug-trace ------------------------------------------------------------

def test_debug_script_full_flow_with_trace(gateway_factory, http):
    gw = gateway_factory("--debug-trace")
    proc = run_script(gw.mcp_url)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}"
    assert "RESULT: OK" in out
    assert_names_every_step(out)

    traces = TRACE_LINE_RE.findall(out)
    backends = {t[3] for t in traces}
    assert {"routes", "mcp"} <= backends, f"backends in trace lines: {backends}"
    assert len(traces) == len(STEP_TITLES), f"{len(traces)} trace lines: {traces}"
    mcp_port = gw.mcp_addr.rsplit(":", 1)[1]
    routes_port = gw.routes_addr.rsplit(":", 1)[1]
    for _id, method, path, backend, addr, status, _ms in traces:
        want = {"mcp": gw.mcp_addr, "routes": gw.routes_addr}.get(backend)
        assert want is not None, f"unexpected backend {backend} for {method} {path}"
        # The trace may name the backend by 127.0.0.1 or localhost; the port must match.
        assert addr.rsplit(":", 1)[1] == {"mcp": mcp_port, "routes": routes_port}[backend], \
            f"{backend} at {addr}, the gateway announced {want}"

    rows = dict(SUMMARY_ROW_RE.findall(summary_section(out)))
    for step, backend in STEP_BACKENDS.items():
        assert re.search(rf"\s{backend}\s", rows[step]), \
            f"step {step} should go to {backend}: {rows[step]}"

    assert "without --debug-trace" not in out
    assert_no_secrets(out + proc.stderr, _codes_in_trace(http, gw.base))


def test_debug_script_accepts_base_url_and_no_trace_flag(gateway_factory):
    gw = gateway_factory("--debug-trace")
    proc = run_script(gw.base + "/", "--no-trace", "--scope", "mcp:read mcp:write")
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}"
    assert_names_every_step(out)
    assert not TRACE_LINE_RE.search(out), "--no-trace must not read the trace"
    assert "--no-trace" in out
    assert '"mcp:read mcp:write" (from --scope)' in out
    assert_no_secrets(out + proc.stderr)


# -- without --debug-trace -------------------------------------------------------------

def test_debug_script_full_flow_without_trace(gateway):
    proc = run_script(gateway.mcp_url)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}"
    assert "RESULT: OK" in out
    assert_names_every_step(out)
    assert "404" in out and "started without --debug-trace" in out, \
        "the script must say that tracing is off"
    assert not TRACE_LINE_RE.search(out)
    assert_no_secrets(out + proc.stderr)


def test_debug_requests_is_404_without_flag(gateway, http):
    for path in ("/debug/requests", "/debug/requests?since=0"):
        r = http.get(f"{gateway.base}{path}")
        assert r.status_code == 404, f"GET {path}: {r.status_code} {r.text[:200]}"


def test_debug_requests_lists_forwarded_requests_with_flag(gateway_factory, http):
    gw = gateway_factory("--debug-trace")
    assert http.get(f"{gw.base}/.well-known/oauth-authorization-server").status_code == 200
    r = http.get(f"{gw.base}/debug/requests")
    assert r.status_code == 200, r.text[:200]
    entries = r.json()["requests"]
    assert [e["path"] for e in entries] == ["/.well-known/oauth-authorization-server"], entries
    assert entries[0]["backend"] == "routes"
    last = entries[-1]["id"]
    r = http.get(f"{gw.base}/debug/requests", params={"since": last})
    assert r.status_code == 200 and r.json()["requests"] == [], r.text[:300]


# -- failures are reported -------------------------------------------------------------

def test_debug_script_names_failing_step(gateway):
    proc = run_script(gateway.base, "--scope", "mcp:no-such-scope")
    out = proc.stdout
    assert proc.returncode == 1, f"exit {proc.returncode}"
    assert "FAILED step 5a" in out
    assert "invalid_scope" in out
    assert "RESULT: FAILED at step 5a" in out
    assert_no_secrets(out + proc.stderr)


def test_debug_script_unreachable_gateway_fails_at_step_1():
    # A bound socket that does not listen: connecting to it is refused, and no other
    # process can take the port meanwhile.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = run_script(f"http://127.0.0.1:{port}/mcp")
    assert proc.returncode == 1, f"exit {proc.returncode}"
    assert "FAILED step 1" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad_args", [[], ["--scope"]])
def test_debug_script_usage_error_exits_2(bad_args):
    proc = run_script(*bad_args)
    assert proc.returncode == 2
