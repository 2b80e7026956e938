"""The benchmark's compiled load generator (dualvec/bench/grpc_loadgen.go, driven by dualvec/bench/load.py): the request
file round-trips; a machine without Go or grpc-go gets the package to install, not a traceback; where they are
installed (Debian: golang-go, golang-google-grpc-dev), the generator is built offline and measures a real server
(every call answered, errors counted by status code, a bad request file refused in one line)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dualvec.v1 import dualvec_pb2 as pb

import dualvec.bench.load as bench_load

pytestmark = pytest.mark.slow  # thousands of generated requests or a compiled generator: .ci/run covers it


def read_requests(path: Path) -> list[bytes]:
    """The Go reader's format, read back in Python: uvarint length, then that many bytes."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        n = shift = 0
        while True:
            byte = data[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(data[i:i + n])
        i += n
    return out


def test_request_file_round_trips_including_long_messages(tmp_path):
    # a 200-character word makes a message longer than 127 bytes: a two-byte length prefix
    queries = [("king", "in", "out"), ("w" * 200, "out", "in"), ("queen", "out", "out")]
    requests = bench_load.search_requests(queries, k=7)
    path = tmp_path / "requests.bin"
    bench_load.write_requests(path, requests)
    back = [pb.SearchRequest.FromString(b) for b in read_requests(path)]
    assert back == requests
    assert [(r.positive[0], r.query_space, r.target_space, r.k) for r in back] == [
        ("king", pb.IN, pb.OUT, 7), ("w" * 200, pb.OUT, pb.IN, 7), ("queen", pb.OUT, pb.OUT, 7)]
    assert len(bench_load._uvarint(300)) == 2 and bench_load._uvarint(127) == b"\x7f"


def test_build_names_the_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no go on PATH
    binary, why = bench_load.build_go_loadgen(tmp_path / "cache")
    assert binary is None and "golang-go" in why

    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\nexit 0\n")
    fake_go.chmod(0o755)
    monkeypatch.setenv("GOPATH", str(tmp_path / "empty-gopath"))
    monkeypatch.setattr(bench_load, "DEBIAN_GOPATH", tmp_path / "no-such-dir")
    binary, why = bench_load.build_go_loadgen(tmp_path / "cache")
    assert binary is None and "golang-google-grpc-dev" in why


def test_the_go_source_ships_where_the_builder_reads_it():
    assert bench_load.GO_SOURCE.is_file(), bench_load.GO_SOURCE
    assert "package main" in bench_load.GO_SOURCE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def BINARY() -> Path:
    """The compiled load generator. Without a Go toolchain the tests that run it are skipped (.ci/run installs
    golang-go and golang-google-grpc-dev); with one, a generator that does not build fails them."""
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain here (apt-get install golang-go golang-google-grpc-dev; .ci/run does)")
    binary, why = bench_load.build_go_loadgen(Path(__file__).resolve().parent.parent / ".pytest_cache" /
                                              "grpc-loadgen")
    if binary is None:
        pytest.fail(f"the Go load generator does not build: {why}")
    return binary


@pytest.fixture(scope="module")
def server(lee_server):
    return lee_server


def test_go_load_generator_measures_a_real_server(BINARY, server, lee_bundle):
    words = [line.split("\t")[0] for line in (lee_bundle / "vocab.tsv").read_text().splitlines()[:50]]
    queries = [(w, "in" if i % 2 else "out", "out" if i % 3 else "in") for i, w in enumerate(words)]
    before = server.servicer.batchers[server.servicer.default].stats().items
    res = bench_load.run_load_go(BINARY, server.address, bench_load.search_requests(queries, 10), clients=4,
                                 seconds=1.0, warmup=0.2)
    after = server.servicer.batchers[server.servicer.default].stats().items
    assert res["errors"] == {}
    assert res["queries"] > 20 and res["qps"] == pytest.approx(res["queries"] / 1.0)
    # every counted call reached the search core (and warm-up and tail calls too)
    assert after - before >= res["queries"]
    assert 0 < res["p50_us"] <= res["p99_us"] < 1e6
    assert res["client_cpu_us_per_call"] > 0 and res["clients"] == 4 and res["processes"] == 1


def test_go_load_generator_counts_errors_by_status(BINARY, server, tmp_path):
    # an unknown word: every call fails with NOT_FOUND (the server names the word); none is counted as answered
    unknown = bench_load.search_requests([("no-such-word-xyz", "in", "out")], 10)
    res = bench_load.run_load_go(BINARY, server.address, unknown, clients=2, seconds=0.5, warmup=0.1)
    assert res["queries"] == 0 and set(res["errors"]) == {"NOT_FOUND"} and res["errors"]["NOT_FOUND"] > 0


def test_go_load_generator_measures_bare_health_checks(BINARY, server):
    # the throughput phase's reference load: the same generator, calls that do no work
    before = server.servicer.batchers[server.servicer.default].stats().items
    res = bench_load.run_load_go(BINARY, server.address, bench_load.health_check_requests(), clients=2,
                                 seconds=0.5, warmup=0.1, method=bench_load.HEALTH_CHECK_METHOD)
    assert res["errors"] == {} and res["queries"] > 20
    assert server.servicer.batchers[server.servicer.default].stats().items == before  # no search ran


def test_go_load_generator_refuses_a_truncated_request_file(BINARY, tmp_path, server):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x05ab")  # says 5 bytes, holds 2
    proc = subprocess.run([str(BINARY), "-addr", server.address, "-requests", str(bad), "-duration", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "request 0 is cut short" in proc.stderr and proc.stderr.count("\n") == 1


def _throughput(go_qps: float | None) -> dict:
    load = {"processes": 4, "qps": 1500.0, "p50_us": 19000.0, "p99_us": 59000.0, "errors": {},
            "server_cpu_us_per_call": 1100.0, "server_cpu_cores": 1.7}
    t = {"command": "bench.py B --phases throughput", "grpc": {"32": load},
         "inprocess": {"1 thread, batch 64, 2 omp": {"qps": 5000.0, "cpu_us_per_query": 400.0},
                       "2 threads, 1 query/call": {"qps": 3900.0, "cpu_us_per_query": 513.0}},
         "top_clients": 32, "inprocess_best": {"mode": "1 thread, batch 64, 2 omp", "qps": 5000.0},
         "ratio_load_generator": "python", "ratio_grpc32_to_inprocess": 0.30, "ratio_grpc32_to_single": 0.38,
         "ratios_by_load_generator": {"python": 0.30}}
    if go_qps is not None:
        t["grpc_go"] = {"32": {**load, "qps": go_qps, "processes": 1, "client_cpu_us_per_call": 100.0}}
        t.update(ratio_load_generator="go", ratio_grpc32_to_inprocess=go_qps / 5000.0,
                 ratio_grpc32_to_single=go_qps / 3900.0,
                 ratios_by_load_generator={"go": go_qps / 5000.0, "python": 0.30})
    else:
        t["grpc_go_unavailable"] = "no Go toolchain (apt-get install golang-go golang-google-grpc-dev)"
    return t


def test_report_judges_throughput_by_the_go_load_generator_and_shows_both():
    import dualvec.bench.report as bench_report

    r = {"throughput": _throughput(2600.0)}
    row = next(x for x in bench_report.judge_targets(r) if x["target"].startswith("gRPC throughput"))
    assert row["met"] is True  # 2600 / 5000 = 0.52
    assert "Go load generator" in row["measured"] and "Python clients 0.30" in row["measured"]
    text = "\n".join(bench_report.format_throughput(r["throughput"]))
    assert "32 clients, Go load generator:" in text and "32 clients, Python (4 processes):" in text
    assert "server CPU 1100 us per call (1.70 cores)" in text and "400 us of CPU per query" in text

    # with the bare-call load measured, the row and the section give the machine's ceiling
    r["throughput"]["grpc_go_bare"] = {"32": {"qps": 5000.0, "server_cpu_us_per_call": 250.0,
                                              "server_cpu_cores": 1.25, "errors": {}}}
    r["throughput"]["ceiling"] = {"bare_call_server_cpu_us": 250.0, "inprocess_cpu_us_per_query": 400.0,
                                  "load_generator_cpu_us_per_call": 100.0, "cpus": 2, "qps": 2666.7,
                                  "ratio": 0.5333, "single_query_cpu_us": 550.0, "qps_one_at_a_time": 2222.2,
                                  "ratio_one_at_a_time": 0.4444}
    row = next(x for x in bench_report.judge_targets(r) if x["target"].startswith("gRPC throughput"))
    assert row["measured"].endswith("; this machine's ceiling 0.53, 0.44 with one search per FAISS call (see "
                                    "throughput)")
    text = "\n".join(bench_report.format_throughput(r["throughput"]))
    assert "32 clients, Go load generator, health Check (no work):     5000 calls/s; server CPU 250 us" in text
    assert "2 CPUs / (server 250 + search 400 + load generator 100 us of CPU per call) = 2667 qps, ratio 0.53" in text
    assert "with one search per FAISS call (550 us of CPU, as calls reach the server one at a time): 2222 qps, " \
           "ratio 0.44" in text

    r = {"throughput": _throughput(None)}
    row = next(x for x in bench_report.judge_targets(r) if x["target"].startswith("gRPC throughput"))
    assert row["met"] is False and "Python clients" in row["measured"]
    assert "Go load generator not run: no Go toolchain" in "\n".join(bench_report.format_throughput(r["throughput"]))
