"""Fixtures for "many gateway replicas on one PostgreSQL behind nginx".

pg_cluster    (session) a PgCluster: a throwaway PostgreSQL on 127.0.0.1:<free port>.
database_url  (function) postgres://postgres@127.0.0.1:PORT/<fresh database> for one test.
fleet         (function) a factory: fleet(n=3, extra_args=()) -> Fleet
              n gateway replicas on database_url (started together, in threads), behind
              nginx from deploy/nginx.conf:
                fleet.url          nginx's URL: every replica's --public-url (the issuer)
                fleet.replicas     the Gateway objects; each also answers directly at
                                   replica.base (http://<its proxy_addr>)
                fleet.nginx        the Nginx object (reload(), log_tail(), ...)
                fleet.backends     the replicas' proxy addresses, in nginx's upstream
                fleet.database_url, fleet.key (the shared key-encryption key, base64)
                fleet.kill(i)      SIGKILL replica i (its own PID) and reap it
                fleet.restart(i, fresh_data_dir=True) -> Gateway
                                   start replica i again on the SAME proxy port (so nginx's
                                   upstream list stays right); fresh_data_dir=False reuses
                                   its old data dir
              Each replica runs with
                --store postgres --database-url <database_url> --public-url <fleet.url>
                --trusted-proxy 127.0.0.1/32 <extra_args>
              and MCP_GATEWAY_KEY_ENCRYPTION_KEY=<one random 32-byte key per fleet>, in
              its own empty data dir. Everything is stopped afterwards, by its own PID.

After a replica was killed nginx skips it for fail_timeout (10 s in deploy/nginx.conf)
even once it is back; `fleet.nginx.reload(fleet.backends)` forgets that at once.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # python_tests

from gateway_proc import Gateway, GatewayStartError  # noqa: E402
from nginx_lb import Nginx, free_port  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402


def pytest_configure(config):
    # run_tests.py stops a stage that runs too long with SIGTERM. PostgreSQL runs detached
    # from this process (pg_ctl starts it in its own session), so let SIGTERM unwind like
    # Ctrl-C: pytest then runs the fixtures' teardown, which stops the clusters.
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def on_term(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, on_term)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    return any(getattr(request.node, f"rep_{when}", None) is not None
               and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))


@pytest.fixture(scope="session")
def pg_cluster():
    with PgCluster() as pg:
        yield pg


@pytest.fixture
def database_url(pg_cluster) -> str:
    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:16]}")


@dataclass
class Fleet:
    url: str
    nginx: Nginx
    replicas: list[Gateway]
    database_url: str
    key: str
    args: list[str]
    tmp: Path
    retired: list[Gateway] = field(default_factory=list)  # replaced by restart(), stopped
    _generation: dict[int, int] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        """The replicas' proxy addresses, as nginx's upstream lists them."""
        return [g.addrs["proxy"] if g.proxy_addr is None else g.proxy_addr
                for g in self.replicas]

    def _new_gateway(self, i: int, proxy_addr: str | None = None,
                     data_dir: Path | None = None) -> Gateway:
        gen = self._generation.get(i, 0) + 1
        self._generation[i] = gen
        return Gateway(data_dir or self.tmp / f"replica-{i}-{gen}",
                       [*self.args, "--replica-id", f"replica-{i + 1}"],
                       addrs={"proxy": proxy_addr} if proxy_addr else None,
                       env={"MCP_GATEWAY_KEY_ENCRYPTION_KEY": self.key})

    def kill(self, i: int) -> None:
        """SIGKILL replica i (by its own PID) and reap it: a crash, not a shutdown."""
        gw = self.replicas[i]
        assert gw.proc is not None
        if gw.proc.poll() is None:
            os.kill(gw.proc.pid, signal.SIGKILL)
        gw.wait_exit()

    def restart(self, i: int, fresh_data_dir: bool = True) -> Gateway:
        """Start replica i again on its old proxy port (stopping it first if it runs)."""
        old = self.replicas[i]
        old.stop()
        port_addr = old.proxy_addr or old.addrs["proxy"]
        gw = self._new_gateway(i, proxy_addr=port_addr,
                               data_dir=None if fresh_data_dir else old.data_dir)
        self.replicas[i] = gw
        self.retired.append(old)
        gw.start()
        return gw

    def all_gateways(self) -> list[Gateway]:
        return self.retired + self.replicas

    def stop(self) -> None:
        self.nginx.stop()
        for gw in self.replicas:
            gw.stop()


def start_together(gateways: list[Gateway]) -> None:
    """Start the gateways at the same moment (threads); raise if any did not come up."""
    errors: list[BaseException | None] = [None] * len(gateways)

    def run(i: int) -> None:
        try:
            gateways[i].start()
        except BaseException as e:  # noqa: BLE001 - reported below, with the others
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), name=f"replica-start-{i}")
               for i in range(len(gateways))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    if failed:
        raise GatewayStartError("\n".join(f"replica {i} did not start: {e}" for i, e in failed))


@pytest.fixture
def fleet(database_url, tmp_path, request):
    fleets: list[Fleet] = []
    counter = {"n": 0}

    def make(n: int = 3, extra_args=()) -> Fleet:
        counter["n"] += 1
        # nginx's port first: it is every replica's public URL.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["--store", "postgres", "--database-url", database_url, "--public-url", url,
                "--trusted-proxy", "127.0.0.1/32", *extra_args]
        key = base64.b64encode(os.urandom(32)).decode("ascii")
        tmp = tmp_path / f"fleet-{counter['n']}"
        tmp.mkdir()
        # nginx is created (its prefix dir exists) but started only once the replicas are up.
        f = Fleet(url=url, nginx=Nginx(["127.0.0.1:1"], port=port), replicas=[],
                  database_url=database_url, key=key, args=args, tmp=tmp)
        fleets.append(f)
        f.replicas = [f._new_gateway(i) for i in range(n)]
        start_together(f.replicas)
        f.nginx.backends = f.backends
        f.nginx.start()
        return f

    yield make

    failed = _failed(request)
    for f in fleets:
        try:
            f.stop()
        finally:
            if failed:
                for i, gw in enumerate(f.all_gateways()):
                    print(f"---- replica log ({gw.proxy_addr or gw.addrs['proxy']}, "
                          f"data dir {gw.data_dir.name}) ----")
                    print(gw.log_tail(200))
                print(f.nginx.log_tail(100))
            f.nginx.close()
