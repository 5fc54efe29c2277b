#!/usr/bin/env python3
"""Run the project's tests:
python3 run_tests.py [unit|integration|flow|replicas|clients|conformance|browser|soak|fuzz|all]

Stages (default: all):
  unit         cargo test --lib --bins
  integration  cargo test --test integration
  flow         pytest python_tests (against the built gateway binary), except
               python_tests/replicas
  replicas     several gateway replicas on one PostgreSQL behind nginx: installs Debian's
               postgresql and nginx with apt-get when missing, starts a throwaway
               PostgreSQL cluster (python_tests/pg_cluster.py) for
               `cargo test --lib -- --ignored postgres` (which reads
               MCP_GATEWAY_TEST_DATABASE_URL), then pytest python_tests/replicas (its own
               clusters, and nginx from deploy/nginx.conf)
  clients      node clients/ts/run.mjs (when clients/ts/package.json exists)
  conformance  node clients/conformance/run.mjs: the MCP conformance suite's auth
               scenarios against `mcp-oauth-gateway client`
  browser      node clients/inspector/run.mjs: the MCP Inspector's web UI in headless
               Chromium (Debian's /usr/bin/chromium, installed with apt-get when missing),
               then node clients/admin-browser/run.mjs: a grant revoked on /admin
  soak         cargo test --test integration soak -- --ignored: 1,000 connections
               through the proxy for SOAK_SECONDS (default 30) after a warm-up
  fuzz         cargo fuzz (installed with `cargo install` when missing) builds the targets
               in fuzz/ and runs each for FUZZ_SECONDS (default 20)

The script installs what it needs itself: a virtualenv in .venv/ with
python_tests/requirements.txt (reinstalled only when that file changes), and
node_modules in clients/ts, clients/inspector, clients/admin-browser,
clients/conformance and clients/thirdparty (server-everything and oidc-provider,
which the flow tests run) via `npm ci` (only when missing or the lock changed),
Chromium, PostgreSQL and nginx via apt-get when they are missing, and cargo-fuzz via
`cargo install`.
It builds once with cargo, streams every child's output, keeps going after a
failing stage, and ends with one line `N passed, M failed`. The exit code is
non-zero if any test failed or any stage could not run.

Environment:
  GATEWAY_BIN         binary for the flow and client stages (default: the one cargo built)
  RUN_TESTS_NO_BUILD  set to 1 to skip `cargo build` (uses GATEWAY_BIN or the existing binary)
  STAGE_TIMEOUT       seconds before a stage is stopped (default 1800)
  CHROMIUM_BIN        browser for the browser stage (default /usr/bin/chromium)
  NGINX_BIN           nginx for the replicas stage (default: nginx on PATH, else /usr/sbin/nginx)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import venv
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "python_tests" / "requirements.txt"
VENV_STAMP = VENV / ".requirements.sha256"
ARTIFACTS = ROOT / "test-artifacts"
CLIENTS_TS = ROOT / "clients" / "ts"
CLIENTS_INSPECTOR = ROOT / "clients" / "inspector"
CLIENTS_THIRDPARTY = ROOT / "clients" / "thirdparty"
CLIENTS_CONFORMANCE = ROOT / "clients" / "conformance"
CLIENTS_ADMIN = ROOT / "clients" / "admin-browser"
CLIENTS_SSO_BROWSER = ROOT / "clients" / "sso-browser"
FUZZ = ROOT / "fuzz"
CARGO_FUZZ_VERSION = "0.13.2"
CHROMIUM = Path("/usr/bin/chromium")
STAGES = ("unit", "integration", "flow", "replicas", "clients", "conformance", "browser", "soak",
          "fuzz")
PYTHON_TESTS = ROOT / "python_tests"
REPLICAS_TESTS = PYTHON_TESTS / "replicas"
NGINX = Path("/usr/sbin/nginx")
# The replicas stage runs the Rust tests whose names contain `postgres` and are #[ignore]d
# (they need MCP_GATEWAY_TEST_DATABASE_URL): finding none is an error (a rename would
# otherwise silently drop the store contract tests against PostgreSQL).
REQUIRE_RUST_POSTGRES_TESTS = True

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CARGO_RESULT_RE = re.compile(
    r"test result: (?:ok|FAILED)\. (\d+) passed; (\d+) failed")
PLAIN_RESULT_RE = re.compile(
    r"^(?:\w+:\s*)?(\d+) passed, (\d+) failed(?:, \d+ skipped)?\s*$")


@dataclass
class StageResult:
    name: str
    passed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    # The failing tests by name, each with the first line of its failure, for the summary.
    failures: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        self.errors.append(msg)
        log(f"[run_tests] {self.name}: ERROR: {msg}")


def log(msg: str) -> None:
    print(msg, flush=True)


def banner(msg: str) -> None:
    log("")
    log(f"==== {msg} ====")


def base_env() -> dict:
    env = dict(os.environ)
    env.setdefault("CARGO_TERM_COLOR", "never")
    env.setdefault("NO_COLOR", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("PY_COLORS", "0")
    return env


def stage_timeout() -> float:
    try:
        return float(os.environ.get("STAGE_TIMEOUT", "1800"))
    except ValueError:
        return 1800.0


def run(cmd: list[str], *, cwd: Path = ROOT, env: dict | None = None,
        timeout: float | None = None, transcript: Path | None = None) -> tuple[int, str]:
    """Run cmd, streaming its combined output, and return (exit code, output).

    With a transcript file, the output goes there instead of the console (for chatty
    commands such as the fuzzers), and its last lines are shown when the command fails.
    The child runs in its own process group so that a stage timeout can stop
    it and whatever it started (by that group id, which is the child's PID).
    """
    log(f"$ {' '.join(cmd)}" + (f"   (in {cwd.relative_to(ROOT)})" if cwd != ROOT else ""))
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or base_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        return 127, f"cannot start {cmd[0]}: {e}"
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout or stage_timeout(), on_timeout)
    timer.daemon = True
    timer.start()
    chunks: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if transcript is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            chunks.append(line)
        code = proc.wait()
    finally:
        timer.cancel()
    out = ANSI_RE.sub("", "".join(chunks))
    if transcript is not None:
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_text(out)
        tail = out.splitlines()[-40:] if code != 0 else out.splitlines()[-1:]
        log("\n".join(tail))
        log(f"[run_tests] exit {code}; the whole output is in {transcript.relative_to(ROOT)}")
    if timed_out.is_set():
        out += "\n[run_tests] stage timed out\n"
        return 124, out
    return code, out


# -- environment setup ----------------------------------------------------------

def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(result: StageResult) -> bool:
    if not REQUIREMENTS.exists():
        result.error(f"{REQUIREMENTS.relative_to(ROOT)} is missing")
        return False
    want = hashlib.sha256(REQUIREMENTS.read_bytes()
                          + sys.version.encode()).hexdigest()
    if venv_python().exists() and VENV_STAMP.exists() and VENV_STAMP.read_text().strip() == want:
        log("[run_tests] .venv is up to date")
        return True
    if not venv_python().exists():
        log("[run_tests] creating .venv")
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except Exception as e:  # noqa: BLE001 - report any venv failure as a stage error
            result.error(f"cannot create .venv: {e}")
            return False
    code, _ = run([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
                   "-r", str(REQUIREMENTS)])
    if code != 0:
        result.error("pip install -r python_tests/requirements.txt failed")
        return False
    VENV_STAMP.write_text(want + "\n")
    return True


def target_dir() -> Path:
    raw = os.environ.get("CARGO_TARGET_DIR")
    if raw:
        p = Path(raw)
        return p if p.is_absolute() else ROOT / p
    return ROOT / "target"


def gateway_bin() -> Path:
    raw = os.environ.get("GATEWAY_BIN")
    if raw:
        p = Path(raw)
        return p if p.is_absolute() else ROOT / p
    return target_dir() / "debug" / "mcp-oauth-gateway"


def cargo_build(stages: list[str], result: StageResult) -> bool:
    if os.environ.get("RUN_TESTS_NO_BUILD") == "1":
        log("[run_tests] RUN_TESTS_NO_BUILD=1: skipping cargo build")
        return True
    banner("build")
    cmd = ["cargo", "build", "--all-targets"] if (
        "unit" in stages or "integration" in stages) else ["cargo", "build", "--bins"]
    code, _ = run(cmd)
    if code != 0:
        result.error(f"`{' '.join(cmd)}` exited {code}")
        return False
    return True


# -- stages -----------------------------------------------------------------------

CARGO_FAILED_RE = re.compile(r"^test (\S+) \.\.\. FAILED$", re.MULTILINE)


def parse_cargo(out: str, result: StageResult) -> int:
    result.failures.extend(CARGO_FAILED_RE.findall(out))
    found = 0
    for m in CARGO_RESULT_RE.finditer(out):
        result.passed += int(m.group(1))
        result.failed += int(m.group(2))
        found += 1
    return found


def stage_cargo(name: str, args: list[str]) -> StageResult:
    result = StageResult(name)
    banner(f"{name}: cargo {' '.join(args)}")
    code, out = run(["cargo", *args])
    found = parse_cargo(out, result)
    if code != 0 and result.failed == 0:
        result.error(f"cargo {' '.join(args)} exited {code}"
                     + ("" if found else " without a test result line"))
    return result


def parse_junit(path: Path, result: StageResult) -> bool:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return False
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for s in suites:
        tests = int(s.get("tests", 0))
        failures = int(s.get("failures", 0))
        errors = int(s.get("errors", 0))
        skipped = int(s.get("skipped", 0))
        result.passed += tests - failures - errors - skipped
        result.failed += failures + errors
        for case in s.iter("testcase"):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is None:
                continue
            first = (bad.get("message") or bad.text or "").strip().splitlines()
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            result.failures.append(name + (f": {first[0][:160]}" if first else ""))
    return True


def run_pytest(result: StageResult, args: list[str], junit_name: str, env: dict) -> None:
    """pytest ARGS in the venv, its junit report counted into RESULT; a run that wrote no
    report, ran no test or failed without a failing test is an error."""
    ARTIFACTS.mkdir(exist_ok=True)
    junit = ARTIFACTS / junit_name
    if junit.exists():
        junit.unlink()
    what = f"pytest {args[0]}"
    code, _ = run([str(venv_python()), "-m", "pytest", *args, "-q", "-rfE", "--color=no",
                   "-p", "no:cacheprovider", f"--junitxml={junit}"], env=env)
    before = result.passed + result.failed
    if not parse_junit(junit, result):
        result.error(f"{what} exited {code} and wrote no junit report")
    elif code == 5 or result.passed + result.failed == before:
        result.error(f"{what} ran no tests")
    elif code != 0 and result.failed == 0:
        result.error(f"{what} exited {code}")


def stage_flow(build_ok: bool) -> StageResult:
    result = StageResult("flow")
    banner("flow: pytest python_tests")
    binary = gateway_bin()
    if not binary.exists():
        result.error(f"gateway binary {binary} does not exist"
                     + ("" if build_ok else " (the build failed)"))
        return result
    if not ensure_venv(result):
        return result
    # Third-party servers the flow tests start (server-everything, oidc-provider), and the
    # official TypeScript SDK client some of them drive (routes, stdio/HTTP parity). A failed
    # install is reported, and the rest of the flow tests still run.
    ensure_node_modules(CLIENTS_THIRDPARTY, result)
    ensure_node_modules(CLIENTS_TS, result)
    env = base_env()
    env["GATEWAY_BIN"] = str(binary)
    # python_tests/replicas needs PostgreSQL and nginx: the replicas stage runs it.
    run_pytest(result, ["python_tests", f"--ignore={REPLICAS_TESTS}"], "pytest-junit.xml", env)
    return result


def lock_hash(pkg_dir: Path = CLIENTS_TS) -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        p = pkg_dir / name
        if p.exists():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def ensure_node_modules(pkg_dir: Path, result: StageResult) -> bool:
    """`npm ci` in pkg_dir unless node_modules matches package.json + package-lock.json."""
    rel = pkg_dir.relative_to(ROOT)
    modules = pkg_dir / "node_modules"
    stamp = modules / ".run_tests-lock.sha256"
    want = lock_hash(pkg_dir)
    lock = pkg_dir / "package-lock.json"
    npm_hidden_lock = modules / ".package-lock.json"  # written by npm on every install
    if modules.is_dir() and not stamp.exists() and lock.exists() and npm_hidden_lock.exists() \
            and npm_hidden_lock.stat().st_mtime >= lock.stat().st_mtime:
        # Installed by hand after the last lock change: adopt it instead of reinstalling.
        stamp.write_text(want + "\n")
    if modules.is_dir() and stamp.exists() and stamp.read_text().strip() == want:
        log(f"[run_tests] {rel}/node_modules is up to date")
        return True
    cmd = ["npm", "ci", "--no-audit", "--no-fund"] if lock.exists() else \
        ["npm", "install", "--no-audit", "--no-fund"]
    code, _ = run(cmd, cwd=pkg_dir)
    if code != 0:
        result.error(f"`{' '.join(cmd)}` in {rel} exited {code}")
        return False
    modules.mkdir(exist_ok=True)
    stamp.write_text(want + "\n")
    return True


def count_plain_result(out: str, code: int, result: StageResult, what: str) -> None:
    """Add the last `N passed, M failed` line of out to result (or judge by exit code)."""
    counts = [PLAIN_RESULT_RE.match(line.strip()) for line in out.splitlines()]
    counts = [m for m in counts if m]
    if counts:
        result.passed += int(counts[-1].group(1))
        result.failed += int(counts[-1].group(2))
        if code != 0 and result.failed == 0:
            result.error(f"{what} exited {code}")
    elif code == 0:
        result.passed += 1
    else:
        result.failed += 1


def stage_clients(build_ok: bool) -> StageResult:
    result = StageResult("clients")
    banner("clients: node clients/ts/run.mjs")
    if not (CLIENTS_TS / "package.json").exists():
        log("[run_tests] clients/ts/package.json not found: no client tests to run")
        return result
    script = CLIENTS_TS / "run.mjs"
    if not script.exists():
        result.error("clients/ts/package.json exists but clients/ts/run.mjs does not")
        return result
    binary = gateway_bin()
    if not binary.exists():
        result.error(f"gateway binary {binary} does not exist"
                     + ("" if build_ok else " (the build failed)"))
        return result
    if not ensure_node_modules(CLIENTS_TS, result):
        return result
    env = base_env()
    env["GATEWAY_BIN"] = str(binary)
    code, out = run(["node", str(script.relative_to(ROOT))], env=env)
    count_plain_result(out, code, result, "clients/ts/run.mjs")
    return result


def ensure_chromium(result: StageResult) -> bool:
    """Debian's Chromium at /usr/bin/chromium, installed with apt-get (as root) when missing."""
    if CHROMIUM.exists():
        return True
    log(f"[run_tests] {CHROMIUM} is missing: installing Debian's chromium with apt-get")
    if shutil.which("apt-get") is None:
        result.error(f"{CHROMIUM} is missing and apt-get is not available to install it "
                     "(install Debian's `chromium` package, or set CHROMIUM_BIN)")
        return False
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        result.error(f"{CHROMIUM} is missing and installing it with apt-get needs root "
                     "(run `apt-get install -y chromium` as root)")
        return False
    env = base_env()
    env["DEBIAN_FRONTEND"] = "noninteractive"
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        code, _ = run(cmd, env=env)
        if code != 0:
            result.error(f"`{' '.join(cmd)}` exited {code}")
            return False
    if not CHROMIUM.exists():
        result.error(f"apt-get installed chromium but {CHROMIUM} does not exist")
        return False
    return True


def apt_install(result: StageResult, package: str, missing: str) -> bool:
    """apt-get update + install -y package (as root); False (with a clear error) otherwise."""
    log(f"[run_tests] {missing} is missing: installing Debian's {package} with apt-get")
    if shutil.which("apt-get") is None:
        result.error(f"{missing} is missing and apt-get is not available to install it "
                     f"(install Debian's `{package}` package)")
        return False
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        result.error(f"{missing} is missing and installing it with apt-get needs root "
                     f"(run `apt-get install -y {package}` as root)")
        return False
    env = base_env()
    env["DEBIAN_FRONTEND"] = "noninteractive"
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        code, _ = run(cmd, env=env)
        if code != 0:
            result.error(f"`{' '.join(cmd)}` exited {code}")
            return False
    return True


def pg_bindir() -> Path | None:
    if str(PYTHON_TESTS) not in sys.path:
        sys.path.insert(0, str(PYTHON_TESTS))
    from pg_cluster import find_bindir  # noqa: PLC0415 - python_tests is not a package
    return find_bindir()


def ensure_postgresql(result: StageResult) -> bool:
    """PostgreSQL's server binaries (initdb, pg_ctl, psql), from apt-get when missing."""
    if pg_bindir() is not None:
        return True
    if not apt_install(result, "postgresql", "PostgreSQL (initdb, pg_ctl)"):
        return False
    if pg_bindir() is None:
        result.error("apt-get installed postgresql but no initdb/pg_ctl was found "
                     "in /usr/lib/postgresql/*/bin or on PATH")
        return False
    return True


def nginx_bin() -> Path | None:
    raw = os.environ.get("NGINX_BIN")
    if raw:
        return Path(raw)
    found = shutil.which("nginx")
    if found:
        return Path(found)
    return NGINX if NGINX.exists() else None


def ensure_nginx(result: StageResult) -> bool:
    """nginx on PATH or /usr/sbin/nginx (or $NGINX_BIN), from apt-get when missing."""
    if os.environ.get("NGINX_BIN"):
        if not Path(os.environ["NGINX_BIN"]).exists():
            result.error(f"NGINX_BIN={os.environ['NGINX_BIN']} does not exist")
            return False
        return True
    if nginx_bin() is not None:
        return True
    if not apt_install(result, "nginx", "nginx"):
        return False
    if nginx_bin() is None:
        result.error(f"apt-get installed nginx but it is neither on PATH nor at {NGINX}")
        return False
    return True


def stage_replicas(build_ok: bool) -> StageResult:
    """Rust tests against a real PostgreSQL, then replicas behind nginx (python_tests/replicas)."""
    result = StageResult("replicas")
    banner("replicas: cargo test --lib -- --ignored postgres; pytest python_tests/replicas")
    binary = gateway_bin()
    if not binary.exists():
        result.error(f"gateway binary {binary} does not exist"
                     + ("" if build_ok else " (the build failed)"))
        return result
    if not ensure_venv(result):
        return result
    if not ensure_postgresql(result) or not ensure_nginx(result):
        return result

    # (b) The Rust side's PostgreSQL tests: #[ignore]d, named *postgres*, given a server in
    # MCP_GATEWAY_TEST_DATABASE_URL on which they create their own databases.
    if not build_ok:
        result.error("cargo test --lib -- --ignored postgres: skipped, the build failed")
    else:
        from pg_cluster import PgCluster, PgClusterError  # noqa: PLC0415 - see pg_bindir
        args = ["test", "--lib", "--", "--ignored", "postgres"]
        try:
            with PgCluster() as pg:
                log(f"[run_tests] PostgreSQL cluster for the Rust tests at {pg.url()}")
                env = base_env()
                env["MCP_GATEWAY_TEST_DATABASE_URL"] = pg.url("postgres")
                code, out = run(["cargo", *args], env=env)
        except PgClusterError as e:
            result.error(f"cannot run a PostgreSQL cluster: {e}")
        else:
            before = result.passed + result.failed
            found = parse_cargo(out, result)
            ran = result.passed + result.failed - before
            if code != 0 and result.failed == 0:
                result.error(f"cargo {' '.join(args)} exited {code}"
                             + ("" if found else " without a test result line"))
            elif ran == 0:
                if REQUIRE_RUST_POSTGRES_TESTS:
                    result.error("cargo test --lib -- --ignored postgres ran no tests")
                else:
                    log("[run_tests] replicas: no Rust postgres tests yet (0 ran); "
                        "not an error while REQUIRE_RUST_POSTGRES_TESTS is False")

    # (c) Replicas behind nginx. The tests start their own clusters and nginx; one runs the
    # official TypeScript SDK client through the balancer.
    ensure_node_modules(CLIENTS_TS, result)
    env = base_env()
    env["GATEWAY_BIN"] = str(binary)
    nginx = nginx_bin()
    if nginx is not None:
        env["NGINX_BIN"] = str(nginx)
    run_pytest(result, [str(REPLICAS_TESTS.relative_to(ROOT)), "-rs"],
               "pytest-replicas-junit.xml", env)
    return result


def stage_browser(build_ok: bool) -> StageResult:
    result = StageResult("browser")
    banner("browser: node clients/inspector/run.mjs (MCP Inspector in headless Chromium)")
    script = CLIENTS_INSPECTOR / "run.mjs"
    if not (CLIENTS_INSPECTOR / "package.json").exists() or not script.exists():
        result.error("clients/inspector/package.json or run.mjs is missing")
        return result
    binary = gateway_bin()
    if not binary.exists():
        result.error(f"gateway binary {binary} does not exist"
                     + ("" if build_ok else " (the build failed)"))
        return result
    if os.environ.get("CHROMIUM_BIN"):
        if not Path(os.environ["CHROMIUM_BIN"]).exists():
            result.error(f"CHROMIUM_BIN={os.environ['CHROMIUM_BIN']} does not exist")
            return result
    elif not ensure_chromium(result):
        return result
    if not ensure_node_modules(CLIENTS_INSPECTOR, result):
        return result
    ARTIFACTS.mkdir(exist_ok=True)
    env = base_env()
    env["GATEWAY_BIN"] = str(binary)
    code, out = run(["node", str(script.relative_to(ROOT))], env=env, timeout=min(600.0, stage_timeout()))
    count_plain_result(out, code, result, "clients/inspector/run.mjs")
    # The operator's page, revoked from a real browser.
    admin = CLIENTS_ADMIN / "run.mjs"
    if not admin.exists():
        result.error("clients/admin-browser/run.mjs is missing")
        return result
    if not ensure_node_modules(CLIENTS_ADMIN, result):
        return result
    code, out = run(["node", str(admin.relative_to(ROOT))], env=env, timeout=min(600.0, stage_timeout()))
    count_plain_result(out, code, result, "clients/admin-browser/run.mjs")
    # Sign-in at the organisation's identity provider (oidc-provider in clients/thirdparty),
    # from the TS SDK client through the provider's pages to whoami.
    sso = CLIENTS_SSO_BROWSER / "run.mjs"
    if not sso.exists():
        result.error("clients/sso-browser/run.mjs is missing")
        return result
    if not ensure_node_modules(CLIENTS_SSO_BROWSER, result) \
            or not ensure_node_modules(CLIENTS_THIRDPARTY, result):
        return result
    code, out = run(["node", str(sso.relative_to(ROOT))], env=env, timeout=min(600.0, stage_timeout()))
    count_plain_result(out, code, result, "clients/sso-browser/run.mjs")
    return result


def stage_conformance(build_ok: bool) -> StageResult:
    result = StageResult("conformance")
    banner("conformance: node clients/conformance/run.mjs (client --suite auth)")
    binary = gateway_bin()
    if not binary.exists():
        result.error(f"gateway binary {binary} does not exist"
                     + ("" if build_ok else " (the build failed)"))
        return result
    if not ensure_node_modules(CLIENTS_CONFORMANCE, result):
        return result
    ARTIFACTS.mkdir(exist_ok=True)
    env = base_env()
    env["GATEWAY_BIN"] = str(binary)
    code, out = run(["node", "clients/conformance/run.mjs"], env=env,
                    timeout=min(600.0, stage_timeout()))
    count_plain_result(out, code, result, "clients/conformance/run.mjs")
    return result


def ensure_cargo_fuzz(result: StageResult) -> bool:
    code, _ = run(["cargo", "fuzz", "--version"])
    if code == 0:
        return True
    code, _ = run(["cargo", "install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])
    if code != 0:
        result.error(f"`cargo install cargo-fuzz` exited {code}")
        return False
    return True


def stage_fuzz() -> StageResult:
    """Each target runs for a bounded time; a crash or a failed invariant fails it."""
    result = StageResult("fuzz")
    banner("fuzz: cargo fuzz (stable toolchain, no sanitizer)")
    if not ensure_cargo_fuzz(result):
        return result
    code, out = run(["cargo", "fuzz", "list"], cwd=FUZZ)
    targets = [t.strip() for t in out.splitlines() if t.strip() and not t.startswith("$")]
    if code != 0 or not targets:
        result.error("`cargo fuzz list` found no targets")
        return result
    code, _ = run(["cargo", "fuzz", "build", "-s", "none", "--dev"], cwd=FUZZ)
    if code != 0:
        result.error(f"`cargo fuzz build` exited {code}")
        return result
    seconds = os.environ.get("FUZZ_SECONDS", "20")
    for target in targets:
        code, _ = run(["cargo", "fuzz", "run", "-s", "none", "--dev", target, "--",
                       f"-max_total_time={seconds}"], cwd=FUZZ,
                      transcript=ARTIFACTS / f"fuzz-{target}.log")
        if code == 0:
            result.passed += 1
        else:
            result.failed += 1
            result.failures.append(f"fuzz target {target} (see fuzz/artifacts/{target}/)")
            log(f"[run_tests] fuzz target {target} failed (see fuzz/artifacts/{target}/)")
    return result


# -- main ---------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    which = argv[1] if len(argv) > 1 else "all"
    if which in ("-h", "--help"):
        log(__doc__.strip())
        return 0
    if which != "all" and which not in STAGES:
        log(f"usage: python3 run_tests.py [{'|'.join(STAGES)}|all]")
        return 2
    stages = list(STAGES) if which == "all" else [which]

    results: list[StageResult] = []
    build = StageResult("build")
    build_ok = cargo_build(stages, build)
    results.append(build)

    for stage in stages:
        if stage == "unit":
            if build_ok:
                results.append(stage_cargo("unit", ["test", "--lib", "--bins"]))
            else:
                r = StageResult("unit")
                r.error("skipped: the build failed")
                results.append(r)
        elif stage == "integration":
            if not build_ok:
                r = StageResult("integration")
                r.error("skipped: the build failed")
                results.append(r)
            elif not (ROOT / "tests" / "integration").is_dir():
                r = StageResult("integration")
                r.error("tests/integration is missing")
                results.append(r)
            else:
                results.append(stage_cargo("integration", ["test", "--test", "integration"]))
        elif stage == "flow":
            results.append(stage_flow(build_ok))
        elif stage == "replicas":
            results.append(stage_replicas(build_ok))
        elif stage == "clients":
            results.append(stage_clients(build_ok))
        elif stage == "conformance":
            results.append(stage_conformance(build_ok))
        elif stage == "browser":
            results.append(stage_browser(build_ok))
        elif stage == "soak":
            if build_ok:
                results.append(stage_cargo(
                    "soak", ["test", "--test", "integration", "soak", "--", "--ignored",
                             "--nocapture"]))
            else:
                r = StageResult("soak")
                r.error("skipped: the build failed")
                results.append(r)
        elif stage == "fuzz":
            results.append(stage_fuzz())

    banner("summary")
    passed = failed = 0
    errored = False
    for r in results:
        if r.name == "build" and not r.errors:
            continue
        # A stage that could not run counts as one failure so the total shows it.
        extra = 1 if r.errors and r.failed == 0 else 0
        passed += r.passed
        failed += r.failed + extra
        errored = errored or bool(r.errors)
        status = "ERROR" if r.errors else ("FAILED" if r.failed else "ok")
        log(f"{r.name:<12} {status:<6} {r.passed} passed, {r.failed} failed"
            + (f"  ({'; '.join(r.errors)})" if r.errors else ""))
        for name in r.failures:
            log(f"    failed: {name}")
    log(f"{passed} passed, {failed} failed")
    return 1 if (failed or errored) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
