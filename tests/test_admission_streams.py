"""SearchStream under admission control: each batch a stream answers together goes through the same gate as the
unary calls, charged as a BatchSearch of it; with a one-worker budget, streams and unary calls never search at
the same time, and all of them complete; a batch waiting at a full gate honours the stream's deadline and its
client's going; beyond --max-streams a stream is refused RESOURCE_EXHAUSTED naming the flag."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from dualvec.client import Client, ClientError
from dualvec.server.admission import AdmissionControl, call_cost
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.wire import search_request

SERVICES = ("dualvec.v1.DualVec",)


class Overlap:
    """Wraps an engine's search_prepared (every search of Search, BatchSearch and SearchStream): each takes
    ``delay`` seconds; counts the searches running at once at most."""

    def __init__(self, engine, delay: float):
        self.running = self.most = self.calls = 0
        self.lock = threading.Lock()
        inner = engine.search_prepared

        def watched(prepared):
            with self.lock:
                self.running += 1
                self.calls += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(delay)
                return inner(prepared)
            finally:
                with self.lock:
                    self.running -= 1

        engine.search_prepared = watched


def serve(lee_bundle, **options):
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, checksums=False, **options)
    engines = load_engines(cfg)
    overlap = Overlap(next(iter(engines.values())), 0.002)
    return start_server(engines, cfg), overlap


@pytest.fixture(scope="module")
def vocab(lee_bundle):
    from dualvec.kernel.bundle import read_bundle

    return read_bundle(lee_bundle, checksums=False).vocab.words


def test_streams_and_unary_calls_share_a_tiny_budget_and_all_complete(lee_bundle, vocab):
    # one worker: a budget of 64 units, so that one search (or one stream batch) runs at a time
    running, overlap = serve(lee_bundle, workers=1, max_queue=8, max_streams=4)
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def stream(name: str, n: int) -> None:
        queries = [dict(positive=[vocab[(i * 7) % 2000]], k=10) for i in range(n)]
        try:
            with Client(running.address, timeout=60) as c:
                results[name] = list(c.search_stream(queries, timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def unary(name: str, n: int) -> None:
        try:
            with Client(running.address, timeout=60) as c:
                results[name] = [c.search([vocab[(i * 11) % 2000]], k=10) for i in range(n)]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = ([threading.Thread(target=stream, args=(f"stream{i}", 400)) for i in range(3)]
               + [threading.Thread(target=unary, args=(f"unary{i}", 40)) for i in range(3)])
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        for i in range(3):
            answers = results[f"stream{i}"]
            assert [r.index for r in answers] == list(range(400)) and all(r.ok for r in answers)
            assert len(results[f"unary{i}"]) == 40 and all(len(r) == 10 for r in results[f"unary{i}"])
        stats = running.admission.stats()
        assert overlap.most == 1  # the streams' batches took their turn at the gate with the unary calls
        assert stats.stream_batches > 3 and overlap.calls >= stats.stream_batches
        assert stats.admitted >= 120 and stats.refused == 0
        assert stats.streams_open == 0 and stats.in_flight == 0 and stats.units_running == 0
    finally:
        running.stop(1.0)


def test_a_stream_beyond_max_streams_is_refused_naming_the_flag(lee_bundle, vocab):
    running, _ = serve(lee_bundle, max_streams=1)
    release = threading.Event()

    def held():
        yield search_request([vocab[1]], k=3)
        release.wait(30)

    try:
        with Client(running.address, timeout=30) as c:
            first = c.search_stream(held(), timeout=30)
            assert next(first).ok  # the first stream is open
            assert running.admission.stats().streams_open == 1
            with pytest.raises(ClientError) as refused:
                list(c.search_stream([dict(positive=[vocab[2]])], timeout=10))
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 streams are already open (its --max-streams)" in refused.value.details
            assert running.admission.stats().refused == 1
            assert len(c.search([vocab[3]], k=3)) == 3  # unary calls are not held back by the open stream
            release.set()
            assert list(first) == []
            deadline = time.monotonic() + 5
            while running.admission.stats().streams_open and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.admission.stats().streams_open == 0
            again = list(c.search_stream([dict(positive=[vocab[2]], k=2)], timeout=10))  # its place is free again
            assert len(again) == 1 and again[0].ok
    finally:
        release.set()
        running.stop(1.0)


class FakeContext:
    def __init__(self, remaining: float | None, active: bool = True):
        self.remaining, self.active = remaining, active
        self.aborted = None

    def time_remaining(self):
        return self.remaining

    def is_active(self):
        return self.active

    def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.RpcError(details)


def test_a_stream_batch_is_charged_as_a_batch_search_and_gives_its_room_back():
    gate = AdmissionControl(max_queue=4, workers=4, services=SERVICES)
    small = [pb.SearchRequest(positive=["a"], k=10)] * 8
    large = [pb.SearchRequest(positive=["a"], k=100)] * 64
    for requests in (small, large):
        charge, heavy = gate.charge("BatchSearch", pb.BatchSearchRequest(requests=requests))
        with gate.admit_batch(requests, FakeContext(10.0)):
            assert gate._gate.load() == (1, pytest.approx(charge))
        assert gate._gate.load() == (0, 0)
    assert gate.charge("BatchSearch", pb.BatchSearchRequest(requests=large))[1]  # heavy: above a worker's share
    assert call_cost("BatchSearch", pb.BatchSearchRequest(requests=small)) == pytest.approx(8 * (1 + 10 / 32))
    assert gate.stats().stream_batches == 2


def test_a_stream_batch_waits_for_room_within_its_deadline_and_not_after_its_client_left():
    gate = AdmissionControl(max_queue=2, workers=1, services=SERVICES)
    requests = [pb.SearchRequest(positive=["a"])] * 4
    assert gate._gate.acquire(1, False, 0) == "ok"  # the one worker is busy
    ctx = FakeContext(0.2)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError):
        gate.admit_batch(requests, ctx)
    assert ctx.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED and "were not searched" in ctx.aborted[1]
    assert 0.15 < time.monotonic() - t0 < 2
    ctx = FakeContext(None, active=False)
    with pytest.raises(grpc.RpcError):
        gate.admit_batch(requests, ctx)
    assert ctx.aborted[0] == grpc.StatusCode.CANCELLED
    assert (gate.stats().expired_waiting, gate.stats().cancelled_waiting) == (1, 1)
    # waiting, not failing: room given back while a batch waits lets it through
    got = []
    waiter = threading.Thread(target=lambda: got.append(gate.admit_batch(requests, FakeContext(10.0))))
    waiter.start()
    time.sleep(0.3)
    assert not got
    gate._gate.release(1, False)
    waiter.join(5)
    assert len(got) == 1
    with got[0]:
        pass
    assert gate._gate.load() == (0, 0)


def test_serve_refuses_a_max_streams_below_one_naming_the_flag(capsys):
    from dualvec.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "b.bundle", "--max-streams", "0"])
    err = capsys.readouterr().err
    assert "--max-streams" in err and "at least 1" in err
    with pytest.raises(ValueError, match="max_streams"):
        AdmissionControl(max_queue=4, workers=1, services=SERVICES, max_streams=0)
