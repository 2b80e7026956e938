"""scripts/hostile.py against a served bundle: every case gets a status the contract allows (never UNKNOWN or
INTERNAL, no CANCELLED from 500 calls on one channel, no client-side breakage), a table and JSON come out, the
server's tree PSS is sampled around each case, and ordinary answers afterwards are unchanged. The tree sampler
sums PSS over a process and its children."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from access_helpers import serve  # noqa: F401 - serve is a fixture
from dualvec.bench.hostile import CASES, Hostile, format_table
from dualvec.loadtest.sampling import RssSampler, tree_memory

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

ROOT = Path(__file__).resolve().parent.parent
NOT_ALLOWED = ("UNKNOWN", "INTERNAL", "client error")


def test_every_case_gets_an_allowed_status_and_ordinary_answers_stay(serve):
    server = serve("--processes", "2", "--drain-delay", "0", "--grace", "1")
    address = server.address()
    hostile = Hostile(address, server.proc.pid, timeout=60, hold_seconds=1.0)
    try:
        result = hostile.run()
    finally:
        hostile.close()
    print("\n" + format_table(result))
    by_case = {o["case"]: o for o in result["cases"]}
    assert list(by_case) == list(CASES)
    for o in result["cases"]:
        assert not any(bad in o["status"] for bad in NOT_ALLOWED), o
        assert o["pss_before_mib"] and o["pss_after_mib"], o
        assert len(o["message"]) <= 110
    assert "CANCELLED" not in by_case["concurrent_500"]["status"]
    # gRPC's timers have a granularity of about a millisecond: a 40-word bundle may answer before the deadline fires
    assert by_case["deadline_1us"]["status"] in ("DEADLINE_EXCEEDED", "OK")
    assert "meanwhile an ordinary Search on another connection: OK" in by_case["silent_connection"]["message"]
    assert result["ordinary_answers"] == "unchanged"
    assert server.stop() == 0


def test_the_script_prints_a_table_and_writes_json(serve, tmp_path):
    server = serve("--processes", "1")
    address = server.address()
    out = tmp_path / "hostile.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "hostile.py"), address, "--server-pid",
                          str(server.proc.pid), "--cases", "deadline_1us,word_1mb", "--json", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("| case | status |") and "Ordinary queries after every case: unchanged." in run.stdout
    data = json.loads(out.read_text())
    assert [c["case"] for c in data["cases"]] == ["deadline_1us", "word_1mb"]
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "hostile.py"), address, "--cases", "nope"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs /proc/PID/smaps_rollup")
def test_the_sampler_sums_pss_over_the_process_tree():
    # a parent and two children, each touching 32 MiB of its own (not shared): the tree holds about 96 MiB more
    code = ("import os, time\n"
            "for _ in range(2):\n"
            "    if os.fork() == 0:\n"
            "        b = bytearray(32 << 20); time.sleep(4); os._exit(0)\n"
            "b = bytearray(32 << 20); time.sleep(4)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while True:
            m = tree_memory(proc.pid)
            if m.processes == 3 and m.bytes > 96 << 20 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert m.processes == 3 and m.measure == "PSS" and m.bytes > 96 << 20
        with RssSampler(proc.pid, every=0.2) as sampler:
            time.sleep(0.5)
        summary = sampler.summary()
        assert summary["label"] == "PSS of the server's process tree (3 processes)"
        assert summary["start_mib"] > 96 and len(summary["mib"]) == summary["samples"] >= 2
    finally:
        proc.kill()
        proc.wait()
