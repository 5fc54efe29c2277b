"""An https upstream: verified against `--upstream-ca-file` (a private CA) with SNI and
`Host` from its URL; a certificate that does not verify gets 502 and a log line that says
why. The upstream is a tiny streamable-HTTP server (standard library) behind TLS with a
certificate from a CA made here with `cryptography`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flow import McpClient, full_flow


def _cert(subject: str, issuer_name, issuer_key, public_key, *, ca: bool, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(dest: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key) for 127.0.0.1 and localhost; also client.pem and
    client.key, a client certificate from the same CA, in `dest`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream test CA")])
    ca = _cert("upstream test CA", ca_name, ca_key, ca_key.public_key(), ca=True)
    (dest / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, sans in (("server", [x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("client", [x509.DNSName("gateway.test")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, ca_name, ca_key, key.public_key(), ca=False, sans=sans)
        (dest / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (dest / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return dest / "ca.pem", dest / "server.pem", dest / "server.key"


class TlsUpstream:
    """Answers every JSON-RPC request (initialize, tools/list with one tool) over https,
    and records the Host and SNI it was reached with."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None):
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                owner.hosts.append(self.headers.get("Host", ""))
                msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "id" not in msg:
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "tls-upstream", "version": "1"}}
                if msg.get("method") == "tools/list":
                    result = {"tools": [{"name": "hello", "description": "hi",
                                         "inputSchema": {"type": "object"}}]}
                body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Mcp-Session-Id", "tls-session")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:  # mutual TLS: a client certificate from this CA, or no talk
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        ctx.sni_callback = lambda sock, name, _ctx: owner.sni.append(name)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_https_upstream_verified_against_its_ca(gateway_factory, http, tmp_path):
    ca, cert, key = make_pki(tmp_path)
    up = TlsUpstream(cert, key)
    try:
        gw = gateway_factory("--upstream", f"https://localhost:{up.port}/mcp",
                             "--upstream-ca-file", str(ca))
        tokens = full_flow(http, gw.base)
        mcp = McpClient(http, gw.base, tokens.access_token)
        assert mcp.initialize().status == 200
        assert [t["name"] for t in mcp.list_tools().result["tools"]] == ["hello"]
        assert up.hosts and all(h == f"localhost:{up.port}" for h in up.hosts), up.hosts
        assert "localhost" in up.sni, up.sni
    finally:
        up.close()


def test_an_upstream_certificate_that_does_not_verify_is_502_with_a_reason(
        gateway_factory, http, tmp_path):
    _, cert, key = make_pki(tmp_path)
    up = TlsUpstream(cert, key)
    try:
        # No CA file: the system's roots do not know the test CA.
        gw = gateway_factory("--upstream", f"https://localhost:{up.port}/mcp")
        tokens = full_flow(http, gw.base)
        reply = McpClient(http, gw.base, tokens.access_token).initialize()
        assert reply.status == 502, reply.text
        assert json.loads(reply.text)["error"]["code"] == -32603
        assert not up.hosts, "no request reached an unverified server"
        line = gw.wait_for_log("upstream unreachable")
        assert "certificate" in line.lower(), line
    finally:
        up.close()


def test_an_upstream_that_asks_for_a_client_certificate_gets_the_configured_one(
        gateway_factory, http, tmp_path):
    ca, cert, key = make_pki(tmp_path)
    up = TlsUpstream(cert, key, client_ca=ca)
    try:
        config = tmp_path / "mtls.toml"
        config.write_text(f'upstream_client_cert = "{tmp_path / "client.pem"}"\n'
                          f'upstream_client_key = "{tmp_path / "client.key"}"\n')
        gw = gateway_factory("--upstream", f"https://localhost:{up.port}/mcp",
                             "--upstream-ca-file", str(ca), "--config", str(config))
        tokens = full_flow(http, gw.base)
        assert McpClient(http, gw.base, tokens.access_token).initialize().status == 200
        # Without the certificate the upstream refuses the handshake: 502.
        bare = gateway_factory("--upstream", f"https://localhost:{up.port}/mcp",
                               "--upstream-ca-file", str(ca))
        tokens = full_flow(http, bare.base)
        assert McpClient(http, bare.base, tokens.access_token).initialize().status == 502
        bare.wait_for_log("upstream unreachable")
    finally:
        up.close()
