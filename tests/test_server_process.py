"""A real `dualvec serve BUNDLE --port PORT` process (a port picked free here): its gRPC health turns SERVING, it
logs the address it bound, answers like the in-process search core, and on SIGTERM or SIGINT turns health
NOT_SERVING, refuses new calls, lets the calls in flight finish, logs one stop line and exits 0 within its grace
period, while a client keeps calling."""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.client import NotServingError, pick_free_port, wait_until_serving
from dualvec.kernel.bundle import read_bundle
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.kernel.search import SearchEngine, SearchQuery
from dualvec.kernel.spaces import ALL_PAIRS, Space
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

from test_search_core import assert_neighbors, reference_of

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

DUALVEC = str(Path(sys.executable).with_name("dualvec"))
GRACE = 8.0  # generous: the drain ends as soon as the calls in flight are done, and this machine is shared
PB_SPACE = {Space.IN: pb.IN, Space.OUT: pb.OUT}
START_LINE = re.compile(r"serving (\S+) on (\S+):(\d+) ")  # what the log says, not how readiness is learned
STOP_LINE = re.compile(r"stopped serving on (\S+):(\d+)")


class ServeProcess:
    """`dualvec serve` in a subprocess on a port picked free here; stderr is collected line by line in the
    background (for what the log says; readiness comes from gRPC health)."""

    def __init__(self, bundle: Path, *extra: str):
        self.address = f"127.0.0.1:{pick_free_port()}"
        port = self.address.rsplit(":", 1)[1]
        self.proc = subprocess.Popen([DUALVEC, "serve", str(bundle), "--port", port, "--grace", str(GRACE), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_started(self, timeout: float = 60.0) -> str:
        """The address, once the server's health answers SERVING."""
        try:
            wait_until_serving(self.address, timeout, process=self.proc)
        except NotServingError as exc:
            self.kill()
            pytest.fail(f"{exc}\n" + self.log())
        return self.address

    def log(self) -> str:
        self._reader.join(timeout=10)
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def engine(lee_bundle) -> SearchEngine:
    return SearchEngine(read_bundle(lee_bundle))


@pytest.fixture
def serve(lee_bundle):
    procs: list[ServeProcess] = []

    def start(*extra: str) -> ServeProcess:
        p = ServeProcess(lee_bundle, *extra)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_then_drains_and_exits_0_on_signal(serve, engine, lee_model, lee_bundle, signum):
    ref = reference_of(str(lee_model))
    server = serve("--max-results", "300000")  # the slow batch asks 1,000 x k 300 neighbours
    slow_queries = [SearchQuery((w,), query_space=q, target_space=t, k=300, exact=True)
                    for w, (q, t) in zip(ref.words[:1000], itertools.cycle(ALL_PAIRS))]
    slow_batch = [pb.SearchRequest(positive=q.positive, query_space=PB_SPACE[q.query_space],
                                   target_space=PB_SPACE[q.target_space], k=q.k, exact=True) for q in slow_queries]
    address = server.wait_started()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address) and not address.endswith(":0")

    channel = grpc.insecure_channel(address)
    stub = pb_grpc.DualVecStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).vocab_size == ref.n

    # exact answers over the wire equal numpy, and approximate ones equal the in-process search core
    for q, t in ALL_PAIRS:
        req = pb.SearchRequest(positive=["king", "woman"], negative=["man"], query_space=PB_SPACE[q],
                               target_space=PB_SPACE[t], k=10, exact=True)
        assert_neighbors(stub.Search(req, timeout=10).neighbors,
                         ref.scores(("king", "woman"), ("man",), q, t), 10, ref.words)
    request = pb.SearchRequest(positive=["police"], query_space=pb.IN, target_space=pb.OUT, k=20)
    local = engine.search(SearchQuery(("police",), query_space=Space.IN, target_space=Space.OUT, k=20))
    expected = [(n.word, n.id, n.score) for n in local]
    assert [(n.word, n.id, n.score) for n in stub.Search(request, timeout=10).neighbors] == expected

    # health watchers hear NOT_SERVING when the signal arrives
    statuses: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service="dualvec.v1.DualVec"))

    def watcher() -> None:
        try:
            for resp in watch:
                statuses.append(resp.status)
                if resp.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    watch.cancel()  # let the drain finish without waiting for this stream
                    return
        except grpc.RpcError:
            pass

    # a client that keeps calling through the shutdown, on its own channel
    outcomes: list[object] = []
    stop_calling = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(address) as ch:
            st = pb_grpc.DualVecStub(ch)
            while not stop_calling.is_set():
                try:
                    resp = st.Search(request, timeout=10)
                    outcomes.append([(n.word, n.id, n.score) for n in resp.neighbors])
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and server.proc.poll() is not None:
                        return
                    time.sleep(0.01)

    threads = [threading.Thread(target=watcher), threading.Thread(target=caller)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 30
    while (len(outcomes) < 20 or not statuses) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert statuses[:1] == [health_pb2.HealthCheckResponse.SERVING]
    answered_before = len(outcomes)
    assert answered_before >= 20

    # a slow call (a large exact batch, about a second of work) is in flight when the signal arrives
    big = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    in_flight = pb_grpc.DualVecStub(big).BatchSearch.future(pb.BatchSearchRequest(requests=slow_batch), timeout=30)
    time.sleep(0.4)  # enough for the server to take the call; the batch takes well over a second to answer
    assert not in_flight.done()

    sent = time.monotonic()
    server.proc.send_signal(signum)
    try:
        code = server.proc.wait(timeout=GRACE + 20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dualvec serve still running {GRACE + 20} s after {signum.name}:\n{server.log()}")
    elapsed = time.monotonic() - sent
    time.sleep(0.2)
    stop_calling.set()
    for th in threads:
        th.join(timeout=15)
    log = server.log()

    assert code == 0, log
    try:
        slow = in_flight.result().responses
    except grpc.RpcError as exc:
        pytest.fail(f"the call in flight at {signum.name} failed: {exc.code()} {exc.details()}\n{log}")
    assert len(slow) == len(slow_queries) and all(len(r.neighbors) == 300 for r in slow)
    for i in range(0, len(slow_queries), 97):  # a sample, checked against the in-process search core
        assert [(n.word, n.id, n.score) for n in slow[i].neighbors] == \
            [(n.word, n.id, n.score) for n in engine.search(slow_queries[i])]
    big.close()
    assert elapsed < GRACE + 2.0, f"took {elapsed:.1f} s to exit (grace {GRACE} s)"
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses, statuses
    # every call either got the same answer as before, or was refused: UNAVAILABLE, or CANCELLED for a call gRPC
    # core had queued but not yet handed to the server when shutdown began (see test_only_calls_that_never_started)
    answers = [o for o in outcomes if isinstance(o, list)]
    refused = [o for o in outcomes if not isinstance(o, list)]
    assert all(a == expected for a in answers)
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, set(refused)
    assert refused.count(grpc.StatusCode.CANCELLED) <= 1
    assert len(answers) >= answered_before

    # after the process is gone, calls fail with UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()

    # one line for the start (address and bundle), one for the stop, no traceback
    starts = [line for line in log.splitlines() if START_LINE.search(line)]
    stops = [line for line in log.splitlines() if STOP_LINE.search(line)]
    assert len(starts) == 1 and address in starts[0] and Path(lee_bundle).name in starts[0], log
    assert len(stops) == 1 and address in stops[0], log
    assert signum.name in log
    assert "Traceback" not in log
    assert server.proc.stdout.read() == ""


def test_serve_refuses_a_port_in_use_with_one_line(serve, lee_bundle):
    first = serve()
    address = first.wait_started()
    port = address.rsplit(":", 1)[1]
    second = subprocess.run([DUALVEC, "serve", str(lee_bundle), "--port", port], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and port in errors[0], second.stderr
    assert "Traceback" not in second.stderr
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=GRACE + 20) == 0


def test_only_calls_that_never_started_are_refused_at_shutdown(lee_bundle):
    """In-process, with the search core counted: every call that reached it during the drain was answered; the
    only failures are refusals (UNAVAILABLE, or CANCELLED for a call still queued inside gRPC core)."""
    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, checksums=False)
    engines = load_engines(cfg)
    engine = engines["lee.bundle"]
    search_prepared = engine.search_prepared
    lock = threading.Lock()
    started = [0]

    def slow_search_prepared(prepared):
        with lock:
            started[0] += len(prepared)
        time.sleep(0.05)  # long enough that calls are in flight when stop() begins
        return search_prepared(prepared)

    engine.search_prepared = slow_search_prepared  # before the server (and its batcher) takes the method
    running = start_server(engines, cfg)
    outcomes: list[object] = []
    stop_calling = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(running.address) as ch:
            st = pb_grpc.DualVecStub(ch)
            while not stop_calling.is_set():
                try:
                    st.Search(pb.SearchRequest(positive=["police"], k=5), timeout=10)
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
                    time.sleep(0.01)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 30
    while outcomes.count("ok") < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    running.stop(GRACE)
    assert time.monotonic() - began < GRACE
    time.sleep(0.1)
    stop_calling.set()
    for th in threads:
        th.join(timeout=15)
    assert outcomes.count("ok") == started[0]
    assert set(outcomes) - {"ok"} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert grpc.StatusCode.UNAVAILABLE in outcomes
