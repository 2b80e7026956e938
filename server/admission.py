"""Admission control: a bounded amount of work, refused fast beyond it, deadlines honoured while waiting.

Left to itself, gRPC Python hands every call to a thread pool whose queue has no bound: past the pool's threads,
calls (health checks among them) wait in one FIFO behind every search, and gRPC's own ``maximum_concurrent_rpcs``
refuses the excess with a bare "Concurrent RPC limit exceeded!". ``AdmissionControl`` is a server interceptor
that does better, in three steps for each call of a guarded service:

1. Admission: at most ``max_queue`` calls are admitted at once (worked on or waiting). One more is refused at
   once with RESOURCE_EXHAUSTED and a message saying the server is overloaded, so latency cannot grow without
   bound: a client sees either an answer within the queue's worth of work or a fast refusal it can back off from.
2. The gate: at most ``workers`` admitted calls are worked on at once; the others wait here, not in the thread
   pool's queue. A call whose deadline passes while it waits, or whose client has gone, is not searched
   (DEADLINE_EXCEEDED / CANCELLED).
3. The call itself, once the deadline is checked one last time: the one place a server-side deadline is checked.

A fourth bound sits below the Python layer. gRPC Python accepts calls on a single poll thread, which needs the
GIL: when calls arrive faster than it can take them (tiny searches at more than the server's capacity, or any load
while many workers run Python), they wait inside gRPC's C core, where no interceptor sees them, bounded only by its
pending-request limits (by default 1,000, with random early drop up to 3,000: seconds of queue). ``backlog_limits``
gives tighter ones tied to ``max_queue``, to pass as the server options ``grpc.server.max_pending_requests`` and
``grpc.server.max_pending_requests_hard_limit``: past them the core cancels calls at once (the client sees
CANCELLED, the one status it can give) instead of letting them wait. Keeping ``workers`` near the number of cores
leaves the poll thread the GIL, so that overload is met by our refusals rather than the core's.

The thread pool must have a thread for every call the server takes at once (``threads``: the admitted calls plus
spare threads for refusals, health and reflection), so that nothing waits in its queue; ``threads`` is also the
value to pass as gRPC's ``maximum_concurrent_rpcs``, a backstop that only a flood of refusals can reach. Calls of
services that are not guarded (health, reflection) pass neither step: health answers SERVING while the search
service is overloaded.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable

import grpc

log = logging.getLogger("dualvec.server.admission")

# server-side time_remaining() of a call without a deadline is about 2**63 ns; threading refuses such timeouts
_NO_DEADLINE = 24 * 3600.0


@dataclass(frozen=True)
class AdmissionStats:
    """Counters since start: calls admitted, refused (overloaded), expired or abandoned while waiting at the
    gate, and the calls in the server right now."""

    admitted: int
    refused: int
    expired_waiting: int
    cancelled_waiting: int
    in_flight: int


class AdmissionControl(grpc.ServerInterceptor):
    """Bounds the calls of the guarded services (full names like ``dualvec.v1.DualVec``) to ``max_queue`` at once,
    of which ``workers`` are worked on at a time. Thread-safe; one per server."""

    def __init__(self, max_queue: int, workers: int, services: Iterable[str], *, spare_threads: int | None = None,
                 log_every: float = 10.0):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_queue = max_queue
        self.workers = min(workers, max_queue)
        self.spare_threads = max(32, max_queue // 4) if spare_threads is None else spare_threads
        self._prefixes = tuple(f"/{s}/" for s in services)
        self._lock = threading.Lock()
        self._gate = threading.Semaphore(self.workers)
        self._in_flight = 0
        self._admitted = self._refused = self._expired = self._cancelled = 0
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._log_every = log_every
        self._last_log = 0.0
        self._refused_logged = 0

    @property
    def threads(self) -> int:
        """Threads the server's pool needs so that no call waits in its queue (also gRPC's backstop limit)."""
        return self.max_queue + self.spare_threads

    @property
    def backlog_limits(self) -> tuple[int, int]:
        """(soft, hard) limits for gRPC's own backlog of calls not yet taken by the poll thread."""
        return max(16, self.max_queue // 4), max(32, self.max_queue // 2)

    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(self._admitted, self._refused, self._expired, self._cancelled, self._in_flight)

    # --------------------------------------------------------------------------------------------- interceptor
    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(self._prefixes):
            return continuation(handler_call_details)
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # every DualVec method is unary-unary
            return handler
        behavior = handler.unary_unary

        def guarded(request, context):
            return self._run(behavior, request, context)

        wrapped = grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                      response_serializer=handler.response_serializer)
        self._handlers[method] = wrapped
        return wrapped

    # ------------------------------------------------------------------------------------------------ the steps
    def _run(self, behavior, request, context):
        with self._lock:
            admitted = self._in_flight < self.max_queue
            if admitted:
                self._in_flight += 1
                self._admitted += 1
            else:
                self._refused += 1
        if not admitted:
            self._log_refusals()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server overloaded: {self.max_queue} calls are already running or queued (its "
                          f"--max-queue); retry later, with backoff")
        try:
            remaining = context.time_remaining()
            timeout = None if remaining is None or remaining > _NO_DEADLINE else max(0.0, remaining)
            if (timeout is not None and timeout <= 0) or not self._gate.acquire(timeout=timeout):
                with self._lock:
                    self._expired += 1
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the call's deadline passed while it waited for a worker; it was not searched")
            try:
                if not context.is_active():
                    with self._lock:
                        self._cancelled += 1
                    context.abort(grpc.StatusCode.CANCELLED, "the client went away while the call waited")
                left = context.time_remaining()
                if left is not None and left <= 0:
                    with self._lock:
                        self._expired += 1
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  "the call's deadline passed before the server could start it")
                return behavior(request, context)
            finally:
                self._gate.release()
        finally:
            with self._lock:
                self._in_flight -= 1

    def _log_refusals(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self._log_every:
            return
        with self._lock:
            if now - self._last_log < self._log_every:
                return
            refused, self._refused_logged = self._refused - self._refused_logged, self._refused
            self._last_log = now
        log.warning("overloaded: refused %d call(s) with RESOURCE_EXHAUSTED since the last report (max_queue %d, "
                    "workers %d)", refused, self.max_queue, self.workers)
