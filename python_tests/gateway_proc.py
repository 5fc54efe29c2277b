"""Start and stop the real mcp-oauth-gateway binary for the flow tests.

The gateway is started with all four listeners on 127.0.0.1:0 and a fresh data
directory. Readiness is the single stderr line

    listening proxy=IP:PORT mcp=IP:PORT routes=IP:PORT jwks=IP:PORT

which a reader thread waits for and signals through a threading.Event (no
sleeps). The reader threads keep draining stdout and stderr for the whole life
of the process so that a full pipe can never block the gateway.

Stopping sends SIGTERM to the PID of the process this module started, and
nothing else, then waits for it to exit.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "mcp-oauth-gateway"

READY_RE = re.compile(r"listening proxy=(\S+) mcp=(\S+) routes=(\S+) jwks=(\S+)")
# Plain-text log lines may carry ANSI colour codes around the fields.
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def gateway_binary() -> Path:
    """The binary under test: $GATEWAY_BIN (relative paths resolve against the repo root)."""
    raw = os.environ.get("GATEWAY_BIN")
    if not raw:
        return DEFAULT_BIN
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class GatewayStartError(RuntimeError):
    pass


class Gateway:
    """One running gateway process and the addresses it announced."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None,
                 binary: Path | None = None, addrs: dict | None = None,
                 env: dict | None = None):
        self.binary = Path(binary) if binary else gateway_binary()
        # Listener addresses; every one is 127.0.0.1:0 unless a test overrides it.
        self.addrs = {"proxy": "127.0.0.1:0", "mcp": "127.0.0.1:0",
                      "routes": "127.0.0.1:0", "jwks": "127.0.0.1:0", **(addrs or {})}
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args or [])
        # Extra environment variables, merged over this process's own (e.g. a replica's
        # MCP_GATEWAY_KEY_ENCRYPTION_KEY).
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.proxy_addr = self.mcp_addr = self.routes_addr = self.jwks_addr = None
        self.returncode: int | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=2000)
        self._lines_lock = threading.Lock()
        self._new_line = threading.Condition(self._lines_lock)  # notified on every line
        self._ready = threading.Event()  # set on the readiness line or on stderr EOF
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--proxy-addr", self.addrs["proxy"],
            "--mcp-addr", self.addrs["mcp"],
            "--routes-addr", self.addrs["routes"],
            "--jwks-addr", self.addrs["jwks"],
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]

    def spawn(self) -> None:
        """Start the process and the pipe readers, without waiting for readiness."""
        if not self.binary.exists():
            raise GatewayStartError(
                f"gateway binary not found at {self.binary} (set GATEWAY_BIN or build it)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for name, pipe, watch in (("stderr", self.proc.stderr, True),
                                  ("stdout", self.proc.stdout, False)):
            t = threading.Thread(target=self._drain, args=(name, pipe, watch),
                                 name=f"gateway-{name}-{self.proc.pid}", daemon=True)
            t.start()
            self._threads.append(t)

    def start(self) -> "Gateway":
        self.spawn()
        if not self._ready.wait(READY_TIMEOUT_SECONDS):
            self.stop()
            raise GatewayStartError(
                f"no 'listening ...' line within {READY_TIMEOUT_SECONDS}s\n{self.log_tail()}")
        if self.proxy_addr is None:
            code = self.proc.wait(timeout=STOP_TIMEOUT_SECONDS) if self.proc else None
            self.returncode = code
            raise GatewayStartError(
                f"gateway exited (code {code}) before it was ready\n{self.log_tail()}")
        return self

    def wait_exit(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """Wait for the process to exit on its own (e.g. a startup error)."""
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout=timeout)
        self._join_readers()
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM our own PID and wait; kill (still our PID) only if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.returncode = self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._record("[test harness] gateway ignored SIGTERM; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
                self.returncode = None  # did not exit cleanly
        else:
            self.returncode = self.proc.returncode
        self._join_readers()
        return self.returncode

    def _join_readers(self) -> None:
        for t in self._threads:
            t.join(timeout=STOP_TIMEOUT_SECONDS)

    # -- pipe draining -----------------------------------------------------

    def _record(self, line: str) -> None:
        with self._new_line:
            self._lines.append(line)
            self._new_line.notify_all()

    def _drain(self, name: str, pipe, watch_ready: bool) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._record(f"[{name}] {line}")
                if watch_ready and not self._ready.is_set():
                    m = READY_RE.search(ANSI_RE.sub("", line))
                    if m:
                        (self.proxy_addr, self.mcp_addr,
                         self.routes_addr, self.jwks_addr) = m.groups()
                        self._ready.set()
        finally:
            if watch_ready:
                self._ready.set()  # EOF: stop waiting, start() reports the exit
            pipe.close()

    # -- accessors ---------------------------------------------------------

    @property
    def base(self) -> str:
        """The public URL: http://<proxy addr> (the contract's default)."""
        return f"http://{self.proxy_addr}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def signing_key_pem(self) -> bytes:
        return (self.data_dir / "signing-key.pem").read_bytes()

    @property
    def signing_kid(self) -> str:
        return (self.data_dir / "signing-key.kid").read_text().strip()

    def log_lines(self) -> list[str]:
        with self._lines_lock:
            return list(self._lines)

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> str:
        """The `count`th log line containing `text`, waiting (on the line reader, not on
        time) for the gateway to write it; AssertionError with the log when it never does."""
        def found():
            lines = [line for line in self._lines if text in line]
            return lines[count - 1] if len(lines) >= count else None
        with self._new_line:
            line = self._new_line.wait_for(found, timeout)
        assert line, f"no log line with {text!r} within {timeout}s\n{self.log_tail()}"
        return line

    def log_tail(self, n: int = 80) -> str:
        lines = self.log_lines()[-n:]
        return "\n".join(lines) if lines else "(no output from gateway)"
