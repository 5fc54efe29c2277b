"""Configuration as an operator gives it: a file, MCP_GATEWAY_* variables, flags.

- Every key can come from the environment (`MCP_GATEWAY_<KEY>`, a table's key with `__`),
  and a running gateway obeys it.
- Flags beat variables, which beat the file, key by key; a flag sets back to false what
  the file set to true.
- `config check` prints the effective settings, secrets redacted, each with its origin,
  and exits 2 naming the problem (file and line, or the variable) when it cannot be used.
- Secrets from files (`database_url_file`), host names in addresses, enum values in any
  case in the file, and per-subcommand help that lists only the flags it takes.
"""

from __future__ import annotations

import os
import re
import subprocess

from flow import full_flow
from gateway_proc import Gateway, gateway_binary


def check(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run([str(gateway_binary()), "config", "check", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=cwd)


def setting(report: str, key: str) -> tuple[str, str]:
    """The value and origin `config check` shows for a top-level key."""
    m = re.search(rf"^{re.escape(key)} = (.*?)  # (.*)$", report, re.MULTILINE)
    assert m, f"{key} not in the report:\n{report}"
    return m.group(1), m.group(2)


def test_a_variable_sets_a_key_of_the_running_gateway(tmp_path, http):
    gw = Gateway(tmp_path / "data", env={"MCP_GATEWAY_ACCESS_TOKEN_TTL": "321",
                                         "MCP_GATEWAY_AUTO_APPROVE": "true"}).start()
    try:
        tokens = full_flow(http, gw.base)
        assert tokens.expires_in == 321, tokens.body
    finally:
        gw.stop()


def test_flags_beat_variables_which_beat_the_file(tmp_path):
    conf = tmp_path / "gateway.toml"
    conf.write_text("access_token_ttl = 900\nauto_approve = true\nrefresh_grace_seconds = 5\n"
                    "code_ttl = 120\n")
    r = check("--config", str(conf), "--auto-approve=false", "--refresh-grace-seconds", "7",
              env={"MCP_GATEWAY_ACCESS_TOKEN_TTL": "600", "MCP_GATEWAY_REFRESH_GRACE_SECONDS": "6"})
    assert r.returncode == 0, r.stderr
    assert setting(r.stdout, "access_token_ttl") == ("600", "env MCP_GATEWAY_ACCESS_TOKEN_TTL")
    assert setting(r.stdout, "auto_approve") == ("false", "flag --auto-approve")
    assert setting(r.stdout, "refresh_grace_seconds") == ("7", "flag --refresh-grace-seconds")
    assert setting(r.stdout, "code_ttl") == ("120", f"file {conf}")
    assert setting(r.stdout, "consent_ttl") == ("600", "default")


def test_table_keys_lists_and_enums_from_variables(tmp_path):
    r = check(env={"MCP_GATEWAY_SCOPES__DEFAULT_TOOL": "mcp:write",
                   "MCP_GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
                   "MCP_GATEWAY_ALLOWED_ORIGINS": '["https://a.example", "https://b.example"]',
                   "MCP_GATEWAY_SIGNING_ALG": "rs256",
                   "MCP_GATEWAY_PROXY_HOP": "Network"})
    assert r.returncode == 0, r.stderr
    assert 'default_tool = "mcp:write"  # env MCP_GATEWAY_SCOPES__DEFAULT_TOOL' in r.stdout
    assert setting(r.stdout, "trusted_proxies")[0] == '["10.0.0.0/8", "127.0.0.1"]'
    assert setting(r.stdout, "allowed_origins")[0] == '["https://a.example", "https://b.example"]'
    assert setting(r.stdout, "signing_alg") == ('"RS256"', "env MCP_GATEWAY_SIGNING_ALG")
    assert setting(r.stdout, "proxy_hop")[0] == '"network"'


def test_a_variable_that_names_no_key_is_reported_with_the_closest(tmp_path):
    r = check(env={"MCP_GATEWAY_ACCESS_TOKEN_TLL": "600"})
    assert r.returncode == 0, r.stderr
    assert "MCP_GATEWAY_ACCESS_TOKEN_TLL names no setting (did you mean " \
           "MCP_GATEWAY_ACCESS_TOKEN_TTL?)" in r.stderr, r.stderr
    assert setting(r.stdout, "access_token_ttl")[1] == "default"


def test_a_bad_value_names_its_variable_or_its_line(tmp_path):
    r = check(env={"MCP_GATEWAY_ACCESS_TOKEN_TTL": "soon"})
    assert r.returncode == 2
    assert "MCP_GATEWAY_ACCESS_TOKEN_TTL" in r.stderr, r.stderr
    r = check(env={"MCP_GATEWAY_EXTERNAL__ISSUR": "https://idp.example"})
    assert r.returncode == 2
    assert "MCP_GATEWAY_EXTERNAL__ISSUR: unknown key `issur`: did you mean `issuer`?" in r.stderr, \
        r.stderr
    conf = tmp_path / "gateway.toml"
    conf.write_text("# the lifetime\n\naccess_token_ttl = \"soon\"\n")
    r = check("--config", str(conf))
    assert r.returncode == 2
    assert str(conf) in r.stderr and "line 3" in r.stderr and "access_token_ttl" in r.stderr, \
        r.stderr


def test_secrets_are_redacted_and_read_from_files(tmp_path):
    url_file = tmp_path / "database-url"
    url_file.write_text("postgres://gateway:pg-s3cret@db.internal:5432/mcp\n")
    conf = tmp_path / "gateway.toml"
    conf.write_text('[upstream_headers]\nAuthorization = "Bearer upstream-s3cret"\n\n'
                    '[[users]]\nname = "alice"\npassword_hash = "$argon2id$v=19$m=19456,t=2,p=1$'
                    'c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"\n')
    r = check("--config", str(conf), env={
        "MCP_GATEWAY_STORE": "postgres", "MCP_GATEWAY_DATABASE_URL_FILE": str(url_file),
        "MCP_GATEWAY_KEY_ENCRYPTION_KEY_FILE": str(tmp_path / "kek")})
    assert r.returncode == 0, r.stderr
    for secret in ("pg-s3cret", "upstream-s3cret", "$argon2id"):
        assert secret not in r.stdout, f"{secret} shown by config check:\n{r.stdout}"
    assert setting(r.stdout, "database_url") == (
        '"postgres://gateway:redacted@db.internal:5432/mcp"',
        "env MCP_GATEWAY_DATABASE_URL_FILE")
    both = check(env={"MCP_GATEWAY_DATABASE_URL": "postgres://x@h/db",
                      "MCP_GATEWAY_DATABASE_URL_FILE": str(url_file)})
    assert both.returncode == 2 and "database_url_file" in both.stderr, both.stderr


def test_addresses_take_host_names_and_the_file_any_case(tmp_path, http):
    conf = tmp_path / "gateway.toml"
    conf.write_text('signing_alg = "es256"\nstore = "Memory"\nlog_format = "TEXT"\n')
    gw = Gateway(tmp_path / "data", ["--config", str(conf), "--auto-approve"],
                 addrs={"proxy": "localhost:0"}).start()
    try:
        assert gw.proxy_addr.startswith("127.0.0.1:"), gw.proxy_addr
        assert http.get(f"{gw.base}/healthz").status_code == 200
    finally:
        gw.stop()


def test_each_subcommand_lists_only_its_flags():
    def flags(*args: str) -> set[str]:
        out = subprocess.run([str(gateway_binary()), *args, "--help"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return set(re.findall(r"--[a-z][a-z0-9-]*", out))

    serve = flags()
    assert {"--proxy-addr", "--upstream", "--data-dir", "--config"} <= serve
    rotate = flags("keys", "rotate")
    assert {"--data-dir", "--store", "--config"} <= rotate
    assert not rotate & {"--proxy-addr", "--upstream", "--auto-approve"}, rotate
    client = flags("client")
    assert not client & {"--config", "--data-dir", "--store"}, client
    assert flags("hash-password") == {"--help"}
