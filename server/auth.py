"""Who may call: bearer tokens (``serve --auth-token-file``) checked by a server interceptor.

The token file holds one token a line; several lines let tokens be rotated (add the new one, move the clients,
remove the old one). Blank lines and lines starting with ``#`` are ignored. A client sends its token as the
metadata ``authorization: Bearer <token>`` (what ``grpc.access_token_call_credentials`` sends over TLS).

``TokenAuth`` refuses a call of a guarded method without a valid token with UNAUTHENTICATED before anything else
runs: the request is not even deserialized, and admission control, the servicer and the search never see it.
gRPC health and server reflection stay open (probes and tools need them, and the schema is public).

Tokens are kept only as sha256 digests and compared with ``hmac.compare_digest`` against every accepted digest
(no early exit), so the time a check takes says nothing about which token, or how much of one, was right. No
token is ever written to a log line or an error message; the file is named, its lines by number.

``reload()`` re-reads the file (`dualvec serve` calls it on SIGHUP). A file that cannot be read, or holds no
token, is refused with one log line, and the tokens read before stay in force.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable

import grpc

from dualvec.credential_files import read_pem, read_tokens
from dualvec.kernel.errors import DualvecError

log = logging.getLogger("dualvec.server.auth")

# services every caller may use: health (probes) and reflection (tools; the schema is public)
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
SCHEME = "bearer"
REFUSAL = "missing or invalid bearer token: send the metadata 'authorization: Bearer <token>'"


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token).digest()


def bearer_tokens(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str]:
    """The tokens of every ``authorization: Bearer <token>`` entry of a call's metadata."""
    out = []
    for key, value in metadata or ():
        if key != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == SCHEME and token.strip():
            out.append(token.strip())
    return out


class TokenAuth(grpc.ServerInterceptor):
    """Lets a call of a guarded service through only with a valid bearer token; every service but the open ones
    (``open_services``: health and reflection) is guarded. Raises DualvecError at construction when the token
    file cannot be used. Thread-safe."""

    def __init__(self, path: str | os.PathLike, *, open_services: Iterable[str] = OPEN_SERVICES,
                 log_every: float = 10.0):
        self.path = Path(path)
        self._open = tuple(f"/{s}/" for s in open_services)
        self._digests: tuple[bytes, ...] = tuple(_digest(t) for t in read_tokens(self.path))
        self._reload_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._refused = self._refused_logged = 0
        self._log_every = log_every
        self._last_log = 0.0
        self._deny = grpc.unary_unary_rpc_method_handler(self._refuse)  # no deserializer: the bytes stay bytes

    @property
    def token_count(self) -> int:
        return len(self._digests)

    def reload(self) -> bool:
        """Re-read the token file. True when the new tokens are in force; False when the file could not be used
        (logged, with the metric of reload failures counted by the caller), in which case the old ones stay."""
        with self._reload_lock:
            try:
                digests = tuple(_digest(t) for t in read_tokens(self.path))
            except DualvecError as exc:
                log.error("auth tokens not reloaded, the %d token(s) read before stay in force: %s",
                          len(self._digests), exc)
                return False
            self._digests = digests  # one assignment: a check sees the old tuple or the new one, never a mix
        log.info("auth tokens reloaded from %s: %d token(s)", self.path, len(digests))
        return True

    def allows(self, metadata) -> bool:
        """True when the metadata carries a token of the file. Every accepted token is compared, always."""
        digests = self._digests
        ok = False
        for token in bearer_tokens(metadata):
            given = _digest(token)
            for accepted in digests:
                ok |= hmac.compare_digest(given, accepted)
        return ok

    # --------------------------------------------------------------------------------------------- interceptor
    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self._open) or self.allows(
                handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        self._count_refusal()
        return self._deny

    def _refuse(self, request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    def _count_refusal(self) -> None:
        now = time.monotonic()
        with self._count_lock:
            self._refused += 1
            if now - self._last_log < self._log_every:
                return
            refused, self._refused_logged = self._refused - self._refused_logged, self._refused
            self._last_log = now
        log.warning("refused %d call(s) without a valid bearer token (UNAUTHENTICATED) since the last report",
                    refused)


# ------------------------------------------------------------------------------------------------------------ TLS

def check_tls(cert: str | os.PathLike, key: str | os.PathLike,
              client_ca: str | os.PathLike | None = None) -> tuple[bytes, bytes, bytes | None]:
    """(certificate chain, private key, client CA or None) as PEM bytes, checked with the ssl module: gRPC would
    only fail at the first handshake, this says now and why. Raises DualvecError naming the file that cannot be
    used (missing, unreadable, not PEM, a key that does not match the certificate). Makes no gRPC object."""
    import ssl

    cert_pem, key_pem = read_pem(cert, "--tls-cert"), read_pem(key, "--tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise DualvecError(f"--tls-cert {cert} with --tls-key {key}: not a certificate and its matching private "
                           f"key ({exc.reason or exc})") from None
    ca_pem = None
    if client_ca is not None:
        ca_pem = read_pem(client_ca, "--tls-client-ca")
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise DualvecError(f"--tls-client-ca {client_ca}: not a CA certificate ({exc.reason or exc})") from None
    return cert_pem, key_pem, ca_pem


def tls_server_credentials(cert: str | os.PathLike, key: str | os.PathLike,
                           client_ca: str | os.PathLike | None = None) -> grpc.ServerCredentials:
    """grpc server credentials of a certificate chain and its private key (PEM files); with ``client_ca``, clients
    must present a certificate signed by it (mutual TLS). Raises DualvecError as ``check_tls`` does."""
    cert_pem, key_pem, ca_pem = check_tls(cert, key, client_ca)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)
