"""`dualvec serve --processes 2` supervises its workers as gunicorn's arbiter does: a worker killed with SIGKILL
under light load is replaced by a new one on its CPU while the other serves on (clients keep their answers, health
stays SERVING); the metrics forget the dead worker's live gauges; workers that die again and again make the server
give up with exit 1; and a worker that does not stop at shutdown is killed after its grace, its exit code logged."""
from __future__ import annotations

import glob
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from access_helpers import serve  # noqa: F401 - serve is a fixture
from dualvec import Client
from dualvec.client.client import ClientError
from test_worker_processes import children_of, needs_two_cpus

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

FAST_STOP = ("--drain-delay", "0", "--grace", "1")


def wait_for_children(pid: int, count: int, other_than: set[int] = frozenset(), timeout: float = 30.0) -> list[int]:
    """The children of ``pid`` once there are ``count`` of them, none in ``other_than``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children_of(pid)
        if len(kids) == count and not set(kids) & set(other_than):
            return kids
        time.sleep(0.05)
    pytest.fail(f"children of {pid}: {children_of(pid)}, wanted {count} other than {sorted(other_than)}")


def fresh_client(address: str) -> Client:
    """A client on a connection of its own (gRPC would otherwise share one between channels to one address)."""
    return Client(address, timeout=10,
                  channel=grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]))


def health_of(address: str) -> str:
    """The server's health as a new connection sees it (each lands on either worker). A connection that reached
    the killed worker's listening socket in the instant it died is reset: wait_for_ready tries again, as a probe
    does at its next period."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10,
                                                           wait_for_ready=True)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)


class LightLoad:
    """Three client threads, each on its own connection, a Search every 20 ms; outcomes counted."""

    def __init__(self, address: str):
        self.address = address
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(3)]

    def __enter__(self) -> "LightLoad":
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(30)

    def _run(self) -> None:
        with Client(self.address, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    client.search("the", k=3)
                    self.ok += 1
                except ClientError as exc:
                    self.failed.append(exc.code.name)
                time.sleep(0.02)


@needs_two_cpus
def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(serve):
    server = serve("--processes", "2", *FAST_STOP)
    address = server.address()
    first = wait_for_children(server.proc.pid, 2)
    with LightLoad(address) as load:
        time.sleep(0.5)
        os.kill(first[0], signal.SIGKILL)
        healths = []
        for _ in range(10):  # new connections, spread by the kernel over the workers alive
            healths.append(health_of(address))
        kids = wait_for_children(server.proc.pid, 2, other_than={first[0]})
        server.wait_for(r"serving again")
        answered_before = load.ok
        time.sleep(1.0)
        answered_after = load.ok
    assert first[1] in kids  # the other worker served on
    new = (set(kids) - {first[1]}).pop()
    assert set(healths) == {"SERVING"} and health_of(address) == "SERVING"
    assert answered_after > answered_before  # still answering once replaced
    print(f"\nlight load across the kill: {load.ok} answered, failed {load.failed}")
    assert len(load.failed) <= 3, load.failed  # at most a call in flight on the killed worker, per client
    for n in range(6):  # every worker answers, the new one too
        with fresh_client(address) as client:
            assert [x.word for x in client.search("the", k=2)]
    log = server.log()
    assert f"(pid {first[0]}) was killed by SIGKILL (exit code -9); started pid {new} in its place" in log
    assert server.stop() == 0
    assert "Traceback" not in server.log()


@needs_two_cpus
def test_the_metrics_forget_a_dead_worker(serve):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "dualvec-metrics-*")))
    server = serve("--processes", "2", "--metrics-port", "0", *FAST_STOP)
    address = server.address()
    url = server.metrics_url()
    directory = (set(glob.glob(os.path.join(tempfile.gettempdir(), "dualvec-metrics-*"))) - before).pop()
    kids = wait_for_children(server.proc.pid, 2)
    for _ in range(4):  # a call in each process: each writes its files
        with fresh_client(address) as client:
            client.search("the", k=2)
    victim = kids[0]
    live = lambda pid: glob.glob(os.path.join(directory, f"gauge_live*_{pid}.db"))  # noqa: E731
    os.kill(victim, signal.SIGKILL)
    wait_for_children(server.proc.pid, 2, other_than={victim})
    server.wait_for("serving again")
    assert live(victim) == []  # mark_process_dead ran when it was reaped
    import urllib.request
    assert b"dualvec_calls_total" in urllib.request.urlopen(url, timeout=10).read()
    assert server.stop() == 0


@needs_two_cpus
def test_workers_that_keep_dying_make_the_server_give_up(serve):
    server = serve("--processes", "2", *FAST_STOP)
    server.address()
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    while server.proc.poll() is None and time.monotonic() < deadline:
        for pid in children_of(server.proc.pid):
            if pid not in killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    assert server.proc.wait(timeout=30) == 1
    log = server.log()
    assert "worker processes died within 60 s: giving up" in log
    assert len(killed) <= 6  # gave up at the fifth death: no more were started (one may have been starting)
    assert children_of(server.proc.pid) == []


@needs_two_cpus
def test_a_worker_that_does_not_stop_is_killed_and_its_exit_code_logged(serve):
    server = serve("--processes", "2", *FAST_STOP)
    server.address()
    kids = wait_for_children(server.proc.pid, 2)
    os.kill(kids[1], signal.SIGSTOP)  # it cannot act on SIGTERM
    try:
        t0 = time.monotonic()
        code = server.stop(timeout=40)
        took = time.monotonic() - t0
    finally:
        if Path(f"/proc/{kids[1]}").exists():
            os.kill(kids[1], signal.SIGKILL)
    assert code == 1 and took < 25  # the grace (1 s) plus 10 s, not forever
    assert f"worker process 2 (pid {kids[1]}) did not stop in time; killed (exit code -9)" in server.log()
