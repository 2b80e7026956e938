"""The server under saturation: with a tiny --max-queue, one worker and a slowed search, a burst of calls gets
answers and fast RESOURCE_EXHAUSTED refusals that say the server is overloaded, and nothing else; health stays
SERVING (and answers at once) during the burst; answers after the burst equal those before it; a call whose deadline
passes while it waits, or has passed when it arrives, is not searched."""
from __future__ import annotations

import statistics
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.client import Client, ClientError
from dualvec.server.admission import AdmissionControl
from dualvec.server.app import ServerConfig, load_engines, start_server

SEARCH_TIME = 0.04   # seconds each (slowed) search takes
MAX_QUEUE = 3
QUERIES = [("city", "in", "in"), ("government", "in", "out"), ("police", "out", "in"), ("world", "out", "out")]


class SlowEngine:
    """Wraps an engine's search_prepared (the one path of Search and BatchSearch): sleeps, counts the searches."""

    def __init__(self, engine, delay: float):
        self.searches = 0
        self.delay = delay
        self.lock = threading.Lock()
        inner = engine.search_prepared

        def slowed(prepared):
            with self.lock:
                self.searches += len(prepared)
            time.sleep(self.delay)
            return inner(prepared)

        engine.search_prepared = slowed


@pytest.fixture
def slow_server(lee_bundle):
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, workers=1, max_queue=MAX_QUEUE, checksums=False)
    engines = load_engines(cfg)
    slow = SlowEngine(next(iter(engines.values())), SEARCH_TIME)
    running = start_server(engines, cfg)
    yield running, slow
    running.stop(1.0)


def answers(client: Client) -> list:
    return [client.search(w, query_space=q, target_space=t, k=10) for w, q, t in QUERIES]


def test_overload_burst_gets_fast_overloaded_refusals_and_nothing_else(slow_server):
    running, slow = slow_server
    with Client(running.address, timeout=10) as idle:
        before = answers(idle)
    results: list[tuple[str, float, str]] = []
    health: list[tuple[str, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller(n: int) -> None:
        with Client(running.address, timeout=10) as c:
            while not stop.is_set():
                w, q, t = QUERIES[n % len(QUERIES)]
                t0 = time.perf_counter()
                try:
                    c.search(w, query_space=q, target_space=t)
                    outcome, details = "OK", ""
                except ClientError as exc:
                    outcome, details = exc.code.name, exc.details
                with lock:
                    results.append((outcome, time.perf_counter() - t0, details))

    def prober() -> None:
        with grpc.insecure_channel(running.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                t0 = time.perf_counter()
                resp = stub.Check(health_pb2.HealthCheckRequest(service="dualvec.v1.DualVec"), timeout=5)
                health.append((health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status),
                               time.perf_counter() - t0))
                time.sleep(0.05)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)] + [threading.Thread(target=prober)]
    for th in threads:
        th.start()
    time.sleep(1.5)
    stop.set()
    for th in threads:
        th.join(15)

    outcomes = {o for o, _, _ in results}
    assert outcomes == {"OK", "RESOURCE_EXHAUSTED"}, outcomes  # answers and refusals, nothing else
    refusals = [(dt, d) for o, dt, d in results if o == "RESOURCE_EXHAUSTED"]
    answered = [dt for o, dt, _ in results if o == "OK"]
    assert all("overloaded" in d for _, d in refusals), refusals[:3]
    # refused without waiting for the queue: faster than a single search, let alone the queue's worth
    assert statistics.median(dt for dt, _ in refusals) < SEARCH_TIME < statistics.median(answered)
    # the queue is bounded: no answered call waited much longer than max_queue searches
    assert max(answered) < (MAX_QUEUE + 1) * SEARCH_TIME * 5
    assert health and all(status == "SERVING" for status, _ in health)
    assert max(dt for _, dt in health) < 1.0
    stats = running.admission.stats()
    assert stats.refused == len(refusals) and stats.in_flight == 0
    with Client(running.address, timeout=10) as idle:
        assert answers(idle) == before


def test_call_whose_deadline_passes_while_it_waits_is_not_searched(slow_server):
    running, slow = slow_server
    slow.delay = 0.5
    with Client(running.address, timeout=5) as c:
        c.wait_ready()
        first = threading.Thread(target=lambda: c.search("city"))
        first.start()
        time.sleep(0.1)  # the one worker is busy with the first call
        searched = slow.searches
        short = Client(running.address, timeout=0.15, channel=c._channel)
        with pytest.raises(ClientError) as err:
            short.search("government")
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        first.join()
        time.sleep(0.3)
    assert slow.searches == searched == 1  # the waiting call was dropped, never searched
    assert running.admission.stats().expired_waiting == 1


class FakeContext:
    def __init__(self, remaining: float):
        self.remaining = remaining
        self.aborted = None

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return True

    def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.RpcError(details)


def test_call_arriving_with_its_deadline_passed_is_not_searched():
    ran = []
    # the admission gate drops it before any work
    gate = AdmissionControl(max_queue=2, workers=1, services=("dualvec.v1.DualVec",))
    ctx = FakeContext(0.0)
    with pytest.raises(grpc.RpcError):
        gate._run(lambda req, ctx: ran.append(req), "request", ctx)
    assert ctx.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED and not ran
    assert gate.stats().expired_waiting == 1 and gate.stats().in_flight == 0
    # a deadline that passes between the gate and the work: the gate's last check, the one place it is made
    ctx = FakeContext(1.0)
    times = iter([1.0, 0.0])
    ctx.time_remaining = lambda: next(times)
    with pytest.raises(grpc.RpcError):
        gate._run(lambda req, ctx: ran.append(req), "request", ctx)
    assert ctx.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED and not ran


def test_admission_refuses_beyond_max_queue_and_counts_back_down():
    gate = AdmissionControl(max_queue=2, workers=2, services=("dualvec.v1.DualVec",))
    release = threading.Event()
    started = threading.Barrier(3)

    def slow(req, ctx):
        started.wait(5)
        release.wait(5)
        return req

    threads = [threading.Thread(target=gate._run, args=(slow, i, FakeContext(10.0))) for i in range(2)]
    for th in threads:
        th.start()
    started.wait(5)
    ctx = FakeContext(10.0)
    with pytest.raises(grpc.RpcError):
        gate._run(slow, "third", ctx)
    assert ctx.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in ctx.aborted[1]
    release.set()
    for th in threads:
        th.join(5)
    s = gate.stats()
    assert (s.admitted, s.refused, s.in_flight) == (2, 1, 0)
    assert gate.threads >= gate.max_queue + 32
