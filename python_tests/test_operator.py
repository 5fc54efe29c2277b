"""The operator's side: values as an operator writes them, and logs a machine can read.

- Enum flags take any case (`--signing-alg ES256` as the README spells it, `--store SQLite`).
- JSON log lines carry plain values: an audit event's `sub` is `local-user`, not the
  debug form of an optional (`Some("local-user")`).
"""

from __future__ import annotations

import json

from flow import full_flow, unverified_header


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.removeprefix("[stderr] ").strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def test_enum_flags_take_any_case_and_json_logs_carry_plain_values(gateway_factory, http,
                                                                      tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = gateway_factory("--signing-alg", "RS256", "--store", "Memory",
                         "--audit-log", str(audit))
    tokens = full_flow(http, gw.base)
    assert unverified_header(tokens.access_token)["alg"] == "RS256"
    gw.stop()
    events = [e for e in json_lines(audit.read_text())
              if e.get("fields", {}).get("event") in ("code_issued", "consent_granted",
                                                       "client_registered")]
    assert {e["fields"]["event"] for e in events} >= {"code_issued", "client_registered"}, events
    for e in events:
        for key, value in e["fields"].items():
            assert not str(value).startswith(("Some(", "None")), f"{key}={value!r} in {e}"
    issued = next(e for e in events if e["fields"]["event"] == "code_issued")
    assert issued["fields"]["sub"] == "local-user"
