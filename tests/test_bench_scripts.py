"""The benchmark's single-query loop and its verdicts (scripts/bench_measure.py, scripts/bench_report.py): pairs are
asked in turn, word by word, with the bare reference call in every round; the latency targets' rows give the
floor this machine sets for a served call, from the same run."""
from __future__ import annotations


import numpy as np

import dualvec.bench.measure as bench_measure
import dualvec.bench.report as bench_report


def test_pairs_are_interleaved_word_by_word_with_the_reference_call_each_round():
    calls = []

    def query(pair, wid, k):
        calls.append((pair, wid))
        if pair == "out-in" and wid == 7:
            raise RuntimeError("no such word")
        return [wid + j for j in range(k)]

    runs, reference = bench_measure.run_interleaved(query, ["in-out", "out-in"], np.array([5, 7, 9]), 2,
                                                    between=lambda: calls.append(("bare", None)))
    assert calls == [("in-out", 5), ("out-in", 5), ("bare", None), ("in-out", 7), ("out-in", 7), ("bare", None),
                     ("in-out", 9), ("out-in", 9), ("bare", None)]
    assert reference.shape == (3,) and (reference >= 0).all()
    assert runs["in-out"].found.tolist() == [[5, 6], [7, 8], [9, 10]] and runs["in-out"].errors == 0
    assert runs["in-out"].seconds.shape == (3,)
    failed = runs["out-in"]
    assert failed.errors == 1 and failed.first_error == "RuntimeError: no such word"
    assert failed.found.tolist() == [[5, 6], [-1, -1], [9, 10]] and failed.seconds.shape == (2,)
    # the one-pair loop is the same loop
    single = bench_measure.run_queries(query, "in-out", np.array([5]), 2)
    assert single.found.tolist() == [[5, 6]] and single.errors == 0


def _result(grpc_all_p50: float, bare_p50: float | None) -> dict:
    lat = {p: {"p50": v, "p99": 3 * v} for p, v in (("in-in", 600.0), ("in-out", 300.0), ("all", 450.0))}
    grpc = {"recall": {"in-in": {"uniform": 0.98, "frequency": 0.97}},
            "latency_us": {"all": {"p50": grpc_all_p50, "p99": 3000.0}}}
    if bare_p50 is not None:
        grpc["bare_rpc_us"] = {"p50": bare_p50, "p99": 800.0}
    search = {"command": "bench.py B --phases search", "inprocess": {"latency_us": lat}, "grpc": grpc}
    gensim = {"speedup_vs_grpc": 70000.0 / 1500.0, "latency_us": {"p50": 70000.0}, "dualvec_grpc_p50_us": 1500.0,
              "command": "bench.py B --peers gensim"}
    return {"search": search, "peers": {"gensim": gensim}}


def test_latency_rows_give_this_machines_floor_from_the_same_run():
    rows = {r["target"]: r for r in bench_report.judge_targets(_result(1263.0, 555.0))}
    p50 = rows["gRPC single-query p50 <= 1 ms"]
    assert p50["met"] is False
    assert p50["measured"] == ("1.263 ms (this machine's floor: a bare gRPC call 0.555 + the engine's search 0.450 "
                               "= 1.005 ms)")
    gensim = next(r for t, r in rows.items() if t.startswith(">= 100x faster than gensim"))
    assert gensim["met"] is False
    assert gensim["measured"] == ("46.7x (gensim 70.00 ms vs dualvec gRPC 1.500 ms; 100x needs 0.700 ms, against "
                                  "this machine's floor: a bare gRPC call 0.555 + the engine's search 0.600 = "
                                  "1.155 ms)")


def test_without_a_bare_call_the_rows_say_only_what_was_measured():
    rows = {r["target"]: r for r in bench_report.judge_targets(_result(900.0, None))}
    p50 = rows["gRPC single-query p50 <= 1 ms"]
    assert p50["met"] is True and p50["measured"] == "0.900 ms"
    gensim = next(r for t, r in rows.items() if t.startswith(">= 100x faster than gensim"))
    assert gensim["measured"].endswith("100x needs 0.700 ms)")


def test_a_served_calls_median_is_split_into_bare_call_engine_and_rest(tmp_path):
    r = _result(1263.0, 555.0)
    r["search"]["grpc"]["latency_us"]["in-in"] = {"p50": 1400.0, "p99": 3000.0}
    r["bundle"] = {"path": "/data/m1m.bundle"}
    parts = bench_report.latency_parts(r)
    assert parts["all"] == {"bare gRPC call": 555.0, "engine search": 450.0, "rest": 258.0, "served": 1263.0}
    assert parts["in-in"]["rest"] == 1400.0 - 555.0 - 600.0
    png = tmp_path / "latency.png"
    assert bench_report.plot_latency_parts(r, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no bare call (or no gRPC run): nothing to split, nothing drawn
    assert bench_report.latency_parts(_result(900.0, None)) is None
    assert not bench_report.plot_latency_parts(_result(900.0, None), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_numbers_from_a_busy_phase_are_flagged_pessimistic():
    r = _result(2078.0, 1211.0)
    r["machine"] = {"others_cpu_share": {bench_report.SEARCH_PHASE: 0.12, bench_report.GENSIM_PHASE: 0.01},
                    "steal_cpu_share": {bench_report.SEARCH_PHASE: 0.0, bench_report.GENSIM_PHASE: 0.02}}
    rows = {x["target"]: x for x in bench_report.judge_targets(r)}
    flag = (" (pessimistic: during search: recall and latency, other processes took 12% of the CPUs and the "
            "hypervisor 0%)")
    assert rows["gRPC single-query p50 <= 1 ms"]["measured"].endswith(flag)
    assert rows["gRPC single-query p99 <= 5 ms"]["measured"] == "3.000 ms" + flag
    assert next(x for t, x in rows.items() if t.startswith(">= 100x"))["measured"].endswith(flag)
    # a quiet phase, or one the hypervisor alone kept under the threshold, is not flagged
    r["machine"]["others_cpu_share"][bench_report.SEARCH_PHASE] = 0.02
    r["machine"]["steal_cpu_share"][bench_report.SEARCH_PHASE] = 0.02
    assert "pessimistic" not in " ".join(x["measured"] for x in bench_report.judge_targets(r))
    # steal counts too
    r["machine"]["steal_cpu_share"][bench_report.SEARCH_PHASE] = 0.09
    p50 = next(x for x in bench_report.judge_targets(r) if x["target"] == "gRPC single-query p50 <= 1 ms")
    assert p50["measured"].endswith("other processes took 2% of the CPUs and the hypervisor 9%)")


def test_the_hypervisors_share_is_kept_apart_from_other_processes(monkeypatch):
    from collections import namedtuple

    Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    ticks = iter([Times(100, 0, 20, 500, 0, 0, 0, 10, 0, 0), Times(101, 0, 20, 500.5, 0, 0, 0, 11.5, 0, 0)])
    clock = iter([0.0, 1.0])
    import psutil

    monkeypatch.setattr(psutil, "cpu_times", lambda: next(ticks))
    monkeypatch.setattr(bench_measure.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench_measure.os, "cpu_count", lambda: 2)
    load = bench_measure.OtherLoad()
    monkeypatch.setattr(load, "_ours", lambda: 0.0)  # the benchmark itself used nothing
    share = load.start().stop()
    assert share == 0.5  # 1 s of other processes' CPU over 2 CPU-seconds
    assert load.steal_share == 0.75  # 1.5 s stolen over 2 CPU-seconds


def test_server_time_rows_judge_each_pair_and_draw_and_the_hnswlib_ratio():
    r = _result(1000.0, 400.0)
    r["search"]["grpc"]["latency_us_by_draw"] = {
        "in-in": {"uniform": {"p50": 1500.0}, "frequency": {"p50": 500.0}},
        "out-in": {"uniform": {"p50": 700.0}, "frequency": {"p50": 650.0}}}
    draws = lambda u, f: {"uniform": {"p50": u}, "frequency": {"p50": f}}  # noqa: E731
    r["search"]["inprocess"]["latency_us_by_draw"] = {"in-in": draws(400.0, 20.0), "out-in": draws(500.0, 25.0)}
    r["peers"]["hnswlib"] = {"command": "bench.py B --peers hnswlib", "pairs": {
        "in-in": {"latency_us_by_draw": draws(1000.0, 900.0), "reached": True},
        "out-in": {"latency_us_by_draw": draws(400.0, 300.0), "reached": True}}}
    rows = {x["target"]: x for x in bench_report.judge_targets(r)}
    server = rows["each pair's server time (served p50 less a bare call's) <= 0.8 ms"]
    assert server["met"] is False  # IN->IN uniform: 1.5 - 0.4 = 1.1 ms
    assert server["measured"] == "worst 1.100 ms (uniform/by frequency: IN->IN 1.100/0.100, OUT->IN 0.300/0.250)"
    hn = rows["in-process, each pair faster than hnswlib at equal recall"]
    assert hn["met"] is False
    assert hn["measured"] == ("hnswlib's p50 / the engine's, uniform/by frequency: IN->IN 2.50/45.00x, "
                              "OUT->IN 0.80/12.00x")
    beyond = next(x for t, x in rows.items() if t.startswith("beyond the targets"))
    assert beyond["measured"] == "gensim 70.00 ms over each pair's slower draw: IN->IN 64x, OUT->IN 233x"
    assert beyond["met"] is False
    r["search"]["grpc"]["latency_us_by_draw"]["in-in"]["uniform"]["p50"] = 1000.0
    r["peers"]["hnswlib"]["pairs"]["out-in"]["latency_us_by_draw"]["uniform"]["p50"] = 600.0
    rows = {x["target"]: x for x in bench_report.judge_targets(r)}
    assert rows["each pair's server time (served p50 less a bare call's) <= 0.8 ms"]["met"] is True
    assert rows["in-process, each pair faster than hnswlib at equal recall"]["met"] is True
    r["peers"]["hnswlib"]["pairs"]["out-in"]["reached"] = False  # slower at its largest ef and short of the recall
    hn = {x["target"]: x for x in bench_report.judge_targets(r)}["in-process, each pair faster than hnswlib at equal recall"]
    assert hn["met"] is True and hn["measured"].endswith("(hnswlib short of the recall at its largest ef: OUT->IN)")
