"""scripts/index_options.py runs end to end on a small bundle: a row per variant and pair; every variant finds the
exact answers (recall 1.000) when it visits everything and re-ranks every row; and each recall it prints for a
setting that visits little equals recall@10 computed here by brute force (numpy cosines over all rows, the query
word left out, ann-benchmarks' 1e-4 tie rule) on the very candidates the index returned."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dualvec.bench.index_options as index_options

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "tests" / "fixtures" / "bundle_v1" / "ivf"  # 40 words x 8 dimensions
VARIANTS = "hnsw-sq8,hnsw-flat-shuffled,ivf-flat,ivf-pq"
K = 10


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "index_options.py"), str(BUNDLE), *args],
                          capture_output=True, text=True, timeout=300)


def table_rows(stdout: str) -> list[list[str]]:
    """The summary table's rows (the rows printed as they came are repeated there), as lists of cells."""
    table = [line for line in stdout.splitlines() if line.startswith("| ") and " us " in line]
    return [[c.strip() for c in row.strip("|").split("|")] for row in table[len(table) // 2:]]


def test_every_variant_and_pair_gets_a_row_and_visiting_everything_is_exact():
    done = run("--variants", VARIANTS, "--targets", "in,out", "--settings", "4096", "--queries", "30")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        (v, f"{q}->{t}") for v in VARIANTS.split(",") for t in ("IN", "OUT") for q in ("IN", "OUT"))
    for row in rows:
        # efSearch / nprobe 4096 reaches all 40 rows; codes re-rank 4 x 11 candidates: every row, exactly
        assert row[2].startswith("1.000/1.000, "), row


def brute_force_recall(searcher, queries: np.ndarray, query_ids: np.ndarray, rows: np.ndarray,
                       setting: int) -> float:
    """recall@10 of the index's answers: the candidates it returns for 11, best first by exact cosine when the
    index holds codes, the query word dropped, the first 10 kept; a kept row is right when its exact cosine
    reaches the 10th best exact cosine among all other rows less 1e-4."""
    all_rows = np.asarray(rows, np.float64)
    hits = 0
    for q, qid in zip(np.asarray(queries, np.float64), query_ids):
        exact = all_rows @ q
        others = np.delete(exact, qid)
        threshold = np.sort(others)[::-1][K - 1] - 1e-4
        cand = np.asarray(searcher.search(np.asarray(q, np.float32), setting, K + 1))
        cand = cand[cand >= 0]
        if not searcher.exact_scores:
            cand = cand[np.argsort(-exact[cand], kind="stable")]
        top = cand[cand != qid][:K]
        hits += int(np.sum(exact[top] >= threshold))
    return hits / (K * len(query_ids))


def test_printed_recall_of_a_partial_search_equals_a_brute_force_count(monkeypatch, capsys):
    measured = []
    inner = index_options.measure

    def recording(searcher, queries, query_ids, rows, thresholds, setting):
        result = inner(searcher, queries, query_ids, rows, thresholds, setting)
        measured.append((searcher, np.array(queries), np.array(query_ids), np.array(rows), setting, result[0]))
        return result

    monkeypatch.setattr(index_options, "measure", recording)
    assert index_options.main([str(BUNDLE), "--variants", VARIANTS, "--targets", "in,out", "--settings", "1",
                               "--queries", "30"]) == 0
    printed = table_rows(capsys.readouterr().out)
    assert len(measured) == 4 * 4 * 2  # variants x pairs x (uniform, by frequency)
    recalls = []
    for searcher, queries, query_ids, rows, setting, reported in measured:
        recalls.append(brute_force_recall(searcher, queries, query_ids, rows, setting))
        assert reported == pytest.approx(recalls[-1], abs=1e-12)
    assert min(recalls) < 1.0, "a partial search that misses nothing checks nothing"
    shown = [cell.split(",")[0] for row in printed for cell in row[2:3]]
    assert shown == [f"{a:.3f}/{b:.3f}" for a, b in zip(recalls[::2], recalls[1::2])]


def test_an_unknown_variant_is_named():
    done = run("--variants", "hnsw-flat,banana")
    assert done.returncode == 2 and "banana" in done.stderr
