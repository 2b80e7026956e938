"""How a server leaves a pool of replicas without failing a call: health that drains, the signals that start the
drain, and the drain itself.

On SIGTERM (what Kubernetes sends a pod it deletes; SIGINT does the same) a server

1. turns health NOT_SERVING at once, for every service name: a readiness probe fails at its next period, the
   endpoints drop the pod, and clients that watch health (a service config's ``healthCheckConfig``) stop picking it;
2. keeps answering for ``drain_delay`` seconds, so that calls from clients that have not noticed yet are answered
   (a second signal cuts this short);
3. ends the health Watch streams and stops the server: new calls are refused (each connection gets a GOAWAY, and a
   client's round_robin picks another server; its retry policy repeats a call that raced the GOAWAY), the calls in
   flight finish within ``grace`` seconds, and the process exits.

A Watch stream lives as long as its client's connection: without step 3's ending, every stop by a client-side
health-checking client would last the whole grace period.

Kubernetes' kubelet probes speak plaintext gRPC only: ``serve_health_only`` puts this health service, alone, on a
port of its own for them when the main port uses TLS.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.kernel.errors import DualvecError

log = logging.getLogger("dualvec.server")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class DrainingHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 (Check and Watch) whose Watch streams can be ended by the server. Watch does not hold a
    thread: updates are sent from whichever thread calls ``set``. Thread-safe."""

    def __init__(self, services=("",), status=NOT_SERVING):
        self._lock = threading.Lock()
        self._status = {name: status for name in services}
        self._watches: dict[int, tuple[str, Callable]] = {}  # id -> (service, send callback)
        self._next_id = 0
        self._draining = False

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback=None):
        stream = None
        if send_response_callback is None:  # called without gRPC's callback (through a wrapper): a generator
            stream = _Stream()
            send_response_callback = stream.send
        with self._lock:
            key, self._next_id = self._next_id, self._next_id + 1
            self._watches[key] = (request.service, send_response_callback)
            send_response_callback(health_pb2.HealthCheckResponse(
                status=self._status.get(request.service, SERVICE_UNKNOWN)))

        def closed() -> None:
            self._forget(key)
            if stream is not None:
                stream.send(None)

        if not context.add_callback(closed):  # the call has already ended
            closed()
        return stream

    Watch.experimental_non_blocking = True  # gRPC passes send_response_callback and frees the thread on return

    def set(self, service: str, status) -> None:
        """Set a service's status and tell its watchers. Ignored once draining (NOT_SERVING is final)."""
        with self._lock:
            if self._draining:
                return
            self._status[service] = status
            for name, send in self._watches.values():
                if name == service:
                    send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good."""
        with self._lock:
            if self._draining:
                return
            for service in self._status:
                self._status[service] = NOT_SERVING
            for _, send in self._watches.values():
                send(health_pb2.HealthCheckResponse(status=NOT_SERVING))
            self._draining = True

    def end_watches(self) -> None:
        """End every open Watch stream with status OK (clients re-open theirs, to another server or later)."""
        with self._lock:
            ending = [send for _, send in self._watches.values()]
            self._watches.clear()
        for send in ending:
            send(None)

    def _forget(self, key: int) -> None:
        with self._lock:
            self._watches.pop(key, None)


class _Stream:
    """Watch's answers as a generator, for a caller that passes no callback: ``send(response)`` queues one,
    ``send(None)`` ends it."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, response) -> None:
        self._queue.put(response)

    def __iter__(self):
        return self

    def __next__(self):
        response = self._queue.get()
        if response is None:
            self._queue.put(None)  # ended for good
            raise StopIteration
        return response


class ShutdownSignals:
    """SIGTERM and SIGINT handlers for the main thread: the first signal sets ``first`` (start draining), one that
    comes ``AGAIN_AFTER`` seconds or more later sets ``again`` (cut the drain delay short). Signals closer to the
    first are the same request arriving twice: a worker process of `serve --processes` gets its parent's forward
    besides its own copy when the whole process group is signalled (Ctrl-C in a terminal, systemd's stop).
    ``name`` is the first signal's name."""

    AGAIN_AFTER = 0.5

    def __init__(self):
        self.first = threading.Event()
        self.again = threading.Event()
        self.name = ""
        self._first_at = 0.0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if not self.first.is_set():
            self.name = signal.Signals(signum).name
            self._first_at = time.monotonic()
            self.first.set()
        elif time.monotonic() - self._first_at >= self.AGAIN_AFTER:
            self.again.set()


def drain(running, delay: float, grace: float, cut_short: threading.Event | None = None) -> None:
    """The three steps above, on a running server (dualvec.server.app.RunningServer): NOT_SERVING now, answer for
    ``delay`` seconds (less if ``cut_short`` is set), then refuse new calls and give those in flight ``grace``
    seconds. Returns when the server has stopped: within delay + grace + 1 s whatever the calls do."""
    running.health.enter_graceful_shutdown()
    if delay > 0:
        log.info("NOT_SERVING; still answering for %.1f s (drain delay)", delay)
        (cut_short or threading.Event()).wait(delay)
    running.health.end_watches()
    log.info("refusing new calls; in-flight calls get %.1f s (grace)", grace)
    stopped = running.server.stop(grace)
    if running.health_server is not None:
        running.health_server.stop(0)
    if not stopped.wait(grace + 1.0):
        log.warning("the server had not stopped %.1f s after the grace period began", grace + 1.0)


def serve_health_only(health: DrainingHealth, address: str, *, reuse_port: bool = False) -> tuple[grpc.Server, int]:
    """A plaintext gRPC server at ``address`` with ``health`` and nothing else (for probes that cannot speak TLS).
    Returns the started server and the port it bound; raises RuntimeError when the address cannot be bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dualvec-health"),
                         options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    server.start()
    return server, port


def check_timings(drain_delay: float, grace: float, max_connection_age: float = 0.0) -> None:
    """Raises DualvecError naming the first option that is negative."""
    for option, value in (("--drain-delay", drain_delay), ("--grace", grace),
                          ("--max-connection-age", max_connection_age)):
        if not value >= 0:  # NaN too
            raise DualvecError(f"{option} must be >= 0 seconds, got {value:g}")
