"""`dualvec serve --cpus`: which CPU sets each value asks for, the errors that name a bad one, and a real server
process whose threads all run on the CPUs asked for."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from dualvec.kernel.errors import DualvecError
from dualvec.server.host.cpu_affinity import format_cpus, parse_cpus

from test_server_process import DUALVEC, GRACE, ServeProcess

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="platform has no CPU affinity")


@pytest.mark.parametrize("spec, expected", [("1", {1}), ("0,2", {0, 2}), ("0-3", {0, 1, 2, 3}),
                                            (" 1 , 3-4 ", {1, 3, 4}), ("all", None)])
def test_lists_and_ranges(spec, expected):
    assert parse_cpus(spec, set(range(8))) == expected


@pytest.mark.parametrize("available, expected", [({0, 1}, {1}), ({4, 7}, {7}), ({0}, None),
                                                 (set(range(4)), None), (None, None)])
def test_auto_pins_to_one_cpu_only_on_machines_of_two(available, expected):
    assert parse_cpus("auto", available) == expected


@pytest.mark.parametrize("spec, words", [("9", ["CPU 9", "available: 0-3"]), ("2-5", ["CPU 4, 5", "0-3"]),
                                         ("one", ["'one'", "not a CPU number"]), ("3-1", ["'3-1'"])])
def test_bad_values_name_the_cpu_and_what_is_available(spec, words):
    with pytest.raises(DualvecError) as err:
        parse_cpus(spec, set(range(4)))
    assert str(err.value).startswith("--cpus: ")
    for w in words:
        assert w in str(err.value)


def test_a_list_on_a_platform_without_affinity_is_refused():
    with pytest.raises(DualvecError, match="cannot pin"):
        parse_cpus("0", None)


def test_format_cpus():
    assert format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpus({3}) == "3"


@needs_affinity
def test_served_threads_all_run_on_the_cpus_asked_for(lee_bundle):
    cpu = max(os.sched_getaffinity(0))
    server = ServeProcess(lee_bundle, "--cpus", str(cpu))
    try:
        server.wait_started()
        pid = server.proc.pid
        tids = os.listdir(f"/proc/{pid}/task")
        assert len(tids) > 3  # gRPC's and the pool's threads exist by now
        for tid in tids:
            assert os.sched_getaffinity(int(tid)) == {cpu}, tid
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=GRACE + 20) == 0
        assert f"pinned to CPU {cpu}" in server.log()
    finally:
        server.kill()


@needs_affinity
def test_serve_refuses_an_unavailable_cpu_in_one_line(lee_bundle):
    bad = max(os.sched_getaffinity(0)) + 64
    run = subprocess.run([DUALVEC, "serve", str(lee_bundle), "--port", "0", "--cpus", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"CPU {bad} is not available" in run.stderr
    assert "Traceback" not in run.stderr
