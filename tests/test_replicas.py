"""Three local replicas (`dualvec serve` on three ports, one process each) behind the client's round_robin with
retries (dualvec.Client's default service config): six client threads call while each replica in turn gets
SIGTERM and is started again on its port. No call fails, and each draining replica reports NOT_SERVING on health
before it exits. The same run as a command: python scripts/replicas.py restart BUNDLE (docs/scaling.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dualvec.bench.replicas import rolling_restart, start_replicas, stop_replicas, target_of
from dualvec.client import Client

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

ROOT = Path(__file__).resolve().parent.parent
SMALL_BUNDLE = str(ROOT / "tests" / "fixtures" / "bundle_v1" / "flat")  # 40 words x 8 dims
WORDS = ("the", "of", "said", "has", "police")


@pytest.fixture
def replicas(tmp_path):
    started = start_replicas(SMALL_BUNDLE, 3, ("--drain-delay", "1", "--grace", "5"), tmp_path)
    yield started
    stop_replicas(started)


def test_calls_spread_over_every_replica_of_one_target(replicas):
    with Client(target_of(replicas)) as client:
        client.wait_ready()
        for _ in range(30):
            assert client.search(["the"], k=3)
    # each replica's own counter of answered calls is not exposed; its health is, and each is SERVING
    assert [r.health() for r in replicas] == ["SERVING"] * 3


def test_restarting_each_of_three_replicas_under_six_client_threads_fails_no_call(replicas, tmp_path):
    words = tuple(w for w in WORDS if w != "police")  # the small bundle's words
    out = rolling_restart(replicas, threads=6, words=words, settle=1.0)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("replica-*.log")))
    assert out["calls_failed"] == 0, (out["failures"], logs)
    assert out["calls_ok"] > 100
    for drain in out["drains"]:
        assert drain["exit_code"] == 0, logs
        assert drain["not_serving_before_exit"], (drain, logs)
        assert drain["heard"][-1] in ("NOT_SERVING", "UNAVAILABLE"), drain
        assert drain["seconds"] < 1 + 5 + 3, drain  # drain delay + grace + a margin
    assert [r.health() for r in replicas] == ["SERVING"] * 3  # all back


def test_the_documented_command_reports_the_same(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "replicas.py"), "restart", SMALL_BUNDLE,
                          "--replicas", "3", "--threads", "6", "--words", "the,of,said", "--logs", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "failed 0" in run.stdout and run.stdout.count("NOT_SERVING") == 3, run.stdout
