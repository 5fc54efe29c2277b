"""SIGHUP reloads the public listener's TLS certificate and key, without a restart and
without dropping connections: a connection opened before keeps working, new handshakes
get the new certificate, a broken pair leaves the previous one in place, and SIGHUP never
ends a gateway (with TLS or without).
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import signal
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway_proc import Gateway


def write_cert(dir_, name: str) -> bytes:
    """A self-signed certificate for 127.0.0.1 named `name`, written over cert.pem and
    key.pem in `dir_`; returns its DER."""
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (dir_ / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (dir_ / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def connect(gw: Gateway) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    host, port = gw.proxy_addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    conn.connect()
    return conn


def served_cert(conn: http.client.HTTPSConnection) -> bytes:
    return conn.sock.getpeercert(binary_form=True)


def healthy(conn: http.client.HTTPSConnection) -> bool:
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    r.read()
    return r.status == 200


def test_sighup_reloads_the_certificate_and_keeps_connections(tmp_path):
    first = write_cert(tmp_path, "first")
    gw = Gateway(tmp_path / "data", ["--tls-cert", str(tmp_path / "cert.pem"),
                                     "--tls-key", str(tmp_path / "key.pem")]).start()
    try:
        before = connect(gw)
        assert served_cert(before) == first
        assert healthy(before)

        second = write_cert(tmp_path, "second")
        gw.proc.send_signal(signal.SIGHUP)
        line = gw.wait_for_log("TLS certificate reloaded")
        assert hashlib.sha256(second).hexdigest() in line, line
        after = connect(gw)
        assert served_cert(after) == second
        assert healthy(after)
        # The connection opened before the reload is still served, on its own certificate.
        assert healthy(before)
        assert served_cert(before) == first

        # A broken pair: the error is logged and the second certificate stays.
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("TLS certificate reload failed")
        third = connect(gw)
        assert served_cert(third) == second
        assert healthy(third)
        assert gw.proc.poll() is None
        for c in (before, after, third):
            c.close()
    finally:
        gw.stop()


def test_sighup_does_not_end_a_plain_gateway(tmp_path, http):
    gw = Gateway(tmp_path / "data").start()
    try:
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("SIGHUP: no TLS certificate to reload")
        assert gw.proc.poll() is None
        assert http.get(f"{gw.base}/healthz").status_code == 200
    finally:
        gw.stop()
