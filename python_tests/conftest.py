"""Fixtures for the flow tests: a real gateway process per test.

`gateway` starts the binary ($GATEWAY_BIN, default <repo>/target/debug/mcp-oauth-gateway)
with all four listeners on 127.0.0.1:0 and a fresh data directory, waits for the
`listening ...` stderr line, and stops it with SIGTERM to its own PID afterwards.
`gateway_factory` starts extra gateways with extra flags (e.g. --refresh-grace-seconds 0).
"""

from __future__ import annotations

import pytest

from flow import http_client
from gateway_proc import Gateway


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and rep.failed


@pytest.fixture
def gateway_factory(tmp_path, request):
    started: list[Gateway] = []
    counter = {"n": 0}

    def start(*extra_args: str, data_dir=None) -> Gateway:
        counter["n"] += 1
        gw = Gateway(data_dir or tmp_path / f"data-{counter['n']}", list(extra_args))
        started.append(gw)
        return gw.start()

    yield start

    for gw in started:
        gw.stop()
        if _failed(request):
            print(f"---- gateway log ({' '.join(gw.extra_args) or 'default flags'}) ----")
            print(gw.log_tail(200))


@pytest.fixture
def gateway(gateway_factory) -> Gateway:
    return gateway_factory()


@pytest.fixture
def http():
    with http_client() as c:
        yield c
