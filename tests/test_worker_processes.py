"""`dualvec serve --processes N`: N children share one port and one loaded bundle, each pinned to its own CPU;
they answer as the in-process search core does, and on SIGTERM they all drain and the parent exits 0. A port in
use is refused before anything forks. (A child that dies is replaced: tests/test_supervisor.py.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.search import SearchEngine, SearchQuery
from dualvec.kernel.errors import DualvecError
from dualvec.server.host.worker_processes import child_cpus, resolve_processes
from dualvec.kernel.spaces import ALL_PAIRS
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

from test_server_process import DUALVEC, GRACE, PB_SPACE, START_LINE, STOP_LINE, ServeProcess

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                                    or not Path("/proc").is_dir(), reason="needs two CPUs and /proc")


@pytest.fixture(scope="module")
def engine(lee_bundle) -> SearchEngine:
    return SearchEngine(read_bundle(lee_bundle))


def children_of(pid: int) -> list[int]:
    """Child pids of a process, from /proc (no `ps`: slim images lack it)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state is the parent's pid
                kids.append(int(entry.name))
    return sorted(kids)


@pytest.mark.parametrize("spec, available, expected", [
    ("auto", {0, 1}, [{0}, {1}]), ("auto", {0, 1}, [{0}, {1}, {0}]), ("2,5", set(range(8)), [{2}, {5}]),
    ("all", {0, 1}, [None, None]), ("auto", None, [None, None])])
def test_each_child_gets_one_cpu_in_turn(spec, available, expected):
    assert child_cpus(spec, len(expected), available) == expected


@pytest.mark.parametrize("requested, spec, available, expected", [
    (0, "auto", {0, 1}, 2), (0, "1", {0, 1}, 1), (0, "all", {0, 1}, 1), (0, "auto", {0}, 1),
    (0, "auto", set(range(8)), 1), (0, "auto", None, 1), (3, "auto", set(range(8)), 3)])
def test_auto_is_one_process_per_cpu_only_on_machines_of_two(requested, spec, available, expected):
    assert resolve_processes(requested, spec, available) == expected


def test_a_negative_count_is_refused():
    with pytest.raises(DualvecError, match="--processes must be >= 0"):
        resolve_processes(-1, "auto", {0, 1})


@needs_two_cpus
def test_two_processes_answer_like_the_core_then_drain_and_exit_0(lee_bundle, engine):
    server = ServeProcess(lee_bundle, "--processes", "2")
    try:
        address = server.wait_started()
        kids = children_of(server.proc.pid)
        assert len(kids) == 2
        first_two = sorted(os.sched_getaffinity(0))[:2]
        assert sorted(tuple(os.sched_getaffinity(k)) for k in kids) == [(c,) for c in first_two]
        words = engine.bundle.vocab.words[5:11]
        for n in range(6):  # separate connections: the kernel spreads them over the children
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.DualVecStub(channel)
            qs, ts = ALL_PAIRS[n % len(ALL_PAIRS)]
            got = stub.Search(pb.SearchRequest(positive=[words[n]], query_space=PB_SPACE[qs], target_space=PB_SPACE[ts],
                                               k=5), timeout=20)
            want = engine.search(SearchQuery(positive=(words[n],), query_space=qs, target_space=ts, k=5))
            assert [x.word for x in got.neighbors] == [x.word for x in want]
            channel.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=GRACE + 30) == 0
        log = server.log()
        assert len([line for line in log.splitlines() if START_LINE.search(line)]) == 1
        assert len([line for line in log.splitlines() if STOP_LINE.search(line)]) == 1
        assert "2 processes" in log and "Traceback" not in log
        for k in kids:
            assert not Path(f"/proc/{k}").exists()
    finally:
        server.kill()


def test_a_port_in_use_is_refused_before_forking(lee_bundle):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = subprocess.run([DUALVEC, "serve", str(lee_bundle), "--port", str(port), "--processes", "2"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "Traceback" not in run.stderr
