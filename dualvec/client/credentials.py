"""What a client shows a server that asks who calls: a bearer token, TLS, a client certificate (mutual TLS).

Over TLS the token travels as call credentials (``grpc.access_token_call_credentials``); gRPC refuses call
credentials on a plaintext channel, so there the client sends the same ``authorization: Bearer <token>`` metadata
with each call itself (``token_metadata``). A token sent in plaintext can be read on the way: use TLS across hosts.
"""
from __future__ import annotations

import collections
import os

import grpc

from dualvec.credential_files import check_token, read_pem, read_tokens
from dualvec.kernel.errors import DualvecError

PemSource = str | os.PathLike | bytes | None  # a PEM file's path, or the PEM bytes themselves


def read_token_file(path: str | os.PathLike) -> str:
    """The first token of a token file (the server's format: dualvec.credential_files). Raises DualvecError naming
    the file when it cannot be read or holds no token."""
    return read_tokens(path)[0]


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries a token on a plaintext channel."""
    return (("authorization", f"Bearer {check_token(token)}"),)


def _pem(source: PemSource, what: str) -> bytes | None:
    return source if source is None or isinstance(source, bytes) else read_pem(source, what)


def channel_credentials(tls_ca: PemSource = None, tls_cert: PemSource = None,
                        tls_key: PemSource = None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None for plaintext (none of the three given). ``tls_ca``: the CA that signed the
    server's certificate (None: the system's CAs); ``tls_cert``/``tls_key``: this client's certificate and key
    for mutual TLS. Raises DualvecError naming the option and file that cannot be used."""
    if tls_ca is None and tls_cert is None and tls_key is None:
        return None
    if (tls_cert is None) != (tls_key is None):
        raise DualvecError("tls_cert and tls_key (--tls-cert, --tls-key) go together: give both")
    return grpc.ssl_channel_credentials(root_certificates=_pem(tls_ca, "--tls-ca"),
                                        private_key=_pem(tls_key, "--tls-key"),
                                        certificate_chain=_pem(tls_cert, "--tls-cert"))


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _BearerMetadata(grpc.UnaryUnaryClientInterceptor):
    """Adds the token's metadata to every unary call of a plaintext channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]):
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):
        details = _Details(details.method, details.timeout, tuple(details.metadata or ()) + self._metadata,
                           details.credentials, getattr(details, "wait_for_ready", None),
                           getattr(details, "compression", None))
        return continuation(details, request)


def open_channel(address: str, *, options: list | None = None, token: str | None = None, tls_ca: PemSource = None,
                 tls_cert: PemSource = None, tls_key: PemSource = None) -> grpc.Channel:
    """A channel to ``address`` whose every call carries what the server asks for: TLS when any of ``tls_*`` is
    given (the token as call credentials), else plaintext (the token as metadata, added by an interceptor, so
    that stubs and raw multi-callables made from the channel need nothing more)."""
    tls = channel_credentials(tls_ca, tls_cert, tls_key)
    if tls is not None:
        if token:
            tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(check_token(token)))
        return grpc.secure_channel(address, tls, options=options)
    channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _BearerMetadata(token_metadata(token))) if token else channel
