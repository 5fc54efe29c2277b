"""TLS to the database: `?sslmode=require` with the server's certificate checked against
`--database-ca-file` (a private CA), and refused when it does not verify.

The CA and the server certificate are made here with `cryptography`; PostgreSQL runs with
`ssl=on` and that certificate. That TLS is really used is read off `pg_stat_ssl`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway_proc import Gateway, GatewayStartError
from pg_cluster import PgCluster


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server(dest: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.crt, server.key): a CA, and a certificate for 127.0.0.1 it signed."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test database CA"))
          .issuer_name(_name("test database CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, crt, key_file = dest / "ca.pem", dest / "server.crt", dest / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    if os.geteuid() == 0:  # the server runs as `postgres` and must read its key
        pw = pwd.getpwnam("postgres")
        for f in (dest, crt, key_file):
            os.chown(f, pw.pw_uid, pw.pw_gid)
    return ca_pem, crt, key_file


@pytest.fixture(scope="module")
def tls_cluster():
    dest = Path(tempfile.mkdtemp(prefix="pg-tls-"))
    ca, crt, key = make_ca_and_server(dest)
    with PgCluster(server_options=f"-c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key}") as pg:
        pg.start()
        yield pg, ca
    shutil.rmtree(dest, ignore_errors=True)


def test_sslmode_require_verifies_the_server_against_the_ca_file(tls_cluster, tmp_path, http):
    pg, ca = tls_cluster
    url = pg.create_database("tls_ok") + "?sslmode=require"
    key = base64.b64encode(os.urandom(32)).decode()
    gw = Gateway(tmp_path / "d", ["--store", "postgres", "--database-url", url,
                                  "--database-ca-file", str(ca)],
                 env={"MCP_GATEWAY_KEY_ENCRYPTION_KEY": key}).start()
    try:
        assert http.get(f"{gw.base}/readyz").status_code == 200
        ssl = pg.psql("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                      "USING (pid) WHERE a.application_name = 'mcp-oauth-gateway'").strip()
        assert ssl == "t", f"the gateway's connections use TLS: {ssl!r}"
    finally:
        gw.stop()


def test_a_server_the_roots_do_not_vouch_for_is_refused(tls_cluster, tmp_path):
    pg, _ = tls_cluster
    url = pg.create_database("tls_unknown") + "?sslmode=require"
    key = base64.b64encode(os.urandom(32)).decode()
    gw = Gateway(tmp_path / "d", ["--store", "postgres", "--database-url", url],
                 env={"MCP_GATEWAY_KEY_ENCRYPTION_KEY": key})
    with pytest.raises(GatewayStartError) as refused:
        gw.start()
    assert gw.returncode == 2
    assert "certificate" in str(refused.value).lower(), str(refused.value)[-1500:]
