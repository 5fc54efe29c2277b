"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, pg_ctl start/stop.

    with PgCluster() as pg:                       # initdb + start on a free loopback port
        url = pg.create_database("t1")            # postgres://postgres@127.0.0.1:PORT/t1
        pg.stop()                                 # "the database is down"
        pg.start()                                # back, on the SAME port, same data

The server binaries come from Debian's /usr/lib/postgresql/<highest version>/bin,
falling back to `initdb`/`pg_ctl` on PATH. initdb refuses to run as root, so when we
are root the cluster directory belongs to the `postgres` OS user and the server
commands run as `runuser -u postgres --`. The server listens on 127.0.0.1 only, with
trust authentication for the `postgres` role, fsync off and its Unix socket inside
the cluster directory (never the system's /var/run/postgresql).

Readiness is pg_ctl's own `-w` (it waits until the server accepts connections), never
a sleep. Stopping is `pg_ctl stop -m fast -w`, which signals the postmaster PID this
cluster wrote into its own data directory, and nothing else. pg_ctl detaches the
server into its own session, so a killed test run would leave it behind: `close()` is
also registered with atexit, and callers should use the context manager or a fixture.

Usable from pytest fixtures (python_tests/replicas/conftest.py) and from run_tests.py
(which puts python_tests on sys.path).
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
PSQL_TIMEOUT_SECONDS = 60
OS_USER = "postgres"  # the OS user that owns the cluster when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates


class PgClusterError(RuntimeError):
    pass


def _version_key(p: Path) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", p.name))


def find_bindir() -> Path | None:
    """The directory with initdb, pg_ctl and psql: the highest /usr/lib/postgresql/N/bin,
    else the directory of `initdb` on PATH (or None when PostgreSQL is not installed)."""
    if PG_ROOT.is_dir():
        versions = sorted((p for p in PG_ROOT.iterdir()
                           if (p / "bin" / "initdb").exists() and (p / "bin" / "pg_ctl").exists()),
                          key=_version_key, reverse=True)
        if versions:
            return versions[0] / "bin"
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgCluster:
    """One PostgreSQL cluster in its own temp dir, listening on 127.0.0.1:<port>."""

    def __init__(self, port: int | None = None, bindir: Path | str | None = None,
                 server_options: str = ""):
        found = Path(bindir) if bindir else find_bindir()
        if found is None:
            raise PgClusterError(
                "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin and no "
                "initdb on PATH): install Debian's `postgresql` package")
        self.bindir = found
        self.port = port  # chosen on the first start, then kept so a restart reuses it
        self.server_options = server_options  # more `-c name=value` for the server
        self.dir: Path | None = None
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._initialised = False
        self._running = False
        self._closed = False

    # -- paths and commands --------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.dir is not None
        return self.dir / "log"

    def _bin(self, name: str) -> str:
        p = self.bindir / name
        if p.exists():
            return str(p)
        found = shutil.which(name)
        if found is None:
            raise PgClusterError(f"{name} not found in {self.bindir} or on PATH")
        return found

    def _server_cmd(self, args: list[str]) -> list[str]:
        """A server-side command (initdb, pg_ctl), run as the postgres OS user when root."""
        if self._as_root:
            runuser = shutil.which("runuser") or next(
                (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None)
            if runuser is None:
                raise PgClusterError("running as root needs runuser (util-linux) to run the "
                                     f"PostgreSQL server commands as `{OS_USER}`")
            return [runuser, "-u", OS_USER, "--", *args]
        return args

    def _run(self, cmd: list[str], what: str, timeout: float) -> str:
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=timeout, cwd=self.dir)
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"{what} did not finish within {timeout}s") from e
        if p.returncode != 0:
            raise PgClusterError(f"{what} exited {p.returncode}\n{p.stdout}{p.stderr}"
                                 f"{self.log_tail()}")
        return p.stdout

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-n:]
        except (OSError, AssertionError):
            return ""
        return "\n---- postgres log ----\n" + "\n".join(lines) if lines else ""

    # -- lifecycle -----------------------------------------------------------------

    def _init(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        if self._as_root:
            try:
                pw = pwd.getpwnam(OS_USER)
            except KeyError as e:
                raise PgClusterError(
                    f"running as root, but there is no `{OS_USER}` OS user to run initdb as "
                    "(Debian's postgresql package creates it)") from e
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        atexit.register(self.close)
        self._run(self._server_cmd([self._bin("initdb"), "-D", str(self.data_dir),
                                    "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]),
                  "initdb", START_TIMEOUT_SECONDS)
        self._initialised = True

    def _pg_ctl_start(self, port: int) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {port} "
                   f"-c unix_socket_directories={self.dir} "
                   f"-c fsync=off -c max_connections=200 {self.server_options}")
        self._run(self._server_cmd([self._bin("pg_ctl"), "-w", "-t", str(START_TIMEOUT_SECONDS),
                                    "-D", str(self.data_dir), "-l", str(self.log_file),
                                    "-o", options, "start"]),
                  f"pg_ctl start (port {port})", START_TIMEOUT_SECONDS + 10)

    def start(self) -> "PgCluster":
        """initdb on the first call; start the server (on the same port as before, if any)."""
        if self._closed:
            raise PgClusterError("this cluster was closed")
        if self._running:
            return self
        if not self._initialised:
            self._init()
        if self.port is not None:
            self._pg_ctl_start(self.port)
        else:
            # A free port can be taken between our probe and the server's bind: try again
            # with another one (only on the first start; a restart must keep its port).
            attempts = 3
            for attempt in range(attempts):
                port = free_port()
                try:
                    self._pg_ctl_start(port)
                except PgClusterError:
                    log = self.log_tail(200)
                    port_taken = "could not bind" in log or "in use" in log
                    if attempt == attempts - 1 or not port_taken:
                        raise
                    continue
                self.port = port
                break
        self._running = True
        return self

    def stop(self) -> None:
        """pg_ctl stop -m fast: the server is gone (connections refused) when this returns."""
        if not self._running:
            return
        if not (self.data_dir / "postmaster.pid").exists():
            # Already down (e.g. an interrupted stop() whose pg_ctl had done its work).
            self._running = False
            return
        self._run(self._server_cmd([self._bin("pg_ctl"), "-w", "-t", str(STOP_TIMEOUT_SECONDS),
                                    "-D", str(self.data_dir), "-m", "fast", "stop"]),
                  "pg_ctl stop", STOP_TIMEOUT_SECONDS + 10)
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def close(self) -> None:
        """Stop the server (if running) and remove the cluster directory."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._running:
                self.stop()
        finally:
            try:
                atexit.unregister(self.close)
            except Exception:  # noqa: BLE001 - best effort during interpreter exit
                pass
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- using it ------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise PgClusterError("the cluster has not been started")
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL over TCP with psql (unaligned, tuples only) and return its output."""
        if self.port is None:
            raise PgClusterError("the cluster has not been started")
        return self._run([self._bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                          "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
                          "-d", dbname, "-c", sql],
                         f"psql -c {sql!r}", PSQL_TIMEOUT_SECONDS)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its URL."""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}")
        return self.url(name)
