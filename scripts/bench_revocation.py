#!/usr/bin/env python3
"""How long a revocation at one replica takes to reach the others (issue 14).

Starts REPLICAS (3) gateways on the empty PostgreSQL database DATABASE_URL (each with its
own temporary data dir, all on loopback port 0), gets ROUNDS (50) access tokens through the
OAuth flow, then for each token: revokes it at replica 0 (RFC 7009) and times, from the
moment /revoke answered, how long until each other replica refuses it (401 on the MCP
endpoint). Prints p50, p90 and max in milliseconds.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/empty_db python3 scripts/bench_revocation.py

GATEWAY_BIN picks the binary (default target/release/mcp-oauth-gateway).
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python_tests"))

from flow import full_flow, http_client  # noqa: E402
from gateway_proc import Gateway  # noqa: E402

REPLICAS = int(os.environ.get("REPLICAS", "3"))
ROUNDS = int(os.environ.get("ROUNDS", "50"))


def refused(http, base: str, token: str) -> bool:
    r = http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                  headers={"Authorization": f"Bearer {token}",
                           "Accept": "application/json, text/event-stream"})
    return r.status_code == 401


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    if not url:
        print(__doc__)
        return 2
    binary = Path(os.environ.get("GATEWAY_BIN", ROOT / "target" / "release" / "mcp-oauth-gateway"))
    env = {"MCP_GATEWAY_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
    with tempfile.TemporaryDirectory() as tmp:
        gateways = [Gateway(Path(tmp) / f"r{i}", ["--store", "postgres", "--database-url", url],
                            binary=binary, env=env) for i in range(REPLICAS)]
        try:
            with ThreadPoolExecutor(REPLICAS) as pool:
                list(pool.map(Gateway.start, gateways))
            with http_client() as http:
                tokens = [full_flow(http, gateways[0].base) for _ in range(ROUNDS)]
                took = []
                for t in tokens:
                    r = http.post(f"{gateways[0].base}/revoke",
                                  data={"token": t.access_token, "client_id": t.client_id})
                    assert r.status_code == 200, r.text
                    start = time.monotonic()
                    waiting = set(range(1, REPLICAS))
                    while waiting:
                        for i in sorted(waiting):
                            if refused(http, gateways[i].base, t.access_token):
                                took.append((time.monotonic() - start) * 1000)
                                waiting.discard(i)
                        if time.monotonic() - start > 5:
                            raise SystemExit(f"replicas {waiting} still accept a revoked token")
        finally:
            for g in gateways:
                g.stop()
    took.sort()
    p = lambda q: took[min(len(took) - 1, int(q * len(took)))]  # noqa: E731
    print(f"revocation propagation over {ROUNDS} tokens x {REPLICAS - 1} replicas: "
          f"p50 {statistics.median(took):.1f} ms, p90 {p(0.9):.1f} ms, max {took[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
