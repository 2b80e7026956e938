"""Draining on SIGTERM (dualvec.server.draining): health NOT_SERVING at once, calls still answered for
--drain-delay seconds, then new calls refused and those in flight finished within --grace; with --processes 2
both processes drain together and the parent exits after them. Under load from several client threads no call
fails; the process exits within drain-delay + grace + a margin; a server starts again on the same port right
after; a signal during start-up or a second signal is never lost."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dualvec.client import pick_free_port, wait_until_serving
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

DUALVEC = str(Path(sys.executable).with_name("dualvec"))
SMALL_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_v1" / "flat"  # 40 words x 8 dims
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
MARGIN = 3.0  # seconds beyond drain-delay + grace for the processes to exit, on a shared 2-CPU machine
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel of its own: a new connection, a new process


class Serve:
    """`dualvec serve` in a subprocess on ``port`` (picked free when None); its stderr is kept line by line."""

    def __init__(self, bundle: Path, *extra: str, port: int | None = None):
        self.port = port or pick_free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([DUALVEC, "serve", str(bundle), "--port", str(self.port), *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(l.rstrip("\n") for l in self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    def wait_serving(self, timeout: float = 60.0) -> "Serve":
        wait_until_serving(self.address, timeout, process=self.proc)
        return self

    def log(self) -> str:
        self._reader.join(timeout=10)
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def serve():
    started: list[Serve] = []

    def start(bundle: Path, *extra: str, port: int | None = None) -> Serve:
        started.append(Serve(bundle, *extra, port=port))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def health_of(address: str, timeout: float = 2.0) -> int | str:
    """One health Check on a connection of its own: the status, or the error code's name."""
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError as exc:
            return exc.code().name


@dataclass
class Load:
    """Client threads calling Search in a loop, each on its own connection, until ``stop`` is set; every outcome
    is kept with its start and end times."""

    address: str
    threads: int = 6
    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, "ok" or a code name)

    def __post_init__(self):
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        request = pb.SearchRequest(positive=["the"], k=10, query_space=pb.IN, target_space=pb.OUT if i % 2 else pb.IN)
        with grpc.insecure_channel(self.address, options=OWN_CONNECTION + [("dualvec.test.thread", i)]) as ch:
            search = pb_grpc.DualVecStub(ch).Search
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    search(request, timeout=10)
                    outcome = "ok"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                self.outcomes.append((began, time.monotonic(), outcome))

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=20)

    def failed(self) -> list[tuple[float, float, str]]:
        return [o for o in self.outcomes if o[2] != "ok"]


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    """(exit code or None if still running after ``timeout``, seconds waited)."""
    began = time.monotonic()
    try:
        return proc.wait(timeout=timeout), time.monotonic() - began
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - began


def test_sigterm_under_load_with_two_processes_fails_no_call_and_drains_within_its_times(serve, lee_bundle):
    delay, grace = 3.0, 20.0  # the grace is a bound: the drain ends as soon as the slow calls are done
    # the slow calls below ask 1,000 x k 300 neighbours each, above the default --max-results
    server = serve(lee_bundle, "--processes", "2", "--drain-delay", str(delay), "--grace", str(grace),
                   "--max-results", "300000").wait_serving()
    load = Load(server.address, threads=6)
    statuses: list[tuple[float, int | str]] = []
    watching = threading.Event()

    def watch_health() -> None:  # fresh connections: the kernel spreads them over both processes
        while not watching.is_set():
            statuses.append((time.monotonic(), health_of(server.address)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    time.sleep(1.5)
    assert len(load.outcomes) > 50 and not load.failed(), load.failed()[:5]

    # calls that take over a second each (a large exact batch), in flight on both processes when the drain
    # delay ends and new calls are refused: they must finish within the grace period. Serialized beforehand, so
    # that sending them takes no time on a busy machine.
    words = [pb.SearchRequest(positive=[w], k=300, exact=True, query_space=pb.IN, target_space=pb.OUT)
             for w in ("police", "government", "people", "australia") * 250]
    slow_request = pb.BatchSearchRequest(requests=words).SerializeToString()
    slow_channels = [grpc.insecure_channel(server.address, options=OWN_CONNECTION + [("dualvec.test.slow", i),
                     ("grpc.max_receive_message_length", 64 << 20)]) for i in range(4)]
    slow_calls = [ch.unary_unary("/dualvec.v1.DualVec/BatchSearch", request_serializer=None,
                                 response_deserializer=pb.BatchSearchResponse.FromString) for ch in slow_channels]

    def until(t: float) -> None:
        time.sleep(max(0.0, t - time.monotonic()))

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    # the client threads stop half-way through the delay: after it, a lone server refuses new calls
    until(signalled + delay / 2)
    load.finish()
    until(signalled + delay - 1.0)  # a second's margin: sending them can wait for a CPU on a busy machine
    slow = [call.future(slow_request, timeout=60) for call in slow_calls]
    until(signalled + delay - 0.05)
    in_flight_at_stop = sum(not f.done() for f in slow)
    code, _ = wait_exit(server.proc, delay + grace + MARGIN + 10)
    exited = time.monotonic()
    watching.set()
    watcher.join(timeout=10)
    log = server.log()

    assert code == 0, log
    assert not load.failed(), (load.failed()[:5], log)
    assert sum(1 for began, _, _ in load.outcomes if began > signalled + 0.2) > 20  # answered during the delay
    assert in_flight_at_stop >= 2  # the slow calls were still running when the drain delay ended
    for future in slow:
        assert len(future.result().responses) == len(words), log
    for ch in slow_channels:
        ch.close()
    # health: NOT_SERVING from right after the signal until the processes stop answering at all
    during = [s for t, s in statuses if signalled + 0.3 < t < signalled + delay - 0.1 and isinstance(s, int)]
    assert len(during) >= 5 and set(during) == {NOT_SERVING}, during  # (checks a loaded machine timed out aside)
    assert SERVING in [s for t, s in statuses if t < signalled]
    assert delay <= exited - signalled < delay + grace + MARGIN, f"exited {exited - signalled:.1f} s after SIGTERM"
    assert len(re.findall(r"drain delay", log)) == 2 and "stopped serving on" in log and "Traceback" not in log


@pytest.mark.parametrize("processes", [1, 2])
def test_a_server_starts_again_on_the_same_port_right_after_it_exits(serve, processes):
    first = serve(SMALL_BUNDLE, "--processes", str(processes), "--drain-delay", "0", "--grace", "2").wait_serving()
    # connections the server closes itself leave its side of them in TIME_WAIT, on the server's port
    load = Load(first.address, threads=4)
    time.sleep(0.5)
    first.proc.send_signal(signal.SIGTERM)
    code, _ = wait_exit(first.proc, 2 + MARGIN + 10)
    load.finish()
    assert code == 0, first.log()
    second = serve(SMALL_BUNDLE, "--processes", str(processes), "--drain-delay", "0", port=first.port)
    second.wait_serving(timeout=30)
    with grpc.insecure_channel(second.address) as ch:
        assert pb_grpc.DualVecStub(ch).Search(pb.SearchRequest(positive=["the"], k=3), timeout=10).neighbors
    second.proc.send_signal(signal.SIGTERM)
    assert wait_exit(second.proc, 2 + MARGIN + 10)[0] == 0


@pytest.mark.parametrize("after", [0.0, 0.3, 0.6])
def test_a_signal_that_arrives_while_the_processes_start_is_never_lost(serve, after):
    """SIGTERM soon after start, at moments that fall before, during and after the forks: every process stops
    within the drain delay and grace, none is left to be killed."""
    server = serve(SMALL_BUNDLE, "--processes", "2", "--drain-delay", "0", "--grace", "1", "--skip-checksums")
    deadline = time.monotonic() + 30
    while "loaded bundle" not in "\n".join(server.lines) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(after)
    server.proc.send_signal(signal.SIGTERM)
    code, waited = wait_exit(server.proc, 1 + MARGIN + 10)
    log = server.log()
    assert code is not None and waited < 1 + MARGIN, f"still running {waited:.1f} s after SIGTERM:\n{log}"
    assert "did not stop in time" not in log and "Traceback" not in log, log


def test_a_second_signal_cuts_the_drain_delay_short(serve):
    server = serve(SMALL_BUNDLE, "--processes", "2", "--drain-delay", "60", "--grace", "1").wait_serving()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert health_of(server.address) == NOT_SERVING  # still answering: the delay runs
    server.proc.send_signal(signal.SIGTERM)
    code, waited = wait_exit(server.proc, 1 + MARGIN + 10)
    # the delay was 60 s: an exit within the grace plus a loaded machine's margin shows it was cut short
    assert code == 0 and waited < 1 + 2 * MARGIN, server.log()


def test_a_signal_to_the_whole_process_group_drains_once_with_the_full_delay(serve):
    """Ctrl-C in a terminal and systemd's stop signal every process of the group: each worker gets its own copy
    and its parent's forward, which is the same request, not a second one."""
    delay = 2.0
    server = serve(SMALL_BUNDLE, "--processes", "2", "--drain-delay", str(delay), "--grace", "1").wait_serving()
    signalled = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)  # the server leads a session (and a process group) of its own
    time.sleep(delay - 0.7)
    assert health_of(server.address) == NOT_SERVING  # still answering: the delay runs in every process
    code, _ = wait_exit(server.proc, delay + 1 + MARGIN + 10)
    assert code == 0 and time.monotonic() - signalled >= delay, server.log()


def test_a_negative_drain_delay_is_refused_with_one_line():
    run = subprocess.run([DUALVEC, "serve", str(SMALL_BUNDLE), "--drain-delay", "-1"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == ["dualvec serve: error: --drain-delay must be >= 0 seconds, got -1"]


def test_open_health_watches_do_not_hold_the_stop_for_the_whole_grace_period():
    """In-process: a client watching health (client-side health checking) hears NOT_SERVING when the drain
    begins, and its stream is ended when the drain delay is over, so the stop waits only for real calls."""
    cfg = ServerConfig(bundles=(str(SMALL_BUNDLE),), port=0, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    heard: list[int] = []
    ended = threading.Event()
    channel = grpc.insecure_channel(running.address)
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="dualvec.v1.DualVec"))

    def watch() -> None:
        try:
            for response in stream:
                heard.append(response.status)
        except grpc.RpcError:
            pass
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    running.drain(0.5, 10.0)
    took = time.monotonic() - began
    assert ended.wait(5)
    channel.close()
    assert heard == [SERVING, NOT_SERVING]
    assert 0.5 <= took < 3.0, f"the stop took {took:.1f} s with a Watch open (grace 10 s)"
