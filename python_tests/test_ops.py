"""Operating the gateway: the audit log tells the story of a grant without a secret in it;
health, readiness and request ids answer through the public URL."""

import json

from flow import full_flow, refresh


def test_audit_log_records_each_step_of_a_grant_and_no_secret(gateway_factory, http, tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = gateway_factory("--audit-log", str(audit))
    tokens = full_flow(http, gw.base, scope="mcp:read")
    r = refresh(http, gw.base, tokens.client_id, tokens.refresh_token)
    assert r.status_code == 200, r.text
    renewed = r.json()
    replay = refresh(http, gw.base, tokens.client_id, renewed["refresh_token"])
    assert replay.status_code == 200
    replay = refresh(http, gw.base, tokens.client_id, tokens.refresh_token)
    assert replay.status_code == 400
    gw.stop()

    lines = audit.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    names = [e["fields"]["event"] for e in events]
    for expected in ("client_registered", "consent_granted", "code_issued", "code_redeemed",
                     "refreshed", "refresh_replayed"):
        assert expected in names, names
    assert all(e["target"] == "audit" for e in events)
    story = [e for e in events if e["fields"].get("client_id") == tokens.client_id]
    assert len(story) >= 6, "every step names the client"
    text = audit.read_text()
    for secret in (tokens.access_token, tokens.refresh_token, renewed["refresh_token"],
                   renewed["access_token"]):
        assert secret[:16] not in text


def test_health_readiness_and_request_ids_through_the_proxy(gateway, http):
    assert http.get(f"{gateway.base}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{gateway.base}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["store"] is True
    assert ready.json()["checks"]["listeners"] is True
    r = http.get(f"{gateway.base}/.well-known/oauth-authorization-server",
                 headers={"x-request-id": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42"
    assert len(http.get(f"{gateway.base}/healthz").headers["x-request-id"]) >= 16


def test_keys_rotate_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(
        gateway_factory, http, tmp_path):
    import subprocess

    from flow import McpClient, unverified_header
    from gateway_proc import gateway_binary

    data = tmp_path / "rotating"
    gw = gateway_factory(data_dir=data)
    old = full_flow(http, gw.base, scope="mcp:read")
    old_kid = unverified_header(old.access_token)["kid"]
    gw.stop()

    out = subprocess.run([str(gateway_binary()), "keys", "rotate", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert old_kid not in out.stdout

    gw = gateway_factory(data_dir=data)
    kids = [k["kid"] for k in http.get(f"{gw.base}/.well-known/jwks.json").json()["keys"]]
    assert len(kids) == 2 and old_kid in kids, kids
    # The public URL changed with the new ports, so old tokens name another issuer; what
    # rotation must keep is the old key in the JWKS. New tokens use the new key.
    new = full_flow(http, gw.base, scope="mcp:read")
    new_kid = unverified_header(new.access_token)["kid"]
    assert new_kid != old_kid and new_kid in kids
    assert McpClient(http, gw.base, new.access_token).initialize().status == 200


def test_metrics_on_a_listener_of_their_own(gateway_factory, http):
    import re

    gw = gateway_factory("--metrics-addr", "localhost:0")
    line = gw.wait_for_log("metrics and health listening")
    m = re.search(r"metrics=(127\.0\.0\.1:\d+)", line)
    assert m, line
    base = f"http://{m.group(1)}"
    metrics = http.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert "mcp_gateway_build_info" in metrics.text
    assert http.get(f"{base}/healthz").json() == {"status": "ok"}
    # Only metrics and health: no authorization server, no MCP endpoint there.
    assert http.get(f"{base}/.well-known/oauth-authorization-server").status_code == 404
    assert http.post(f"{base}/mcp", json={}).status_code == 404
