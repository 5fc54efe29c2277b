"""`mcp-oauth-gateway client` commands beyond `tools` and `call`, against a real gateway.

The gateway runs with --auto-approve and the client with --headless, so the whole
authorization (discovery, registration, PKCE, consent) happens without a person. Covered:

- `--json` on every command: one JSON document on stdout, with the fields a script needs;
  an error is `{"error": ...}` and exit code 1;
- `resources` (list, `read URI`) and `prompts` (list, `get NAME`) against the built-in server;
- `token`: a JWT for this resource that /mcp accepts, never on stderr (not even --verbose);
- `logout`: the refresh token is revoked at /revoke (then refused by /token), the cache
  forgotten, and it says what it did;
- progress: server-everything's trigger-long-running-operation reports progress for the
  progressToken the client sends, one stderr line per notification;
- the one-line reason before asking again: 403 insufficient_scope, and a refresh refused
  with invalid_grant.

Every process here is started by the test and stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from flow import McpClient, now, refresh, unverified_claims
from gateway_proc import gateway_binary
# The server-everything fixture: one per test, its log shown when the test fails.
from test_upstream_everything import everything  # noqa: F401

CLIENT_TIMEOUT = 120


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def ok(self) -> bool:
        return self.code == 0

    def json(self):
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"stdout is not one JSON document ({e}):\n{self.stdout}\n"
                                 f"stderr:\n{self.stderr}") from e

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def client(cache: Path, *args: str) -> Run:
    """The real binary's `client` subcommand, headless, with its own cache directory."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MCP_CLIENT_ID", "MCP_CLIENT_SECRET", "MCP_CLIENT_CACHE_DIR")}
    proc = subprocess.run(
        [str(gateway_binary()), "client", "--headless", "--cache-dir", str(cache), *args],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=env,
        stdin=subprocess.DEVNULL)
    return Run(proc)


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json")) if cache.exists() else []


def only_entry(cache: Path) -> dict:
    files = cache_files(cache)
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture
def gw(gateway_factory):
    return gateway_factory("--auto-approve")


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "client-cache"


# -- --json, resources, prompts ---------------------------------------------------------

def test_json_tools_and_call(gw, cache):
    url = gw.mcp_url
    run = client(cache, "--json", url, "tools")
    assert run.ok, run
    tools = {t["name"]: t for t in run.json()["tools"]}
    assert {"echo", "whoami", "list_notes"} <= set(tools), tools
    assert tools["echo"]["description"].startswith("Echo a message back"), tools["echo"]
    assert "inputSchema" in tools["echo"], tools["echo"]

    text = client(cache, url, "tools")
    assert text.ok, text
    assert "echo: Echo a message back" in text.stdout.splitlines(), text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.stdout)

    marker = "json " + secrets.token_hex(4)
    run = client(cache, url, "call", "echo", f"message={marker}", "--json")
    assert run.ok, run
    result = run.json()
    assert result["content"][0] == {"type": "text", "text": marker}, result
    assert not result.get("isError"), result

    run = client(cache, "--json", url, "call", "no_such_tool")
    assert run.code == 1, run
    assert run.json()["error"], run
    assert "mcp-oauth-gateway client:" in run.stderr, run


def test_resources_and_prompts_of_the_builtin_server(gw, cache):
    url = gw.mcp_url
    run = client(cache, url, "resources")
    assert run.ok, run
    assert run.stdout.splitlines() == ["notes://all: Every note stored with add_note"], run

    run = client(cache, "--json", url, "resources")
    assert run.ok, run
    [notes] = run.json()["resources"]
    assert notes["uri"] == "notes://all" and notes["mimeType"] == "text/plain", notes

    run = client(cache, "--json", url, "resources", "read", "notes://all")
    assert run.ok, run
    [contents] = run.json()["contents"]
    assert contents["uri"] == "notes://all" and "text" in contents, contents

    run = client(cache, url, "resources", "read", "notes://nothing")
    assert run.code == 1, run
    assert "MCP error" in run.stderr, run

    run = client(cache, url, "prompts")
    assert run.ok, run
    assert run.stdout.splitlines() == [
        "summarize_notes: Ask the model to summarize the stored notes"], run

    run = client(cache, "--json", url, "prompts", "list")
    assert run.ok, run
    assert [p["name"] for p in run.json()["prompts"]] == ["summarize_notes"], run

    run = client(cache, url, "prompts", "get", "summarize_notes")
    assert run.ok, run
    assert run.stdout.startswith("user: Summarize these notes:"), run

    run = client(cache, "--json", url, "prompts", "get", "summarize_notes")
    assert run.ok, run
    [message] = run.json()["messages"]
    assert message["role"] == "user", message
    assert message["content"]["text"].startswith("Summarize these notes:"), message

    run = client(cache, url, "prompts", "get", "no_such_prompt")
    assert run.code == 1, run


# -- step-up reasons ----------------------------------------------------------------------

def test_insufficient_scope_says_why_it_asks_again(gw, cache):
    url = gw.mcp_url
    note = "stepped up " + secrets.token_hex(4)
    # The first authorization gets mcp:read (what the challenge asks); add_note needs
    # mcp:write: 403 insufficient_scope, one line saying so, then a new authorization.
    run = client(cache, url, "call", "add_note", f"text={note}")
    assert run.ok, run
    reasons = [line for line in run.stderr.splitlines() if "sign in again" in line]
    assert len(reasons) == 1, run
    assert re.fullmatch(r"the server needs scope \S*mcp:write\S*; asking you to sign in again",
                        reasons[0]), reasons
    assert "mcp:write" in only_entry(cache)["tokens"][url]["scope"].split()

    # The note is there, and the token now has the scope: no second step-up.
    run = client(cache, url, "resources", "read", "notes://all")
    assert run.ok, run
    assert note in run.stdout.splitlines(), run
    assert "sign in again" not in run.stderr, run


def test_refused_refresh_says_why_it_asks_again(gw, cache):
    url = gw.mcp_url
    assert client(cache, url, "tools").ok
    path = cache_files(cache)[0]
    entry = json.loads(path.read_text())
    entry["tokens"][url]["refresh_token"] = "not-a-refresh-token"
    entry["tokens"][url]["expires_at"] = 1  # long expired: refreshed before use
    path.write_text(json.dumps(entry))

    run = client(cache, url, "tools")
    assert run.ok, run
    reasons = [line for line in run.stderr.splitlines() if "sign in again" in line]
    assert len(reasons) == 1, run
    assert "invalid_grant" in reasons[0], reasons
    assert "not-a-refresh-token" not in run.stderr, run
    fresh = only_entry(cache)["tokens"][url]
    assert fresh["refresh_token"] != "not-a-refresh-token", fresh


# -- token -------------------------------------------------------------------------------

def test_token_prints_a_jwt_that_mcp_accepts(gw, cache, http):
    url = gw.mcp_url
    run = client(cache, "--verbose", url, "token")
    assert run.ok, run
    token = run.stdout.strip()
    assert run.stdout == token + "\n", "one line, the token alone"
    assert token.count(".") == 2, token
    assert token not in run.stderr, "the token reached the trace"
    claims = unverified_claims(token)
    assert claims["aud"] == url, claims
    assert claims["exp"] > now(), claims

    mcp = McpClient(http, gw.base, token)
    reply = mcp.initialize()
    assert reply.status == 200, reply.text
    assert mcp.call_tool("echo", {"message": "via curl"}).result["content"][0]["text"] \
        == "via curl"

    run = client(cache, "--json", url, "token")
    assert run.ok, run
    doc = run.json()
    assert doc["access_token"] == token, "the cached, still valid token"
    assert doc["token_type"] == "Bearer", doc
    assert isinstance(doc["expires_at"], int) and doc["expires_at"] > now(), doc
    assert "mcp:read" in doc["scope"].split(), doc
    assert doc["resource"] == url, doc
    assert token not in run.stderr


# -- logout ------------------------------------------------------------------------------

def test_logout_revokes_and_forgets(gw, cache, http):
    url = gw.mcp_url
    assert client(cache, url, "tools").ok
    entry = only_entry(cache)
    client_id = entry["client"]["client_id"]
    tokens = entry["tokens"][url]
    assert tokens["refresh_token"]

    run = client(cache, url, "logout")
    assert run.ok, run
    assert run.stdout.splitlines() == [
        f"revoked the refresh token at {gw.base}/revoke",
        f"forgot the cached tokens for {url}",
    ], run
    assert cache_files(cache) == [], "the cache file is gone"
    assert tokens["refresh_token"] not in run.stdout + run.stderr

    r = refresh(http, gw.base, client_id, tokens["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    # Revoking the refresh token revoked its grant, access tokens included.
    assert McpClient(http, gw.base, tokens["access_token"]).initialize().status == 401

    run = client(cache, url, "logout")
    assert run.ok, run
    assert run.stdout.strip() == f"no cached tokens for {url}", run


def test_logout_json(gw, cache, http):
    url = gw.mcp_url
    assert client(cache, url, "tools").ok
    entry = only_entry(cache)
    rt = entry["tokens"][url]["refresh_token"]
    run = client(cache, "--json", url, "logout")
    assert run.ok, run
    doc = run.json()
    assert doc == {
        "server": url,
        "had_tokens": True,
        "revocation_endpoint": f"{gw.base}/revoke",
        "revoked": "refresh_token",
        "revoke_error": None,
        "files_changed": 1,
    }, doc
    assert refresh(http, gw.base, entry["client"]["client_id"], rt).status_code == 400
    assert cache_files(cache) == []

    run = client(cache, "--json", url, "logout")
    assert run.ok, run
    assert run.json()["had_tokens"] is False and run.json()["revoked"] is None, run


# -- progress (server-everything) -----------------------------------------------------

def test_progress_lines_for_a_long_running_tool(everything, gateway_factory, tmp_path, cache):
    config = tmp_path / "gateway.toml"
    config.write_text(f"upstream = {json.dumps(everything.url)}\n")
    gw = gateway_factory("--auto-approve", "--config", str(config))
    url = gw.mcp_url

    run = client(cache, url, "call", "trigger-long-running-operation", "duration=0.6",
                 "steps=3")
    assert run.ok, run
    assert "Long running operation completed" in run.stdout, run
    progress = [line for line in run.stderr.splitlines() if line.startswith("progress:")]
    assert progress == ["progress: 1/3", "progress: 2/3", "progress: 3/3"], run
    assert "progress" not in run.stdout, "progress goes to stderr"

    run = client(cache, "--json", url, "call", "trigger-long-running-operation",
                 "duration=0.4", "steps=2")
    assert run.ok, run
    assert "Long running operation completed" in run.json()["content"][0]["text"], run
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert lines == [{"progress": 1, "total": 2}, {"progress": 2, "total": 2}], run

    # A tool that reports no progress prints none.
    run = client(cache, url, "call", "echo", "message=quiet")
    assert run.ok, run
    assert "progress" not in run.stderr, run
