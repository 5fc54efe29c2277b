"""The harness itself and the shipped deploy/nginx.conf, without a gateway.

PgCluster: starts, answers, stops (connections refused), starts again on the same port
with its databases. nginx from deploy/nginx.conf in front of three tiny HTTP backends
(threads here, each answering its name and the forwarding headers it received):
round-robin without Mcp-Session-Id (or with one no replica named), a session id that starts
with `replica-N.` always to the N-th backend, the client's address in X-Forwarded-For, and
a stopped backend skipped even for POST.
"""

from __future__ import annotations

import collections
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import socket
import threading
import uuid

import httpx
import pytest

from nginx_lb import SHIPPED_CONF, Nginx, render
from pg_cluster import PgCluster, PgClusterError


# -- PostgreSQL ------------------------------------------------------------------------

def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_pg_cluster_stops_and_starts_again_on_the_same_port_with_its_data():
    with PgCluster() as pg:
        assert pg.psql("SELECT 1").strip() == "1"
        url = pg.create_database("kept")
        assert url == f"postgres://postgres@127.0.0.1:{pg.port}/kept"
        pg.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('before the stop')", "kept")
        port = pg.port

        pg.stop()
        assert _refused(port), "the server still accepts connections after stop()"
        with pytest.raises(PgClusterError):
            pg.psql("SELECT 1")

        pg.start()
        assert pg.port == port
        assert pg.url("kept") == url
        assert pg.psql("SELECT v FROM t", "kept").strip() == "before the stop"
        data = pg.dir
    assert not data.exists(), "close() left the cluster directory behind"


def test_database_url_is_a_fresh_database_of_the_session_cluster(pg_cluster, database_url):
    name = database_url.rsplit("/", 1)[1]
    assert database_url == pg_cluster.url(name)
    assert pg_cluster.psql("SELECT current_database()", name).strip() == name
    assert pg_cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                           name).strip() == "0"


# -- nginx from deploy/nginx.conf --------------------------------------------------------

class Backend:
    """An HTTP/1.1 server in threads that answers JSON: its name and what it received.
    stop() also closes the connections nginx keeps open, as a killed process would."""

    def __init__(self, name: str):
        self.name = name
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with backend.lock:
                    backend.connections.add(self.connection)

            def finish(self):
                with backend.lock:
                    backend.connections.discard(self.connection)
                super().finish()

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                out = json.dumps({
                    "name": backend.name,
                    "method": self.command,
                    "body": body.decode("utf-8", errors="replace"),
                    "xff": self.headers.get("X-Forwarded-For"),
                    "proto": self.headers.get("X-Forwarded-Proto"),
                    "host": self.headers.get("Host"),
                    "session": self.headers.get("Mcp-Session-Id"),
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{name}",
                                       daemon=True)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()  # the port now refuses connections
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def backends():
    bs = [Backend(f"b{i}") for i in range(3)]
    yield bs
    for b in bs:
        b.stop()


@pytest.fixture
def lb(backends, request):
    nginx = Nginx([b.addr for b in backends]).start()
    yield nginx
    nginx.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(nginx.log_tail(100))
    nginx.close()


@pytest.fixture
def client():
    with httpx.Client(timeout=httpx.Timeout(30.0)) as c:
        yield c


def ask(client: httpx.Client, lb: Nginx, method: str = "GET", session: str | None = None,
        **kw) -> dict:
    headers = dict(kw.pop("headers", {}))
    if session is not None:
        headers["Mcp-Session-Id"] = session
    r = client.request(method, f"{lb.url}/mcp", headers=headers, **kw)
    assert r.status_code == 200, f"{method} via nginx: {r.status_code} {r.text[:300]}"
    return r.json()


def test_the_tested_config_is_the_shipped_one_with_other_addresses(tmp_path):
    shipped = SHIPPED_CONF.read_text()
    rendered = render(shipped, ["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:3", tmp_path)
    changed = ("server ", "listen ", "access_log ", "error_log ")
    kept = [line for line in shipped.splitlines()
            if not line.strip().startswith(changed)]
    assert [line for line in kept if line not in rendered.splitlines()] == []
    assert "map $http_mcp_session_id $mcp_upstream {" in shipped
    assert "        server 127.0.0.1:1 max_fails=1 fail_timeout=10s;" in rendered
    # replica_2 is the second backend alone.
    block = rendered.split("upstream replica_2 {", 1)[1].split("}", 1)[0]
    assert "server 127.0.0.1:2;" in block and "127.0.0.1:1" not in block
    assert "        listen 127.0.0.1:3;" in rendered
    assert "10.0.0.11" not in rendered and "listen 80;" not in rendered


def test_requests_without_a_session_go_round_robin(lb, client):
    """No Mcp-Session-Id, or one that names no replica: round-robin over all."""
    counts = collections.Counter(ask(client, lb)["name"] for _ in range(30))
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert min(counts.values()) >= 8, f"not round-robin: {counts}"
    counts = collections.Counter(ask(client, lb, session=f"x.{n}")["name"] for n in range(30))
    assert set(counts) == {"b0", "b1", "b2"}, counts
    assert min(counts.values()) >= 8, f"not round-robin: {counts}"
    # Fresh connections (each may land on another nginx worker), and POSTs, alike.
    counts = collections.Counter()
    for _ in range(15):
        with httpx.Client(timeout=30.0) as c:
            counts[ask(c, lb, "POST", json={"jsonrpc": "2.0", "method": "initialize"})["name"]] += 1
    assert set(counts) == {"b0", "b1", "b2"}, counts


def test_a_session_named_by_a_replica_always_reaches_that_replica(lb, client):
    for n in range(9):
        replica = n % 3 + 1
        sid = f"replica-{replica}.{uuid.uuid4()}"
        seen = set()
        for method in ("POST", "GET", "POST", "GET", "DELETE", "POST"):
            reply = ask(client, lb, method, session=sid,
                        **({"json": {"n": n}} if method == "POST" else {}))
            assert reply["session"] == sid
            seen.add(reply["name"])
        with httpx.Client(timeout=30.0) as fresh:  # another connection, maybe another worker
            seen.add(ask(fresh, lb, "GET", session=sid)["name"])
        assert seen == {f"b{replica - 1}"}, f"session {sid} reached {seen}"


def test_forwarded_headers(lb, client):
    reply = ask(client, lb)
    assert "127.0.0.1" in [h.strip() for h in reply["xff"].split(",")], reply
    assert reply["proto"] == "http"
    assert reply["host"] == f"127.0.0.1:{lb.port}"  # proxy_set_header Host $http_host
    # A client's own X-Forwarded-For is kept, and nginx appends the address it saw: the
    # gateway believes only that last entry (nginx is its trusted proxy).
    reply = ask(client, lb, headers={"X-Forwarded-For": "203.0.113.7"})
    assert reply["xff"] == "203.0.113.7, 127.0.0.1", reply


def test_a_stopped_backend_is_skipped_and_posts_still_succeed(lb, backends, client):
    for _ in range(6):  # warm nginx's keepalive connections to every backend
        ask(client, lb)

    backends[1].stop()
    counts = collections.Counter()
    for n in range(30):
        reply = ask(client, lb, "POST", json={"jsonrpc": "2.0", "id": n, "method": "ping"})
        assert json.loads(reply["body"])["id"] == n
        counts[reply["name"]] += 1
    assert set(counts) == {"b0", "b2"}, counts
    # A session of the stopped replica gets 502: its state died with it, and a replica
    # that never had it could only answer 404. (With a real gateway the client then
    # initializes again, without a session id, and is balanced to a live replica.)
    r = client.post(f"{lb.url}/mcp", headers={"Mcp-Session-Id": f"replica-2.{uuid.uuid4()}"},
                    json={"n": 1})
    assert r.status_code == 502, r.text


def test_reload_changes_the_backends(lb, backends, client):
    lb.reload([backends[0].addr])
    assert {ask(client, lb)["name"] for _ in range(9)} == {"b0"}
    lb.reload([b.addr for b in backends])
    assert {ask(client, lb)["name"] for _ in range(9)} == {"b0", "b1", "b2"}
