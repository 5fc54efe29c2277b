"""The deploy files hold what they promise: deploy/mcp-oauth-gateway.service (systemd) and
deploy/Dockerfile (with .dockerignore).

- The unit passes `systemd-analyze verify` with no warning, also with its opt-in
  credential and low-port examples uncommented, and `systemd-analyze security` scores
  it well; it has the hardening, and its flags and variables are the gateway's real ones.
- The gateway runs the way the unit starts it (its ExecStart flags, its Environment=, the
  state, cache and log directories it asks systemd for, here temporary ones), with
  NoNewPrivileges, MemoryDenyWriteExecute (as the kernel's PR_SET_MDWE, the same rule
  systemd enforces with seccomp) and UMask applied: /healthz answers, a stdio upstream
  child gets the writable HOME the unit gives it, the state directory stays private, and
  SIGTERM ends it cleanly within TimeoutStopSec.
- The Dockerfile is multi-stage with a non-root user, a data volume and a HEALTHCHECK on
  /healthz, whose very command is run here against a real gateway; .dockerignore lets
  through what cargo needs and nothing heavy. With a working container engine the image
  is built and run; without one that test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest

from flow import McpClient, full_flow, result_text
from gateway_proc import REPO_ROOT, Gateway, gateway_binary

DEPLOY = REPO_ROOT / "deploy"
UNIT_FILE = DEPLOY / "mcp-oauth-gateway.service"
UNIT_NAME = UNIT_FILE.name
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENV_EXAMPLE = DEPLOY / "gateway.env.example"
ENV_REPORT_SERVER = Path(__file__).resolve().parent / "env_report_server.py"

INSTALLED_BINARY = "/usr/local/bin/mcp-oauth-gateway"
INSTALLED_CONFIG = "/etc/mcp-oauth-gateway/gateway.toml"
# `systemd-analyze security` gave 1.6 ("OK") when this was written; 10 is "UNSAFE".
MAX_EXPOSURE = 2.0

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


# -- reading the unit ------------------------------------------------------------------

def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value) in file order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"a setting before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


class Unit:
    def __init__(self, text: str):
        self.text = text
        self.sections = parse_unit(text)

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str | None:
        """The effective value of a single-valued setting: the last one."""
        found = self.values(section, key)
        return found[-1] if found else None

    def service(self, key: str) -> str | None:
        return self.value("Service", key)

    def list_setting(self, key: str) -> list[str]:
        """A list setting (RestrictAddressFamilies=, ...): an empty assignment resets it."""
        items: list[str] = []
        for v in self.values("Service", key):
            items = [] if not v else items + v.split()
        return items

    def exec_start(self) -> list[str]:
        line = self.service("ExecStart")
        assert line, "no ExecStart="
        return shlex.split(line.lstrip("-@:+!"))

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for v in self.values("Service", "Environment"):
            for item in shlex.split(v):
                name, _, value = item.partition("=")
                env[name] = value
        return env

    def directories(self) -> dict[str, Path]:
        """The directories systemd makes writable for the service, by setting."""
        roots = {"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache",
                 "LogsDirectory": "/var/log", "RuntimeDirectory": "/run"}
        out = {}
        for key, root in roots.items():
            v = self.service(key)
            if v:
                out[key] = Path(root) / v.split()[0]
        return out


@pytest.fixture(scope="module")
def unit() -> Unit:
    return Unit(UNIT_FILE.read_text())


def option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def gateway_help() -> str:
    binary = gateway_binary()
    assert binary.exists(), f"gateway binary not found at {binary} (set GATEWAY_BIN or build it)"
    return subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def default_shutdown_timeout() -> int:
    m = re.search(r"shutdown_timeout_seconds:\s*(\d+)", (REPO_ROOT / "src" / "config" / "mod.rs").read_text())
    assert m, "no default shutdown_timeout_seconds in src/config/mod.rs"
    return int(m.group(1))


def seconds(value: str) -> float:
    """A systemd time span of the plain kinds used here: `15`, `15s`, `2min`, `500ms`."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m)?", value.strip())
    assert m, f"unsupported time span {value!r}"
    n = float(m.group(1))
    return n * {"ms": 0.001, "min": 60, "m": 60}.get(m.group(2) or "s", 1)


# -- the unit, statically ----------------------------------------------------------------

def test_unit_has_the_hardening(unit):
    s = unit.service
    # Who it runs as, and the one place it writes its state.
    assert s("DynamicUser") == "yes" or s("User"), "runs as root"
    assert s("StateDirectory") == "mcp-oauth-gateway"
    argv = unit.exec_start()
    assert argv[0] == INSTALLED_BINARY
    assert option(argv, "--config") == INSTALLED_CONFIG
    assert option(argv, "--data-dir") == str(unit.directories()["StateDirectory"]), \
        "the data dir is not the StateDirectory"
    assert "-/etc/mcp-oauth-gateway/gateway.env" in unit.values("Service", "EnvironmentFile")

    # The sandbox.
    for key, want in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
    }.items():
        assert s(key) == want, f"{key}={s(key)!r}, want {want!r}"
    assert sorted(unit.list_setting("RestrictAddressFamilies")) == ["AF_INET", "AF_INET6",
                                                                   "AF_UNIX"]
    assert "@system-service" in unit.list_setting("SystemCallFilter")
    assert unit.values("Service", "CapabilityBoundingSet")[-1:] == [""], \
        "CapabilityBoundingSet= must end empty"
    assert not unit.values("Service", "AmbientCapabilities")

    # Stopping and restarting: SIGTERM drains for shutdown_timeout_seconds, so systemd must
    # wait a little longer than that before SIGKILL.
    assert s("Type") in ("simple", "exec")
    assert s("KillSignal") in (None, "SIGTERM", "TERM")
    assert s("Restart") == "on-failure"
    assert s("RestartSec")
    drain = default_shutdown_timeout()
    assert drain < seconds(s("TimeoutStopSec") or "90") <= drain + 30

    assert unit.value("Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in unit.values("Unit", "After")
    assert "network-online.target" in unit.values("Unit", "Wants")


def test_unit_gives_stdio_children_a_writable_home(unit):
    # ProtectSystem=strict and a dynamic user (home `/`): HOME must be one of the
    # directories systemd makes writable, or `npx` upstreams cannot keep their cache.
    home = unit.environment().get("HOME")
    assert home, "no Environment=HOME= for upstream_cmd children"
    writable = unit.directories().values()
    assert any(Path(home) == d or d in Path(home).parents for d in writable), \
        f"HOME={home} is not in a directory the unit makes writable ({list(writable)})"


def test_unit_flags_and_variables_are_the_gateways(unit):
    help_text = gateway_help()
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    for arg in unit.exec_start()[1:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in flags, f"ExecStart names {arg}, not a gateway flag"
    # Every MCP_GATEWAY_* variable any deploy file mentions, commented examples included,
    # is one the gateway reads: MCP_GATEWAY_<KEY> for a key `config check` lists, or a
    # name the code reads itself (the config file's path, default secret_env names).
    check = subprocess.run([str(gateway_binary()), "config", "check"], capture_output=True,
                           text=True, timeout=30, check=True).stdout
    keys = set(re.findall(r"^\[?([a-z0-9_]+)\]? ", check, re.MULTILINE))
    keys |= {k.strip() for line in check.splitlines() if line.startswith("# not set:")
             for k in line.removeprefix("# not set:").split(",")}
    assert {"proxy_addr", "data_dir", "key_encryption_key_file", "external"} <= keys, keys
    code = "".join(p.read_text() for p in (REPO_ROOT / "src").rglob("*.rs"))
    for path in (UNIT_FILE, DOCKERFILE, ENV_EXAMPLE):
        if path.exists():
            for name in sorted(set(re.findall(r"MCP_GATEWAY_[A-Z0-9_]+", path.read_text()))):
                key = name.removeprefix("MCP_GATEWAY_").lower().split("__")[0]
                assert key in keys or f'"{name}"' in code, \
                    f"{path.name} names {name}, which the gateway never reads"


def test_unit_credentials_point_the_gateway_at_their_files(unit):
    # Each commented LoadCredential=NAME example is read by a setting that names %d/NAME or
    # /run/credentials/<unit>/NAME.
    names = re.findall(r"^#LoadCredential=([^:\s]+):/etc/", unit.text, re.M)
    assert names, "no LoadCredential= examples"
    for name in names:
        assert (f"%d/{name}" in unit.text
                or f"/run/credentials/{UNIT_NAME}/{name}" in unit.text), \
            f"credential {name} is loaded but no setting reads it"


# -- systemd-analyze ----------------------------------------------------------------------

def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed")
    return path


def installable_copy(text: str, directory: Path) -> Path:
    """The unit with its ExecStart binary replaced by the built one (verify checks that it
    exists and is executable), under the unit's own name."""
    binary = gateway_binary()
    assert binary.exists(), f"gateway binary not found at {binary}"
    pattern = re.compile(r"^(ExecStart=[-@:+!]*)" + re.escape(INSTALLED_BINARY) + r"(?=\s)", re.M)
    text, n = pattern.subn(lambda m: m.group(1) + str(binary), text)
    assert n == 1, "ExecStart does not run " + INSTALLED_BINARY
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT_NAME
    path.write_text(text)
    return path


OTHER_UNIT_LINE = re.compile(
    r"^(?:\S*/)?(?P<unit>[\w@:.\\-]+\.(?:service|socket|target|mount|automount|swap|path"
    r"|timer|slice|scope|device))\b")


def verify_unit(path: Path) -> None:
    r = subprocess.run([systemd_analyze(), "verify", "--man=no", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    output = (r.stdout + r.stderr).splitlines()
    # Only what is said about other units (the machine's own) is not ours to judge.
    ours = [line for line in output
            if line.strip() and ((m := OTHER_UNIT_LINE.match(line)) is None
                                 or m.group("unit") == UNIT_NAME)]
    assert r.returncode == 0 and not ours, \
        f"systemd-analyze verify (exit {r.returncode}):\n" + "\n".join(output)


def test_unit_passes_systemd_analyze_verify(unit, tmp_path):
    verify_unit(installable_copy(unit.text, tmp_path / "as-shipped"))


def test_unit_opt_in_examples_pass_systemd_analyze_verify(unit, tmp_path):
    # The commented credentials (LoadCredential=, Environment= with %d) and the low-port
    # alternative, uncommented: what an operator copying them gets must verify too.
    text, n = re.subn(r"^#((?:LoadCredential|Environment)=)", r"\1", unit.text, flags=re.M)
    text, m = re.subn(r"^#\s+((?:CapabilityBoundingSet|AmbientCapabilities)=\S+)$", r"\1",
                      text, flags=re.M)
    assert n >= 4 and m == 2, (n, m)
    verify_unit(installable_copy(text, tmp_path / "opted-in"))


def test_unit_exposure_score_is_low(unit, tmp_path):
    path = installable_copy(unit.text, tmp_path / "security")
    r = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--no-pager", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    output = r.stdout + r.stderr
    if r.returncode != 0 and re.search(r"unrecognized option|unknown option", output):
        pytest.skip("this systemd-analyze cannot score a unit file offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert r.returncode == 0 and m, output
    assert float(m.group(1)) < MAX_EXPOSURE, output


# -- the gateway, started the way the unit starts it ---------------------------------------

def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3+), tried in a throw-away process."""
    code = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
            f"sys.exit(0 if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 "
            "else 1)")
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def sandbox_wrapper(directory: Path, target: str, *, mdwe: bool, umask: int) -> Path:
    """An executable that applies what the kernel can do without systemd (no new
    privileges, no writable+executable memory, the umask), then execs `target` with the
    same arguments and pid, so stopping it signals the target."""
    path = directory / "sandboxed"
    path.write_text(f"""#!{sys.executable}
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_NO_NEW_PRIVS}, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_NO_NEW_PRIVS failed")
if {mdwe!r} and libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed")
os.umask({umask:#o})
os.execv({target!r}, [{target!r}, *sys.argv[1:]])
""")
    path.chmod(0o755)
    return path


def test_gateway_runs_as_the_unit_starts_it(unit, tmp_path, http):
    # The directories systemd would make, here under tmp_path, with the unit's modes.
    moved: dict[str, Path] = {}
    for key, system_path in unit.directories().items():
        local = tmp_path / system_path.relative_to("/")
        local.mkdir(parents=True)
        local.chmod(int(unit.service(f"{key}Mode") or "0755", 8))
        moved[str(system_path)] = local

    def relocate(value: str) -> str:
        for system_path, local in moved.items():
            if value == system_path or value.startswith(system_path + "/"):
                return str(local) + value[len(system_path):]
        return value

    # /etc/mcp-oauth-gateway/gateway.toml as an operator with a stdio upstream writes it.
    config = tmp_path / INSTALLED_CONFIG.lstrip("/")
    config.parent.mkdir(parents=True)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(ENV_REPORT_SERVER))}"
    config.write_text(f"upstream_cmd = {json.dumps(command)}\n")

    argv = unit.exec_start()
    args, data_dir = [], None
    i = 1
    while i < len(argv):
        if argv[i] == "--data-dir":
            data_dir = Path(relocate(argv[i + 1]))
            i += 2
            continue
        args.append(str(config) if argv[i] == INSTALLED_CONFIG else relocate(argv[i]))
        i += 1
    assert data_dir is not None
    env = {name: relocate(value) for name, value in unit.environment().items()}

    mdwe = unit.service("MemoryDenyWriteExecute") == "yes" and mdwe_supported()
    umask = int(unit.service("UMask") or "0022", 8)
    wrapper = sandbox_wrapper(tmp_path, str(gateway_binary()), mdwe=mdwe, umask=umask)
    gw = Gateway(data_dir, args, binary=wrapper, env=env)
    try:
        gw.start()
        status = Path(f"/proc/{gw.proc.pid}/status")
        if status.exists():
            assert "NoNewPrivs:\t1" in status.read_text(), "the sandbox wrapper did not apply"
        r = http.get(f"{gw.base}/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
        assert http.get(f"{gw.base}/readyz").status_code == 200

        # The stdio child: started with the unit's HOME (relocated), nothing else of it.
        tokens = full_flow(http, gw.base)
        mcp = McpClient(http, gw.base, tokens.access_token)
        assert mcp.initialize().status == 200
        child_env = json.loads(result_text(mcp.call_tool("environment", {}).result))
        assert child_env.get("HOME") == env["HOME"], child_env
        assert os.access(child_env["HOME"], os.W_OK)

        # State stays private: the gateway's own 0700/0600, and the umask for the rest.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for f in data_dir.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f"{f.name} is readable by others"

        # SIGTERM (KillSignal=): a clean exit well before systemd would SIGKILL.
        t0 = time.monotonic()
        code = gw.stop()
        took = time.monotonic() - t0
    except BaseException:
        print(gw.log_tail(200))
        raise
    finally:
        gw.stop()
    assert code == 0, f"exit code {code} on SIGTERM\n{gw.log_tail()}"
    assert took < seconds(unit.service("TimeoutStopSec") or "90")


def test_memory_deny_write_execute_and_node_stdio_upstreams(unit):
    # The unit keeps MemoryDenyWriteExecute=yes and says how Node.js upstreams live with it
    # (NODE_OPTIONS=--jitless) or without it: both halves of that comment hold.
    if unit.service("MemoryDenyWriteExecute") != "yes":
        pytest.skip("the unit does not set MemoryDenyWriteExecute=yes")
    assert 'NODE_OPTIONS = "--jitless"' in unit.text
    assert "MemoryDenyWriteExecute=no" in unit.text
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    if not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    with tempfile.TemporaryDirectory() as d:
        wrapper = sandbox_wrapper(Path(d), node, mdwe=True, umask=0o077)
        script = "let s = 0; for (let i = 0; i < 1e6; i++) s += i; console.log(s)"
        env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
        jit = subprocess.run([str(wrapper), "-e", script], capture_output=True, text=True,
                             timeout=60, env=env)
        jitless = subprocess.run([str(wrapper), "-e", script], capture_output=True, text=True,
                                 timeout=60, env={**env, "NODE_OPTIONS": "--jitless"})
    assert jit.returncode != 0, "node's JIT ran under MDWE: the unit's comment is out of date"
    assert jitless.returncode == 0 and jitless.stdout.strip() == "499999500000", jitless.stderr


# -- the Dockerfile ----------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if (not pending and not line) or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, rest in dockerfile_instructions(text):
        if instruction == "FROM":
            result.append([])
        assert result, f"{instruction} before FROM"
        result[-1].append((instruction, rest))
    return result


def args_of(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def image_env(stage) -> dict[str, str]:
    env = {}
    for instruction, rest in stage:
        if instruction == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def healthcheck_command(stage) -> list[str]:
    [rest] = [r for i, r in stage if i == "HEALTHCHECK"]
    cmd = rest[rest.index("CMD ") + 4:].strip()
    return json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_dockerfile_is_multi_stage_non_root_with_volume_and_healthcheck(dockerfile):
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "not a multi-stage build"
    build, final = all_stages[0], all_stages[-1]
    m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", build[0][1], re.I)
    assert m, f"the build stage has no name: FROM {build[0][1]}"
    builder_name = m.group(2)
    assert m.group(1).startswith("rust:")
    assert any(i == "RUN" and "cargo build --release --locked" in r
               and "--bin mcp-oauth-gateway" in r for i, r in build)
    assert any(i == "COPY" and f"--from={builder_name}" in r for i, r in final), \
        "the runtime stage copies nothing from the build stage"
    assert not final[0][1].startswith("rust:"), "the runtime image is the toolchain"

    users = [r for i, r in final if i == "USER"]
    assert users, "no USER: the container runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]}"

    env = image_env(final)
    data_dir = env.get("MCP_GATEWAY_DATA_DIR")
    assert data_dir, "no MCP_GATEWAY_DATA_DIR"
    volumes = [v for i, r in final if i == "VOLUME" for v in args_of(r)]
    assert data_dir in volumes, f"the data dir {data_dir} is not a VOLUME ({volumes})"
    port = env.get("MCP_GATEWAY_PROXY_ADDR", "").rsplit(":", 1)[-1]
    exposed = [p.split("/")[0] for i, r in final if i == "EXPOSE" for p in r.split()]
    assert port and port in exposed, (port, exposed)

    health = " ".join(healthcheck_command(final))
    assert "/healthz" in health
    entrypoint = [args_of(r) for i, r in final if i == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["mcp-oauth-gateway"], entrypoint


def closed_port() -> tuple[socket.socket, int]:
    """A port bound on 127.0.0.1 with no listener: connections are refused, and nobody
    else can take it while the socket stays open."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def run_healthcheck(command: list[str], proxy_addr: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MCP_GATEWAY_PROXY_ADDR": proxy_addr})


def test_dockerfile_healthcheck_command_probes_a_real_gateway(dockerfile, gateway):
    # The HEALTHCHECK's own command, with the image's MCP_GATEWAY_PROXY_ADDR but the port
    # of a gateway running here.
    final = stages(dockerfile)[-1]
    command = healthcheck_command(final)
    if not shutil.which(command[0]):
        pytest.skip(f"{command[0]} is not installed")
    host = image_env(final)["MCP_GATEWAY_PROXY_ADDR"].rsplit(":", 1)[0]
    port = gateway.proxy_addr.rsplit(":", 1)[1]
    ok = run_healthcheck(command, f"{host}:{port}")
    assert ok.returncode == 0, ok.stderr
    sock, dead = closed_port()
    with sock:
        down = run_healthcheck(command, f"{host}:{dead}")
    assert down.returncode != 0, "healthy with nothing listening"


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern[1:] if negate else pattern
        p = p.strip("/")
        rx = re.compile("".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?"
            else re.escape(tok) for tok in re.findall(r"\*\*|\*|\?|[^*?]+", p)) + r"\Z")
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_cargo_needs_and_nothing_heavy():
    assert DOCKERIGNORE.exists(), "no .dockerignore: target/ (many GB) would be sent"
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    manifest = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())
    needed = {"Cargo.toml", "Cargo.lock", manifest["package"].get("build", "build.rs")}
    needed.add(manifest.get("lib", {}).get("path", "src/lib.rs"))
    for b in manifest.get("bin", []):
        needed.add(b.get("path", f"src/bin/{b['name']}.rs"))
    for b in manifest.get("bench", []):  # cargo resolves these even for a --bin build
        needed.add(b.get("path", f"benches/{b['name']}.rs"))
    needed |= {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "src").rglob("*")
               if p.is_file()}
    left_out = sorted(p for p in needed if dockerignore_excludes(patterns, p))
    assert not left_out, f".dockerignore leaves out {left_out}"
    for heavy in ("target/release/mcp-oauth-gateway", ".venv/bin/python",
                  "clients/ts/node_modules/x", "data/signing-key.pem", "test-artifacts/a.png",
                  "python_tests/test_deploy.py"):
        assert dockerignore_excludes(patterns, heavy), f".dockerignore sends {heavy}"


# -- the image, where a container engine runs ----------------------------------------------

def container_engine() -> str:
    reasons = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if not path:
            continue
        r = subprocess.run([path, "info"], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return path
        reasons.append(f"{name} is on PATH but `{name} info` failed: "
                       + (r.stderr.strip().splitlines() or ["?"])[-1])
    pytest.skip("no container engine: the Dockerfile is not built here"
                + (f" ({'; '.join(reasons)})" if reasons else ""))


def test_image_builds_runs_and_answers_healthz(dockerfile, http):
    engine = container_engine()
    tag = "mcp-oauth-gateway:test-deploy"
    build = subprocess.run([engine, "build", "-f", str(DOCKERFILE), "-t", tag, "."],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, (build.stdout + build.stderr)[-5000:]

    version = subprocess.run([engine, "run", "--rm", tag, "--version"], capture_output=True,
                             text=True, timeout=120)
    assert version.returncode == 0 and "mcp-oauth-gateway" in version.stdout, version.stderr

    run = subprocess.run([engine, "run", "-d", "-p", "127.0.0.1::3002",
                          "-e", "MCP_GATEWAY_PUBLIC_URL=http://localhost:3002", tag],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    logs = subprocess.Popen([engine, "logs", "-f", container], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    seen: list[str] = []

    def read_logs():
        for line in logs.stdout:
            seen.append(line)
            if "listening proxy=" in line:
                ready.set()
        ready.set()  # the log ended: the container stopped

    threading.Thread(target=read_logs, daemon=True).start()
    try:
        assert ready.wait(120) and any("listening proxy=" in x for x in seen), "".join(seen)
        mapped = subprocess.run([engine, "port", container, "3002/tcp"], capture_output=True,
                                text=True, timeout=60, check=True).stdout.split()[0]
        r = http.get(f"http://{mapped}/healthz")
        assert r.status_code == 200, r.text
        uid = subprocess.run([engine, "exec", container, "id", "-u"], capture_output=True,
                             text=True, timeout=60)
        assert uid.stdout.strip() not in ("", "0"), uid
        probe = subprocess.run([engine, "exec", container, *healthcheck_command(
            stages(dockerfile)[-1])], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        subprocess.run([engine, "stop", "-t", "15", container], capture_output=True,
                       timeout=60, check=True)
        code = subprocess.run([engine, "inspect", "-f", "{{.State.ExitCode}}", container],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert code == "0", f"exit code {code} on docker stop\n{''.join(seen)}"
    finally:
        subprocess.run([engine, "rm", "-f", "-v", container], capture_output=True, timeout=60)
        if logs.poll() is None:
            logs.send_signal(signal.SIGTERM)
        logs.wait(timeout=30)
