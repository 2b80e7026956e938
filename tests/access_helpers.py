"""Helpers of the access and metrics tests (test_auth, test_tls, test_metrics): a `dualvec serve` subprocess whose
log is read line by line, and a certificate authority with server and client certificates made on the spot."""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dualvec.client import NotServingError, pick_free_port, wait_until_serving

DUALVEC = str(Path(sys.executable).with_name("dualvec"))
# the committed 40-word bundle: loads in milliseconds, no training needed
FLAT_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_v1" / "flat"
METRICS_LINE = re.compile(r"metrics on http://(\S+):(\d+)/metrics")


class ServeProcess:
    """`dualvec serve BUNDLE --port PORT ...` in a subprocess, on a port picked free here; its stderr is collected
    in the background."""

    def __init__(self, *args: str, bundle: Path = FLAT_BUNDLE):
        self.port = pick_free_port()
        self.proc = subprocess.Popen([DUALVEC, "serve", str(bundle), "--port", str(self.port), "--grace", "5", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str | re.Pattern, count: int = 1, timeout: float = 60.0) -> list[re.Match]:
        """The first ``count`` matches of ``pattern`` in the log, waiting for them (the test fails on timeout or
        when the process exits first)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [m for m in map(regex.search, self.lines) if m]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline or self.proc.poll() is not None:
                time.sleep(0.2)
                self.kill()
                pytest.fail(f"dualvec serve did not log {regex.pattern!r} x{count} (exit {self.proc.returncode}):\n"
                            + self.log())
            time.sleep(0.05)

    def address(self, credentials=None, timeout: float = 60.0) -> str:
        """The server's address, once its gRPC health answers SERVING (``credentials``: a TLS server's
        grpc.ChannelCredentials). The test fails on timeout or when the process exits first."""
        address = f"127.0.0.1:{self.port}"
        try:
            wait_until_serving(address, timeout, process=self.proc, credentials=credentials)
        except NotServingError as exc:
            self.kill()
            pytest.fail(f"{exc}\n{self.log()}")
        return address

    def metrics_url(self) -> str:
        m = self.wait_for(METRICS_LINE)[0]
        return f"http://{m.group(1)}:{m.group(2)}/metrics"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def serve():
    """Start `dualvec serve` subprocesses; whatever is left running at the end is killed."""
    procs: list[ServeProcess] = []

    def start(*args: str, bundle: Path = FLAT_BUNDLE) -> ServeProcess:
        p = ServeProcess(*args, bundle=bundle)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


# ------------------------------------------------------------------------------------------------- certificates

@dataclass(frozen=True)
class Certs:
    """PEM files: a CA, a server certificate it signed (for 127.0.0.1 and localhost), a client certificate it
    signed, and a client certificate signed by another CA (which the server must not accept)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def make_certs(directory: Path) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def authority(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, ca_key, ca_cert, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = authority("dualvec test CA")
    server_key, server_cert = leaf("localhost", ca_key, ca_cert, server=True)
    client_key, client_cert = leaf("dualvec test client", ca_key, ca_cert, server=False)
    other_key, other_ca = authority("another CA")
    stranger_key, stranger_cert = leaf("stranger", other_key, other_ca, server=False)
    return Certs(ca=write_cert(ca_cert, directory / "ca.pem"),
                 server_cert=write_cert(server_cert, directory / "server.pem"),
                 server_key=write_key(server_key, directory / "server.key"),
                 client_cert=write_cert(client_cert, directory / "client.pem"),
                 client_key=write_key(client_key, directory / "client.key"),
                 stranger_cert=write_cert(stranger_cert, directory / "stranger.pem"),
                 stranger_key=write_key(stranger_key, directory / "stranger.key"))
