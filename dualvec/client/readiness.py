"""Knowing when a dualvec server is ready: ask its standard gRPC health service (grpc.health.v1), never its log.

    from dualvec.client import pick_free_port, wait_until_serving
    port = pick_free_port()
    proc = subprocess.Popen(["dualvec", "serve", "my.bundle", "--port", str(port)])
    wait_until_serving(f"127.0.0.1:{port}", timeout=60, process=proc)   # returns once SERVING

A server reports SERVING only once its bundles are loaded and its port is bound, and NOT_SERVING as soon as it
begins to shut down (dualvec.server.app).
"""
from __future__ import annotations

import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.kernel.errors import DualvecError
from dualvec.v1 import dualvec_pb2 as pb

DUALVEC_SERVICE = pb.DESCRIPTOR.services_by_name["DualVec"].full_name  # "dualvec.v1.DualVec"

# reconnect quickly while the server is still loading (gRPC's default backoff grows to two minutes), on a
# subchannel of this channel's own, so that other channels' backoff to the same address does not delay the answer
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 500), ("grpc.use_local_subchannel_pool", 1)]


class NotServingError(DualvecError):
    """No SERVING answer came from ``target`` in time, or the server process exited first. ``last_status`` is the
    last answer heard: a health status name (NOT_SERVING, SERVICE_UNKNOWN, ...) or a gRPC error code and message."""

    def __init__(self, message: str, target: str, last_status: str):
        super().__init__(message)
        self.target = target
        self.last_status = last_status


def wait_until_serving(target: str, timeout: float = 30.0, *, service: str = DUALVEC_SERVICE,
                       interval: float = 0.1, process=None,
                       credentials: grpc.ChannelCredentials | None = None) -> None:
    """Return once grpc.health.v1 Check(``service``) at ``target`` ("host:port") answers SERVING.

    ``service``: the health service name to ask about ("" is the server as a whole; a dualvec server reports both
    that and "dualvec.v1.DualVec"). ``process``: the server's process (anything with ``poll()``, such as a
    subprocess.Popen), if started here: when it exits the wait ends at once. ``credentials``: for a server that
    serves TLS (grpc.ssl_channel_credentials); health asks no token. Raises NotServingError naming the target and
    the last status heard, after ``timeout`` seconds or when ``process`` exits."""
    deadline = time.monotonic() + max(0.0, timeout)
    last = "no answer yet"
    request = health_pb2.HealthCheckRequest(service=service)
    channel = (grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS) if credentials is not None
               else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            code = process.poll() if process is not None else None
            if code is not None:
                raise NotServingError(f"the server process exited with code {code} before {target} answered "
                                      f"SERVING (health service {service!r}; last status: {last})", target, last)
            remaining = deadline - time.monotonic()
            try:
                response = stub.Check(request, timeout=min(max(remaining, 0.05), 2.0))
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details() or ''}".rstrip(": ")
            else:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotServingError(f"{target} did not answer SERVING within {timeout:g} s (health service "
                                      f"{service!r}; last status: {last})", target, last)
            time.sleep(min(interval, remaining))


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (bound as port 0 with SO_REUSEADDR, read, released), to pass as
    `dualvec serve --port`. Another program could take it before the server binds it; the server then refuses
    to start, naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]
