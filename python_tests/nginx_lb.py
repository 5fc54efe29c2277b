"""Debian's nginx as the load balancer of the tests, from the shipped deploy/nginx.conf.

    lb = Nginx(["127.0.0.1:41001", "127.0.0.1:41002"]).start()   # free port on 127.0.0.1
    httpx.get(lb.url + "/.well-known/oauth-authorization-server")
    lb.reload(["127.0.0.1:41001"])                                # optional
    lb.close()                                                    # stop + remove the prefix

The tested configuration IS the shipped one: `render()` changes only addresses and file
locations. In every `upstream` block the `server` lines are replaced by one line per
backend (keeping the first line's parameters, e.g. `max_fails=1 fail_timeout=10s`); the
first `listen` line becomes `listen 127.0.0.1:<port>;` (other `listen` lines go); log
files and temp directories (client body, proxy, fastcgi, uwsgi, scgi) move into a temp
prefix directory; main-level `pid`/`error_log`/`daemon`/`lock_file` come from `-g`.
A `user` the machine does not have is dropped (nginx then uses `nobody`).

nginx runs as this process's own child (`daemon off`), with

    nginx -p <prefix> -e <prefix>/error.log -c <prefix>/nginx.conf \
          -g 'daemon off; pid <prefix>/nginx.pid; error_log <prefix>/error.log info; ...'

Readiness is a TCP connect loop with a deadline on 127.0.0.1:<port> while the master is
alive. `stop()` sends SIGQUIT (graceful) to the master's PID, waits, and after a deadline
SIGKILLs that PID and the workers it started (found by their parent PID). As root the
workers drop to the config's `user`; the prefix directory is world-traversable so they
reach the temp directories (which the master creates and hands to that user).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = REPO_ROOT / "deploy" / "nginx.conf"
DEBIAN_NGINX = Path("/usr/sbin/nginx")

READY_TIMEOUT_SECONDS = 30.0
RELOAD_TIMEOUT_SECONDS = 30.0
# deploy/nginx.conf has worker_shutdown_timeout 10s: a graceful stop ends well before this.
STOP_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 0.02

TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
              "uwsgi_temp_path", "scgi_temp_path")


class NginxError(RuntimeError):
    pass


def nginx_binary() -> Path:
    """$NGINX_BIN, else nginx on PATH, else Debian's /usr/sbin/nginx."""
    raw = os.environ.get("NGINX_BIN")
    if raw:
        return Path(raw)
    found = shutil.which("nginx")
    if found:
        return Path(found)
    return DEBIAN_NGINX


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- rendering the shipped config ---------------------------------------------------

_DIRECTIVE_RE = re.compile(r"^(\s*)([a-z_]+)\b\s*(.*?)\s*;\s*$")


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one config line (a `#` outside quotes starts a comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i], line[i:]
    return line, ""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def render(conf_text: str, backends: list[str], listen: str, prefix: Path) -> str:
    """The shipped config with these backends, this listen address and files in prefix."""
    if not backends:
        raise NginxError("an upstream needs at least one backend")
    out: list[str] = []
    stack: list[str] = []  # the enclosing block names, e.g. ["http", "upstream"]
    upstream_servers_done = False
    listen_done = False
    upstreams = 0
    upstream_name = ""
    for line in conf_text.splitlines():
        code, _comment = _split_comment(line)
        stripped = code.strip()
        if not stripped:
            out.append(line)
            continue
        context = stack[-1] if stack else "main"
        m = _DIRECTIVE_RE.match(code)
        if m:
            indent, name, args = m.groups()
            if context == "main" and name in ("pid", "error_log", "daemon", "lock_file"):
                continue  # given on the command line
            if context == "main" and name == "user":
                if not _user_exists(args.split()[0]):
                    continue
            elif context == "upstream" and name == "server":
                if upstream_servers_done:
                    continue
                params = " ".join(args.split()[1:])
                # `replica_N` is the N-th replica alone (counting round when there are
                # fewer); any other upstream has them all.
                mine = backends
                if upstream_name.startswith("replica_") and upstream_name[8:].isdigit():
                    mine = [backends[(int(upstream_name[8:]) - 1) % len(backends)]]
                for b in mine:
                    out.append(f"{indent}server {b}{' ' + params if params else ''};")
                upstream_servers_done = True
                continue
            elif context == "server" and name == "listen":
                if not listen_done:
                    out.append(f"{indent}listen {listen};")
                    listen_done = True
                continue
            elif name == "access_log" and args.split()[0] != "off":
                rest = " ".join(args.split()[1:])
                out.append(f"{indent}access_log {prefix / 'access.log'}"
                           f"{' ' + rest if rest else ''};")
                continue
            elif name == "error_log":
                out.append(f"{indent}error_log {prefix / 'error.log'} info;")
                continue
            elif name in TEMP_PATHS:
                continue  # set below, in the prefix
            out.append(line)
            continue
        # Block openings and closings (one per line in the shipped file).
        if stripped.endswith("{"):
            block = stripped[:-1].split()
            stack.append(block[0] if block else "")
            out.append(line)
            if block and block[0] == "upstream":
                upstreams += 1
                upstream_servers_done = False
                upstream_name = block[1] if len(block) > 1 else ""
            if block and block[0] == "http":
                indent = re.match(r"\s*", line).group(0) + "    "
                for name in TEMP_PATHS:
                    out.append(f"{indent}{name} {prefix / name.replace('_path', '')};")
            continue
        if stripped == "}":
            if stack:
                stack.pop()
            out.append(line)
            continue
        out.append(line)
    if upstreams == 0:
        raise NginxError("the config has no upstream block to put the backends in")
    if not listen_done:
        raise NginxError("the config has no listen line")
    return "\n".join(out) + "\n"


# -- the process ---------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """PIDs whose parent is pid (nginx's workers), from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry.name))
    return kids


class Nginx:
    """One nginx master (our child) balancing 127.0.0.1:<port> over backends."""

    def __init__(self, backends: list[str], port: int | None = None,
                 conf: Path | str = SHIPPED_CONF, binary: Path | str | None = None):
        self.backends = list(backends)
        self.port = port or free_port()
        self.source_conf = Path(conf)
        self.binary = Path(binary) if binary else nginx_binary()
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-lb-"))
        # As root the workers run as the config's `user`: let them traverse to the temp dirs.
        self.prefix.chmod(0o755)
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.proc: subprocess.Popen | None = None
        self._output = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_conf(self, backends: list[str]) -> None:
        text = render(self.source_conf.read_text(), backends, f"127.0.0.1:{self.port}",
                      self.prefix)
        self.conf_path.write_text(text)

    def command(self) -> list[str]:
        globals_ = (f"daemon off; master_process on; pid {self.prefix / 'nginx.pid'}; "
                    f"error_log {self.error_log} info; lock_file {self.prefix / 'nginx.lock'};")
        return [str(self.binary), "-p", f"{self.prefix}/", "-e", str(self.error_log),
                "-c", str(self.conf_path), "-g", globals_]

    def start(self) -> "Nginx":
        if not self.binary.exists():
            raise NginxError(f"nginx not found at {self.binary} (install Debian's nginx, "
                             "or set NGINX_BIN)")
        self._write_conf(self.backends)
        self._output = open(self.prefix / "nginx.out", "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited {self.proc.returncode} before it listened"
                                 f"\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError(f"nginx did not accept connections on {self.url} within "
                                 f"{READY_TIMEOUT_SECONDS}s\n{self.log_tail()}")
            try:
                self.proc.wait(timeout=POLL_SECONDS)  # returns at once if it exits
            except subprocess.TimeoutExpired:
                pass
        return self

    def reload(self, backends: list[str]) -> None:
        """New backends via SIGHUP; returns once the old workers are gone (a request after
        this sees only the new config). A config nginx rejects raises NginxError."""
        assert self.proc is not None and self.proc.poll() is None, "nginx is not running"
        self._write_conf(backends)
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        old = set(_children(self.proc.pid))
        # A pidfd turns readable when its process exits: wait on the old workers' exits
        # (nginx starts the new workers first, then lets the old ones finish).
        exits = {}
        for pid in old:
            try:
                exits[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                pass
        try:
            os.kill(self.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
            while exits:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NginxError(f"nginx reload did not finish within "
                                     f"{RELOAD_TIMEOUT_SECONDS}s\n{self.log_tail()}")
                # A rejected config leaves the old workers running: look at the log between
                # waits (each wait ends early on an exit).
                done, _, _ = select.select(list(exits), [], [], min(left, 1.0))
                for fd in done:
                    os.close(fd)
                    del exits[fd]
                new_log = self._log_since(offset)
                if "[emerg]" in new_log:
                    raise NginxError(f"nginx rejected the new config:\n{new_log}")
        finally:
            for fd in exits:
                os.close(fd)
        if not set(_children(self.proc.pid)) - old:
            raise NginxError(f"nginx reload left no new workers\n{self.log_tail()}")
        self.backends = list(backends)

    def stop(self) -> int | None:
        """SIGQUIT our nginx master and wait; SIGKILL it and its workers after a deadline."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            workers = _children(self.proc.pid)
            try:
                os.kill(self.proc.pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                workers = sorted(set(workers) | set(_children(self.proc.pid)))
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
                for w in workers:  # orphaned workers of our master, by PID
                    try:
                        os.kill(w, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self._output is not None:
            self._output.close()
            self._output = None
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- logs ----------------------------------------------------------------------

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.error_log, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            try:
                lines = (self.prefix / name).read_text(errors="replace").splitlines()[-n:]
            except OSError:
                continue
            if lines:
                parts.append(f"---- nginx {name} ----\n" + "\n".join(lines))
        return "\n".join(parts) if parts else "(no output from nginx)"
