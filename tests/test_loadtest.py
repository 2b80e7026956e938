"""The load generator (dualvec.loadtest): its histogram is exact within its resolution and merges exactly; closed
and open loop against an in-process server report sane numbers as JSON; answers under load equal idle answers;
the open loop counts queueing delay (a deliberately slow fake server); several processes merge their histograms;
a sweep draws a capacity curve; a bad address is one line on stderr."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from dualvec.loadtest.cli import build_parser, main
from dualvec.loadtest.errors import LoadtestError
from dualvec.loadtest.histogram import Histogram
from dualvec.loadtest.sweep import parse_sweep
from dualvec.loadtest.workload import OPS, RankedWords, parse_mix, same_answer
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
ALL_MIX = "in-in=1,in-out=1,out-in=1,out-out=1,batch=0.2,desm=0.2"


@pytest.fixture(scope="module")
def server(lee_server):
    return lee_server


def run_json(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def assert_sane_latency(lat: dict) -> None:
    values = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
    assert all(v is not None and v >= 0 for v in values), lat
    assert values == sorted(values), lat
    assert lat["max"] < 5000.0, lat  # nothing near the deadline


# ----------------------------------------------------------------------------------------------------- histogram

def test_histogram_percentiles_match_exact_percentiles_within_resolution():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.lognormal(7.0, 1.0, 20000), rng.integers(0, 3000, 5000)]).astype(np.int64)
    h = Histogram()
    h.record_many(values)
    assert h.total == len(values) and h.max == values.max() and h.min == values.min()
    for q in (0.1, 1, 10, 50, 90, 99, 99.9, 99.99, 100):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        got = h.percentile(q)
        assert exact <= got <= exact * (1 + 1 / 1024) + 1, (q, exact, got)  # never below, at most one bucket above
    assert math.isclose(h.mean(), values.mean(), rel_tol=1e-9)


def test_histogram_buckets_tile_the_values_without_gaps():
    h = Histogram(bits=5)
    for v in (0, 1, 15, 16, 31, 32, 33, 63, 64, 1000, 12345, 2**30 + 7):
        low, high = h.bucket_bounds(h.index_of(v))
        assert low <= v <= high
        assert (high - low + 1) <= max(1, v / 16 + 1)
    idx = np.arange(h.index_of(2**20))
    low, high = h.bucket_bounds(idx)
    assert np.all(low[1:] == high[:-1] + 1)  # consecutive buckets meet


def test_histogram_merge_equals_the_histogram_of_all_values():
    rng = np.random.default_rng(2)
    parts = [rng.exponential(scale, 3000).astype(np.int64) for scale in (100, 2000, 50000)]
    whole = Histogram()
    whole.record_many(np.concatenate(parts))
    pieces = []
    for p in parts:
        h = Histogram()
        h.record_many(p)
        pieces.append(Histogram.from_state(json.loads(json.dumps(h.to_state()))))  # as worker processes send them
    merged = Histogram.merged(pieces)
    assert np.array_equal(merged.counts, whole.counts)
    assert (merged.total, merged.sum, merged.min, merged.max) == (whole.total, whole.sum, whole.min, whole.max)
    for q in (50, 99, 99.9):
        assert merged.percentile(q) == whole.percentile(q)
    with pytest.raises(ValueError):
        merged.merge(Histogram(bits=7))


def test_empty_histogram_has_no_percentiles():
    assert math.isnan(Histogram().percentile(50))


# ------------------------------------------------------------------------------------------------------ parsing

def test_mix_and_sweep_specs_parse_and_bad_ones_are_named():
    assert parse_mix("in-in=1, out-out=0.5,batch=0") == {"in-in": 1.0, "out-out": 0.5}
    with pytest.raises(LoadtestError, match="in-up"):
        parse_mix("in-up=1")
    with pytest.raises(LoadtestError, match="no operation"):
        parse_mix("in-in=0")
    assert parse_sweep("200:1000:200") == [200, 400, 600, 800, 1000]
    assert parse_sweep("500,100") == [100, 500]
    assert parse_sweep("auto") is None
    with pytest.raises(LoadtestError, match="START:STOP:STEP"):
        parse_sweep("200:100:50")


def test_zipf_draws_favour_frequent_ranks_and_map_to_the_nearest_known_word():
    words = RankedWords(np.array([0, 1, 2, 100, 1000]), ["a", "b", "c", "d", "e"], 2000, "test")
    rng = np.random.default_rng(0)
    drawn = words.draw(rng, 5000, zipf=1.0)
    counts = {w: drawn.count(w) for w in "abcde"}
    assert 1.6 < counts["a"] / counts["b"] < 2.5  # P(rank 0) / P(rank 1) = 2 under Zipf s=1
    assert counts["c"] > counts["b"] and counts["e"] > 0  # c stands for ranks 2..50, e for 550..2000
    uniform = words.draw(rng, 5000, zipf=0.0)
    assert uniform.count("e") > uniform.count("a")  # ranks 550..2000 all map to "e"


def test_same_answer_tolerates_float_noise_and_ties_but_not_other_words():
    def resp(*pairs):
        return pb.SearchResponse(neighbors=[pb.Neighbor(word=str(i), id=i, score=s) for i, s in pairs])
    a = resp((1, 0.9), (2, 0.8), (3, 0.5))
    assert same_answer("/dualvec.v1.DualVec/Search", a.SerializeToString(),
                       resp((1, 0.9 + 1e-7), (2, 0.8), (3, 0.5)).SerializeToString())
    assert same_answer("/dualvec.v1.DualVec/Search", a.SerializeToString(),
                       resp((1, 0.9), (2, 0.8), (4, 0.5)).SerializeToString())  # a tie at the cut
    assert not same_answer("/dualvec.v1.DualVec/Search", a.SerializeToString(),
                           resp((1, 0.9), (5, 0.8), (3, 0.5)).SerializeToString())


# ---------------------------------------------------------------------------------------------- against a server

def test_closed_loop_reports_sane_numbers_and_answers_equal_idle_answers(server, capsys):
    s = run_json(capsys, server.address, "--concurrency", "4", "--duration", "1.5", "--warmup", "0.3",
                 "--mix", ALL_MIX, "--pool", "120", "--check")
    assert s["mode"] == "closed" and s["concurrency"] == 4 and s["offered_rate"] is None
    calls = s["calls"]
    assert calls["sent"] > 20 and calls["failed"] == 0 and calls["unfinished"] == 0
    assert calls["checked"] == calls["ok"] > 0 and calls["wrong_answers"] == 0
    assert s["errors"] == {} and s["error_rate"] == 0
    assert_sane_latency(s["latency_ms"])
    assert set(s["per_op"]) == set(OPS)
    assert sum(op["count"] for op in s["per_op"].values()) == calls["ok"]
    # closed loop: throughput is about clients / latency (Little's law)
    little = 4 / (s["latency_ms"]["mean"] / 1000.0)
    assert 0.5 * little < s["achieved_rate"] < 1.5 * little, (s["achieved_rate"], little)
    assert s["vocab_size"] > 1000 and "discovered" in s["words"]
    assert s["series"]["t_s"] and len(s["series"]["p99_ms"]) == len(s["series"]["t_s"])


def test_open_loop_sends_on_schedule_and_reports_the_offered_rate(server, capsys, tmp_path, lee_bundle):
    png = tmp_path / "run.png"
    s = run_json(capsys, server.address, "--rate", "150", "--duration", "1.5", "--warmup", "0.3",
                 "--bundle", str(lee_bundle), "--pool", "100", "--plot", str(png))
    assert s["mode"] == "open" and s["offered_rate"] == 150
    assert s["calls"]["sent"] == pytest.approx(225, abs=2)
    assert s["send_rate"] == pytest.approx(150, rel=0.02)
    assert s["achieved_rate"] == pytest.approx(150, rel=0.15)
    assert s["calls"]["failed"] == 0
    assert_sane_latency(s["latency_ms"])
    assert s["send_lag_ms"]["p50"] is not None
    assert s["words"].startswith("bundle")
    assert png.stat().st_size > 10_000


def test_processes_merge_their_histograms(server, capsys):
    s = run_json(capsys, server.address, "--concurrency", "2", "--processes", "2", "--duration", "1",
                 "--warmup", "0.3", "--pool", "60")
    assert s["processes"] == 2 and len(s["generator_cpu"]) == 2
    assert s["calls"]["ok"] == s["latency_ms"]["count"] > 10 and s["calls"]["failed"] == 0


def test_sweep_draws_a_capacity_curve(server, capsys, tmp_path):
    png = tmp_path / "capacity.png"
    out = run_json(capsys, server.address, "--sweep", "40,80", "--duration", "0.6", "--warmup", "0.2",
                   "--pool", "60", "--plot", str(png))
    steps = out["sweep"]["steps"]
    assert [s["offered_rate"] for s in steps] == [40, 80]
    assert all(s["calls"]["failed"] == 0 for s in steps)
    sat = out["sweep"]["saturation"]
    assert sat["sustainable_rate"] in (40, 80) and sat["peak_achieved_rate"] > 0
    assert png.stat().st_size > 10_000


def test_text_report_and_help(server, capsys):
    assert main([server.address, "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--pool", "40"]) == 0
    out = capsys.readouterr().out
    assert "achieved" in out and "p99" in out and "errors: none" in out
    help_text = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), "--help"],
                               capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0
    assert "--concurrency" in help_text.stdout and "--rate" in help_text.stdout


def test_help_shows_no_doubled_percent_sign():
    help_text = build_parser().format_help()
    assert "0.1% resolution" in help_text
    assert "%%" not in help_text
    # the command as users call it: `dualvec loadtest --help` hands its options to the same parser
    cli = subprocess.run([sys.executable, "-m", "dualvec", "loadtest", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0 and "--concurrency" in cli.stdout and "%%" not in cli.stdout


def test_unreachable_server_is_one_line_on_stderr_and_exit_1(capsys):
    with grpc.insecure_channel("127.0.0.1:1"):
        pass
    code = main(["127.0.0.1:1", "--duration", "1", "--connect-timeout", "0.3"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no server answered at 127.0.0.1:1" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ no coordinated omission

class SlowSearch(pb_grpc.DualVecServicer):
    """A server that answers Search in 20 ms, one call at a time: 50 calls/s at most."""

    SERVICE_TIME = 0.02

    def Search(self, request, context):
        time.sleep(self.SERVICE_TIME)
        return pb.SearchResponse(neighbors=[pb.Neighbor(word="a", id=0, score=1.0)])

    def GetInfo(self, request, context):
        return pb.ModelInfo(model="slow", vocab_size=3, dim=4, spaces=[pb.IN], max_k=10, max_batch=4)


@pytest.fixture
def slow_server():
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_DualVecServicer_to_server(SlowSearch(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(0)


def test_open_loop_latency_includes_the_queueing_a_stalled_server_causes(slow_server, capsys, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("a\nb\nc\n")
    common = ["--words", str(words), "--mix", "in-in=1", "--pool", "10", "--warmup", "0"]
    closed = run_json(capsys, slow_server, "--concurrency", "1", "--duration", "0.5", *common)
    service_ms = closed["latency_ms"]["p50"]
    assert 15 < service_ms < 100, closed["latency_ms"]  # the service time, no queue
    # 100/s offered to a server that does 50/s: by the end of the second, calls wait ~0.5 s behind the others; a
    # generator that timed from the actual send, or waited for answers before sending, would report ~20 ms
    opened = run_json(capsys, slow_server, "--rate", "100", "--duration", "1", *common)
    lat = opened["latency_ms"]
    assert opened["calls"]["sent"] == 100 and opened["calls"]["failed"] == 0
    assert lat["p50"] > 5 * service_ms and lat["max"] > 600, lat
    assert opened["achieved_rate"] < 70  # completions are capped by the server's 50/s
