"""scripts/bench.sh runs and reports (a benchmark, not a timed test: no figure is judged
here, only that every measurement ran without errors and the table says what BENCHMARKS.md
quotes). Short runs on the debug binary; nginx left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gateway_proc import REPO_ROOT, gateway_binary


def test_the_bench_script_runs_every_measurement_and_reports(tmp_path):
    if shutil.which("wrk") is None and os.geteuid() != 0:
        pytest.skip("wrk is not installed and the script cannot install it without root")
    env = dict(os.environ, DURATION="1", ROUNDS="1", NGINX="0", SKIP_BUILD="1",
               GATEWAY_BIN=str(gateway_binary()), BENCH_OUT=str(tmp_path / "bench.txt"))
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "bench.sh")], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / "bench.txt").read_text()
    rows = {m.group(1): (float(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^(\S+)\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(-?\d+)\s+\d+$", table,
                                 re.MULTILINE)}
    for name in ("direct#1", "proxied#1", "stateless-direct#1", "stateless-proxied#1",
                 "direct@1conn", "proxied@1conn", "token:client_credentials", "register"):
        assert name in rows, f"no {name} row:\n{table}"
        rps, errors = rows[name]
        assert rps > 0 and errors == 0, f"{name}: {rps} req/s, {errors} errors\n{table}"
    for line in ("proxied/direct throughput:", "CPU per tools/call", "stateless (2026-07-28) tools/call:",
                 "one connection: p50", "RSS: idle"):
        assert line in table, f"no '{line}' line:\n{table}"
