"""Admission control: a bounded amount of work, weighed by what each call asks, refused fast beyond it, deadlines
honoured while waiting.

Left to itself, gRPC Python hands every call to a thread pool whose queue has no bound: past the pool's threads,
calls (health checks among them) wait in one FIFO behind every search, and gRPC's own ``maximum_concurrent_rpcs``
refuses the excess with a bare "Concurrent RPC limit exceeded!". ``AdmissionControl`` is a server interceptor
that does better, in three steps for each call of a guarded service:

1. Admission: at most ``max_queue`` calls are admitted at once (worked on or waiting), of which at most half may
   be heavy (below). One more is refused at once with RESOURCE_EXHAUSTED and a message saying the server is
   overloaded, counted (``stats().refused``; dualvec.server.metrics counts every RESOURCE_EXHAUSTED) and logged at
   most once every ``log_every`` seconds with the count, so latency cannot grow without bound: a client sees
   either an answer within the queue's worth of work or a fast refusal it can back off from.
2. The gate, which weighs each call by its work (``call_cost``): a query costs ``1 + k / 32`` units (a Search of k
   10 about 1.3, a BatchSearch the sum of its queries, added up to 10,000 at most), ScoreDocuments one unit per
   1,000 tokens, GetVectors and Similarity one per 100 words or pairs. At most ``workers`` admitted calls are worked
   on at once, and their charges add up to at most ``budget`` units (``workers`` x 64 by default); a call is charged
   its cost but never more than ``call_cap`` (a quarter of the budget), so a huge call waits for room like any other
   instead of forever, and never takes the whole server. A call costing more than a worker's share (``budget /
   workers``) is *heavy*: heavy calls together hold at most ``heavy_budget`` (half the budget, so two capped calls
   at once), and the head of their line gets the next room before new cheap calls, so it is not starved either.
   Cheap calls keep at least half the budget and the workers, whatever the heavy ones do. The others wait here, in
   line (first come, first served within each class), not in the thread pool's queue. A call whose deadline passes
   while it waits, or whose client has gone, is not searched (DEADLINE_EXCEEDED / CANCELLED).
3. The call itself, once the deadline is checked one last time: the one place a server-side deadline is checked.

A stream (SearchStream) is admitted in the same two steps, spread over its life. Opening it: at most
``max_streams`` streams are open at once, one more is refused at once with RESOURCE_EXHAUSTED naming
``--max-streams`` (counted among ``stats().refused``); streams do not take places of ``max_queue``, so open
streams never lock unary calls out. Its work: the handler is given a context whose ``admit(requests)`` takes
each batch the stream answers together through the same gate, charged as a BatchSearch of those requests would
be (heavy when it is), and held only while the batch is searched, not while its answers wait to be sent. A batch
waits for room as long as it must (never refused), but not past the stream's deadline (DEADLINE_EXCEEDED) nor
after its client has gone (CANCELLED): a stream cannot hold more of the budget than a call would, and its
batches take their turn in the same lines as the unary calls.

A fourth bound sits below the Python layer. gRPC Python accepts calls on a single poll thread, which needs the GIL
and handles every event of every call (its arrival, its request, its status sent): calls that arrive faster than it
can take them wait inside gRPC's C core, where no interceptor sees them, bounded by the core's pending-request
limits per method (``grpc.server.max_pending_requests``, random early drop from there, and ``..._hard_limit``). Past
them the core cancels a call at once and the client sees CANCELLED with no message: the one status gRPC gives there.
One client's burst of concurrent calls on one channel arrives in a single read, all at once, so that backlog must
hold the whole burst for the calls to reach this interceptor and be answered or refused RESOURCE_EXHAUSTED by it:
``backlog_limits`` is at least 512 soft and twice that hard, more with a large ``max_queue`` (limits of 64 and 128
cut a burst of 500 concurrent calls on one channel to 50-344 CANCELLED; these let every one of them reach this
interceptor). The price is the wait in that backlog when arrivals outrun the poll thread itself for long (tiny calls
far past capacity): there, and only there, the core's CANCELLED remains, since a refusal costs the poll thread as
much as an answer.

The thread pool has a thread for every call admitted and every stream open, plus spare threads for refusals,
health and reflection (``threads``), so that searches never queue in it. gRPC's ``maximum_concurrent_rpcs``
(``concurrent_rpcs``) sits above that by the backlog's hard limit: a burst taken from the backlog at once gets our
refusals (queued briefly for a spare thread, each a few tens of microseconds), not gRPC's bare one, which stays a
backstop against a flood beyond every other bound. Calls of services that are not guarded (health, reflection) pass neither
step: health answers SERVING while the search service is overloaded.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import grpc

log = logging.getLogger("dualvec.server.admission")

# server-side time_remaining() of a call without a deadline is about 2**63 ns; threading refuses such timeouts
_NO_DEADLINE = 24 * 3600.0
# a waiting call looks at its client this often (a client that went away frees its place in line)
_WAIT_SLICE = 0.25

K_UNIT = 32            # a query costs 1 + k / K_UNIT units
DEFAULT_K = 10         # what k = 0 asks for
TOKENS_PER_UNIT = 1000
BYTES_PER_TOKEN = 6    # a document's text, before it is tokenized: about this many bytes a token
ITEMS_PER_UNIT = 100   # words of GetVectors, pairs of Similarity
UNITS_PER_WORKER = 64  # the default budget: this many units per worker


def _query_cost(request) -> float:
    return 1.0 + (request.k or DEFAULT_K) / K_UNIT


def _documents_cost(request) -> float:
    tokens = len(request.query_tokens) + len(request.query) / BYTES_PER_TOKEN
    for d in request.documents:
        tokens += len(d.tokens) + len(d.text) / BYTES_PER_TOKEN
        if tokens > COST_CEILING * TOKENS_PER_UNIT:
            break
    return 1.0 + tokens / TOKENS_PER_UNIT


# a cost above this is not added up further: it is charged the cap anyway (and a request that large is refused
# by the servicer's limits), so a hostile request of a million tiny queries costs the sum no more than this
COST_CEILING = 10_000.0


def queries_cost(queries: Iterable) -> float:
    """The cost of searching ``queries`` together (a BatchSearch's requests, a stream's batch): their sum, added up
    to COST_CEILING at most."""
    total = 0.0
    for query in queries:
        total += _query_cost(query)
        if total > COST_CEILING:
            break
    return total or 1.0


def _batch_cost(request) -> float:
    return queries_cost(request.requests)


COSTS: dict[str, Callable[[object], float]] = {
    "Search": _query_cost,
    "BatchSearch": _batch_cost,
    "ScoreDocuments": _documents_cost,
    "GetVectors": lambda r: 1.0 + len(r.words) / ITEMS_PER_UNIT,
    "Similarity": lambda r: 1.0 + len(r.pairs) / ITEMS_PER_UNIT,
}


def call_cost(rpc: str, request) -> float:
    """The work a call asks for, in units of about one small query (``COSTS``; 1 for anything else, or for a
    request that cannot be read). Reads sizes only: never more than a pass over the request's fields."""
    cost = COSTS.get(rpc)
    if cost is None:
        return 1.0
    try:
        return max(1.0, float(cost(request)))
    except Exception:  # noqa: BLE001 - a request the servicer will refuse: it is charged as the least call
        return 1.0


@dataclass(frozen=True)
class AdmissionStats:
    """Counters since start: calls admitted, refused (overloaded), expired or abandoned while waiting at the
    gate, the calls in the server right now, and of those the heavy ones; the units the running calls hold; the
    streams open right now, and the batches of streams let through the gate since start (streams refused count
    among ``refused``, those whose batch expired or was abandoned at the gate among ``expired_waiting`` and
    ``cancelled_waiting``)."""

    admitted: int
    refused: int
    expired_waiting: int
    cancelled_waiting: int
    in_flight: int
    heavy_in_flight: int = 0
    units_running: float = 0.0
    streams_open: int = 0
    stream_batches: int = 0    # batches of streams let through the gate


class _Waiter:
    __slots__ = ("charge", "heavy", "event", "granted")

    def __init__(self, charge: float, heavy: bool):
        self.charge, self.heavy = charge, heavy
        self.event = threading.Event()
        self.granted = False


class CostGate:
    """At most ``workers`` calls at once whose charges add up to at most ``budget``, heavy ones to at most
    ``heavy_budget``; two lines (cheap, heavy), each first come first served. Thread-safe."""

    def __init__(self, workers: int, budget: float, heavy_budget: float):
        self.workers, self.budget, self.heavy_budget = workers, budget, heavy_budget
        self._lock = threading.Lock()
        self._running = 0
        self._used = 0.0
        self._heavy_used = 0.0
        self._lines: dict[bool, collections.deque[_Waiter]] = {False: collections.deque(), True: collections.deque()}

    def _fits(self, charge: float, heavy: bool, extra_calls: int = 0, extra_units: float = 0.0) -> bool:
        return (self._running + extra_calls < self.workers and self._used + extra_units + charge <= self.budget
                and (not heavy or self._heavy_used + charge <= self.heavy_budget))

    def _heavy_head_waits_for(self) -> _Waiter | None:
        """The first heavy call in line, when only the count or the whole budget keeps it out (cheap calls then
        leave it room: it goes next)."""
        line = self._lines[True]
        if line and self._heavy_used + line[0].charge <= self.heavy_budget:
            return line[0]
        return None

    def _may_take(self, charge: float, heavy: bool) -> bool:
        if self._lines[heavy] or not self._fits(charge, heavy):
            return False
        head = None if heavy else self._heavy_head_waits_for()
        return head is None or self._fits(head.charge, True, 1, charge)

    def _take(self, charge: float, heavy: bool) -> None:
        self._running += 1
        self._used += charge
        if heavy:
            self._heavy_used += charge

    def _grant(self) -> None:
        for heavy in (True, False):  # the heavy head first: cheap calls fill what it leaves
            line = self._lines[heavy]
            while line and self._fits(line[0].charge, heavy):
                if not heavy:
                    head = self._heavy_head_waits_for()
                    if head is not None and not self._fits(head.charge, True, 1, line[0].charge):
                        break
                waiter = line.popleft()
                self._take(waiter.charge, heavy)
                waiter.granted = True
                waiter.event.set()

    def acquire(self, charge: float, heavy: bool, timeout: float | None,
                still_wanted: Callable[[], bool] = lambda: True) -> str:
        """Wait for room: "ok" (then ``release`` once done), "expired" (``timeout`` seconds passed) or "gone"
        (``still_wanted`` turned False, checked every quarter second while waiting)."""
        with self._lock:
            if self._may_take(charge, heavy):
                self._take(charge, heavy)
                return "ok"
            waiter = _Waiter(charge, heavy)
            self._lines[heavy].append(waiter)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
            if left > 0:
                waiter.event.wait(left)
            outcome = None
            if not waiter.event.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    outcome = "expired"
                elif not still_wanted():
                    outcome = "gone"
                else:
                    continue
            with self._lock:
                if waiter.granted:
                    return "ok"
                if outcome is None:
                    continue
                self._lines[heavy].remove(waiter)
                self._grant()  # the line's new head may fit where this one did not
                return outcome

    def release(self, charge: float, heavy: bool) -> None:
        with self._lock:
            self._running -= 1
            self._used -= charge
            if heavy:
                self._heavy_used -= charge
            if self._running == 0:  # no float residue once idle
                self._used = self._heavy_used = 0.0
            self._grant()

    def load(self) -> tuple[int, float]:
        """(calls running, units they hold)."""
        with self._lock:
            return self._running, self._used


class AdmissionControl(grpc.ServerInterceptor):
    """Bounds the calls of the guarded services (full names like ``dualvec.v1.DualVec``) to ``max_queue`` at once,
    of which at most ``workers`` calls, and ``budget`` units of work, are worked on at a time (module doc).
    Thread-safe; one per server."""

    def __init__(self, max_queue: int, workers: int, services: Iterable[str], *, spare_threads: int | None = None,
                 log_every: float = 10.0, budget: float | None = None, call_cap: float | None = None,
                 heavy_budget: float | None = None, max_streams: int | None = None):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.max_queue = max_queue
        self.max_streams = max(1, max_queue // 4) if max_streams is None else max_streams
        self.workers = min(workers, max_queue)
        self.budget = float(budget if budget is not None else self.workers * UNITS_PER_WORKER)
        if self.budget <= 0:
            raise ValueError(f"budget must be > 0, got {self.budget:g}")
        self.heavy_budget = float(heavy_budget if heavy_budget is not None else self.budget / 2)
        self.call_cap = float(call_cap if call_cap is not None else self.budget / 4)
        self.call_cap = min(self.call_cap, self.heavy_budget, self.budget)
        self.heavy_above = self.budget / self.workers  # a worker's share
        self.max_heavy_queue = max(1, max_queue // 2)
        self.spare_threads = max(32, max_queue // 4) if spare_threads is None else spare_threads
        self._prefixes = tuple(f"/{s}/" for s in services)
        self._lock = threading.Lock()
        self._gate = CostGate(self.workers, self.budget, self.heavy_budget)
        self._in_flight = self._heavy_in_flight = 0
        self._admitted = self._refused = self._expired = self._cancelled = 0
        self._streams = self._stream_batches = 0
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._log_every = log_every
        self._last_log = -float("inf")
        self._refused_logged = 0
        self._report_due: threading.Timer | None = None

    @property
    def threads(self) -> int:
        """Threads the server's pool needs so that no admitted call, nor open stream, waits in its queue."""
        return self.max_queue + self.max_streams + self.spare_threads

    @property
    def backlog_limits(self) -> tuple[int, int]:
        """(soft, hard) limits for gRPC's own backlog of calls not yet taken by the poll thread (per method): a
        burst of concurrent calls that fits reaches admission control and gets its answers or refusals."""
        soft = max(512, 2 * self.max_queue)
        return soft, 2 * soft

    @property
    def concurrent_rpcs(self) -> int:
        """gRPC's ``maximum_concurrent_rpcs``: the admitted calls, and a burst's worth of refusals on top."""
        return self.threads + self.backlog_limits[1]

    def stats(self) -> AdmissionStats:
        running, units = self._gate.load()
        with self._lock:
            return AdmissionStats(self._admitted, self._refused, self._expired, self._cancelled, self._in_flight,
                                  self._heavy_in_flight, round(units, 3), self._streams, self._stream_batches)

    def charge(self, rpc: str, request) -> tuple[float, bool]:
        """(units charged at the gate, heavy?) of a call."""
        cost = call_cost(rpc, request)
        return min(cost, self.call_cap), cost > self.heavy_above

    # --------------------------------------------------------------------------------------------- interceptor
    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(self._prefixes):
            return continuation(handler_call_details)
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is not None and handler.stream_stream is not None:  # a stream: admitted by its batches
            stream_behavior = handler.stream_stream

            def guarded_stream(request_iterator, context):
                return self._stream(stream_behavior, request_iterator, context)

            wrapped = grpc.stream_stream_rpc_method_handler(guarded_stream,
                                                            request_deserializer=handler.request_deserializer,
                                                            response_serializer=handler.response_serializer)
            self._handlers[method] = wrapped
            return wrapped
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        rpc = method.rsplit("/", 1)[-1]

        def guarded(request, context):
            return self._run(behavior, request, context, rpc)

        wrapped = grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                      response_serializer=handler.response_serializer)
        self._handlers[method] = wrapped
        return wrapped

    # ------------------------------------------------------------------------------------------------ the steps
    def _run(self, behavior, request, context, rpc: str = ""):
        charge, heavy = self.charge(rpc, request)
        with self._lock:
            admitted = self._in_flight < self.max_queue and not (heavy and
                                                                 self._heavy_in_flight >= self.max_heavy_queue)
            if admitted:
                self._in_flight += 1
                self._heavy_in_flight += heavy
                self._admitted += 1
            else:
                self._refused += 1
                queued = self._in_flight
        if not admitted:
            self._log_refusals()
            if queued < self.max_queue:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"server overloaded: {self.max_heavy_queue} large calls are already running or queued "
                              f"(half its --max-queue); retry later, with backoff, or split the call")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server overloaded: {self.max_queue} calls are already running or queued (its "
                          f"--max-queue); retry later, with backoff")
        try:
            remaining = context.time_remaining()
            timeout = None if remaining is None or remaining > _NO_DEADLINE else max(0.0, remaining)
            if timeout is not None and timeout <= 0:
                with self._lock:
                    self._expired += 1
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the call's deadline had passed when it reached the server; it was not searched")
            outcome = self._gate.acquire(charge, heavy, timeout, context.is_active)
            if outcome == "expired":
                with self._lock:
                    self._expired += 1
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the call's deadline passed while it waited for a worker; it was not searched")
            if outcome == "gone":
                with self._lock:
                    self._cancelled += 1
                context.abort(grpc.StatusCode.CANCELLED, "the client went away while the call waited")
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
                self._gate.release(charge, heavy)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._heavy_in_flight -= heavy

    # ---------------------------------------------------------------------------------------------------- streams
    def _stream(self, behavior, request_iterator, context):
        """A stream's life: opened if fewer than ``max_streams`` are, its answers passed on as the handler yields
        them, its place given back when it ends however it ends."""
        with self._lock:
            opened = self._streams < self.max_streams
            if opened:
                self._streams += 1
            else:
                self._refused += 1
        if not opened:
            self._log_refusals()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server overloaded: {self.max_streams} streams are already open (its --max-streams); "
                          f"retry later, with backoff, or send the searches on an open stream")
        try:
            yield from behavior(request_iterator, AdmittingContext(context, self))
        finally:
            with self._lock:
                self._streams -= 1

    def admit_batch(self, requests: list, context) -> "_Admitted":
        """Wait at the gate for room for a stream's batch of search ``requests``, charged as a BatchSearch of them
        would be; a context manager holding the room until the batch is searched. Aborts the call (so raises)
        when the call's deadline passes first (DEADLINE_EXCEEDED) or its client goes (CANCELLED)."""
        cost = queries_cost(requests)
        charge, heavy = min(cost, self.call_cap), cost > self.heavy_above
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > _NO_DEADLINE else max(0.0, remaining)
        outcome = "expired" if timeout is not None and timeout <= 0 else self._gate.acquire(
            charge, heavy, timeout, context.is_active)
        if outcome == "expired":
            with self._lock:
                self._expired += 1
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "the stream's deadline passed while its next searches waited for a worker; they were not "
                          "searched")
        if outcome == "gone":
            with self._lock:
                self._cancelled += 1
            context.abort(grpc.StatusCode.CANCELLED, "the client went away while the stream's searches waited")
        with self._lock:
            self._stream_batches += 1
        return _Admitted(self._gate, charge, heavy)

    # ------------------------------------------------------------------------------------------------- the log
    def _log_refusals(self) -> None:
        """The first refusal after a quiet spell is logged at once; later ones are summed into one line at most
        every ``log_every`` seconds, the last of a burst included (a timer reports it)."""
        now = time.monotonic()
        with self._lock:
            if self._report_due is not None:
                return
            wait = self._last_log + self._log_every - now
            if wait > 0:
                self._report_due = threading.Timer(wait, self._report)
                self._report_due.daemon = True
                self._report_due.start()
                return
        self._report()

    def _report(self) -> None:
        with self._lock:
            refused, self._refused_logged = self._refused - self._refused_logged, self._refused
            self._last_log = time.monotonic()
            self._report_due = None
            in_flight = self._in_flight
            streams = self._streams
        if refused:
            log.warning("overloaded: refused %d call(s) with RESOURCE_EXHAUSTED since the last report (%d calls "
                        "in the server, %d streams open; max_queue %d, max_streams %d, workers %d, budget %g "
                        "units)", refused, in_flight, streams, self.max_queue, self.max_streams, self.workers,
                        self.budget)


class _Admitted:
    """Room at the gate for one batch of a stream, given back on leaving the ``with`` block."""

    __slots__ = ("_gate", "_charge", "_heavy")

    def __init__(self, gate: CostGate, charge: float, heavy: bool):
        self._gate, self._charge, self._heavy = gate, charge, heavy

    def __enter__(self) -> "_Admitted":
        return self

    def __exit__(self, *exc) -> None:
        self._gate.release(self._charge, self._heavy)


class AdmittingContext:
    """The context a guarded stream's handler is given: the call's own context (every attribute passed on), and
    ``admit(requests)``, which takes a batch of the stream's requests through admission control's gate
    (``AdmissionControl.admit_batch``)."""

    def __init__(self, context, admission: AdmissionControl):
        self._context, self._admission = context, admission

    def admit(self, requests: list) -> _Admitted:
        return self._admission.admit_batch(requests, self._context)

    def __getattr__(self, name: str):
        return getattr(self._context, name)
