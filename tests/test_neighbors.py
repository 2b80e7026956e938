"""`dualvec neighbors` and dualvec.kernel.neighbors: the table against numpy brute force (exact bundle) and against
the pair's recorded recall (HNSW bundle), resuming, refusing to overwrite, and TSV against Parquet."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dualvec.cli import neighbors as cli_neighbors
from dualvec.cli.main import main
from dualvec.kernel import neighbors as kn
from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.spaces import parse_pair
from dualvec.kernel.truth import QuerySample, exact_truth, recall

FIXTURES = Path(__file__).parent / "fixtures" / "bundle_v1"
PAIRS = ("in-in", "in-out", "out-in", "out-out")


def table_rows(path: Path) -> list[dict]:
    if path.suffix == ".tsv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [{"pair": r["pair"], "word": r["word"], "rank": int(r["rank"]), "neighbor": r["neighbor"],
                 "cosine": float(np.float32(r["cosine"]))} for r in rows]
    return pq.read_table(path).to_pylist()


def by_query(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["pair"], r["word"]), []).append(r)
    return out


def run_table(bundle, out: Path, pairs=PAIRS, k=5, batch=8, **kw) -> kn.RunReport:
    qids, _ = kn.query_ids(bundle, None)
    return kn.NeighborTable(bundle, kn.NeighborsJob(tuple(pairs), k=k, batch=batch), qids, out, progress=False,
                            **kw).run()


def test_exact_bundle_equals_numpy_brute_force(tmp_path):
    bundle = read_bundle(FIXTURES / "flat")
    k = 5
    out = tmp_path / "nb.parquet"
    report = run_table(bundle, out, k=k)
    n = bundle.vocab_size
    assert report.rows == n * len(PAIRS) * k
    words, index = bundle.vocab.words, bundle.vocab.index
    groups = by_query(table_rows(out))
    for pair in PAIRS:
        q, t = parse_pair(pair)
        cos = np.asarray(bundle.vectors[q], np.float64) @ np.asarray(bundle.vectors[t], np.float64).T
        np.fill_diagonal(cos, -np.inf)  # the query word is left out
        for i, word in enumerate(words):
            rows = groups[(pair, word)]
            assert [r["rank"] for r in rows] == list(range(1, k + 1))
            got = [index[r["neighbor"]] for r in rows]
            assert i not in got and len(set(got)) == k
            want = np.sort(cos[i])[::-1][:k]
            # ties judged by score: the k best cosines, each row's cosine its own
            np.testing.assert_allclose([r["cosine"] for r in rows], want, atol=1e-5)
            np.testing.assert_allclose([cos[i, j] for j in got], want, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_bundle_recall_reaches_the_recorded_recall(tmp_path, kind):
    bundle = read_bundle(FIXTURES / kind)
    k = 10
    out = tmp_path / "nb.parquet"
    run_table(bundle, out, k=k, batch=16)
    groups = by_query(table_rows(out))
    index = bundle.vocab.index
    ids = np.arange(bundle.vocab_size, dtype=np.int64)
    for pair in PAIRS:
        q, t = parse_pair(pair)
        sample = QuerySample(ids, np.asarray(bundle.vectors[q][ids], np.float32))
        truth = exact_truth(bundle.vectors[t], sample, k)
        found = np.full((len(ids), k), -1, np.int64)
        for i, word in enumerate(bundle.vocab.words):
            got = [index[r["neighbor"]] for r in groups[(pair, word)]]
            found[i, :len(got)] = got
        recorded = bundle.pair_tuning(pair).recall_uniform
        assert recall(bundle.vectors[t], sample, truth, found) >= recorded - 0.02, pair


def test_recall_script_counts_an_exact_table_as_exact(tmp_path, capsys):
    import importlib.util

    bundle = read_bundle(FIXTURES / "ivf")
    qids, _ = kn.query_ids(bundle, None)
    exact = tmp_path / "exact.parquet"
    kn.NeighborTable(bundle, kn.NeighborsJob(PAIRS, k=10, exact=True), qids, exact, progress=False).run()
    tuned = tmp_path / "tuned.tsv"
    run_table(bundle, tuned, k=10)
    spec = importlib.util.spec_from_file_location("neighbors_recall", Path(__file__).parent.parent / "scripts" /
                                                  "neighbors_recall.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(FIXTURES / "ivf"), str(exact), str(exact)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 4 and all(line.split()[2:4] == ["1.0000", "1.0000"] for line in lines)
    assert script.main([str(FIXTURES / "ivf"), str(tuned), str(exact)]) == 0
    for line in capsys.readouterr().out.splitlines()[1:]:
        pair, _, uniform = line.split()[:3]
        assert float(uniform) >= bundle.pair_tuning(pair).recall_uniform - 0.02


def test_tuned_search_matches_the_engine(tmp_path):
    """A word's row of the table is what Search answers for that word."""
    from dualvec.kernel.search import SearchEngine, SearchQuery

    bundle = read_bundle(FIXTURES / "hnsw")
    engine = SearchEngine(bundle)
    out = tmp_path / "nb.parquet"
    run_table(bundle, out, pairs=("in-out", "out-in"), k=7)
    groups = by_query(table_rows(out))
    for pair in ("in-out", "out-in"):
        q, t = parse_pair(pair)
        for word in bundle.vocab.words:
            answer = engine.search(SearchQuery(positive=(word,), query_space=q, target_space=t, k=7))
            assert [r["neighbor"] for r in groups[(pair, word)]] == [a.word for a in answer]
            np.testing.assert_allclose([r["cosine"] for r in groups[(pair, word)]], [a.score for a in answer],
                                       atol=1e-6)


class Stop(Exception):
    pass


def stop_after(blocks: int):
    def hook(done: int) -> None:
        if done >= blocks:
            raise Stop
    return hook


@pytest.mark.parametrize("suffix", [".parquet", ".tsv"])
def test_resumed_run_writes_the_same_file(tmp_path, suffix):
    bundle = read_bundle(FIXTURES / "hnsw")
    whole = tmp_path / f"whole{suffix}"
    run_table(bundle, whole)
    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(Stop):
        run_table(bundle, out, after_block=stop_after(3))
    spool, sidecar = kn.partial_paths(out)
    assert not out.exists() and spool.exists() and sidecar.exists()
    with open(spool, "ab") as fh:  # a block written but never recorded (stopped in between)
        fh.write(b"\x00half a block")
    report = run_table(bundle, out)
    assert report.resumed_blocks == 3
    blocks_per_pair = -(-bundle.vocab_size // 8)
    assert report.blocks == blocks_per_pair * len(PAIRS)
    assert sum(report.queries_by_pair.values()) == bundle.vocab_size * len(PAIRS) - 3 * 8
    assert out.read_bytes() == whole.read_bytes()
    assert not spool.exists() and not sidecar.exists()


CRASHING_RUN = """
import os, sys
from dualvec.kernel import neighbors as kn
from dualvec.kernel.bundle import read_bundle
bundle = read_bundle(sys.argv[1])
qids, _ = kn.query_ids(bundle, None)
def crash(done):
    if done >= 3:
        os._exit(9)  # no cleanup at all, as a kill -9 or a power cut
kn.NeighborTable(bundle, kn.NeighborsJob(("in-in", "in-out", "out-in", "out-out"), k=5, batch=8), qids, sys.argv[2],
                 progress=False, checkpoint_seconds=float(sys.argv[3]), after_block=crash).run()
"""


@pytest.mark.parametrize("checkpoint_seconds, kept", [(0.0, 3), (3600.0, 0)])
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, checkpoint_seconds, kept):
    import subprocess
    import sys

    bundle = read_bundle(FIXTURES / "hnsw")
    whole = tmp_path / "whole.parquet"
    run_table(bundle, whole)
    out = tmp_path / "killed.parquet"
    proc = subprocess.run([sys.executable, "-c", CRASHING_RUN, str(FIXTURES / "hnsw"), str(out),
                           str(checkpoint_seconds)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert not out.exists()
    report = run_table(bundle, out)
    assert report.resumed_blocks == kept
    assert out.read_bytes() == whole.read_bytes()


def test_an_unfinished_run_of_another_job_is_kept_without_force(tmp_path):
    bundle = read_bundle(FIXTURES / "hnsw")
    out = tmp_path / "nb.parquet"
    with pytest.raises(Stop):
        run_table(bundle, out, k=5, after_block=stop_after(2))
    with pytest.raises(kn.NeighborsError, match="another job"):
        run_table(bundle, out, k=6)
    report = run_table(bundle, out, k=6, force=True)
    assert report.resumed_blocks == 0
    assert {r["rank"] for r in table_rows(out)} == set(range(1, 7))


def test_the_output_directory_is_made(tmp_path):
    bundle = read_bundle(FIXTURES / "flat")
    out = tmp_path / "a" / "b" / "nb.tsv"
    assert run_table(bundle, out, pairs=("in-in",), k=2).rows == 2 * bundle.vocab_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["nb.tsv"]


def test_tsv_and_parquet_agree(tmp_path):
    bundle = read_bundle(FIXTURES / "ivf")
    run_table(bundle, tmp_path / "nb.parquet", k=10)
    run_table(bundle, tmp_path / "nb.tsv", k=10)
    assert table_rows(tmp_path / "nb.tsv") == table_rows(tmp_path / "nb.parquet")
    assert (tmp_path / "nb.tsv").read_text(encoding="utf-8").splitlines()[0] == "pair\tword\trank\tneighbor\tcosine"


# ---------------------------------------------------------------------------------------------------- the command

def test_command_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "nb.tsv"
    argv = ["neighbors", str(FIXTURES / "flat"), "--pair", "in-out", "-k", "3", "--all", "-o", str(out), "-q"]
    assert main(argv) == 0
    first = out.read_bytes()
    capsys.readouterr()
    out.write_text("kept\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "kept\n"
    assert main(argv + ["--force"]) == 0
    assert out.read_bytes() == first


def test_command_words_pairs_and_measure(tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("the\nof\n\nnew\n", encoding="utf-8")
    out = tmp_path / "nb.parquet"
    assert main(["neighbors", str(FIXTURES / "hnsw"), "--pair", "in-out", "--pair", "IN->IN", "--pair", "in-out",
                 "-k", "4", "--words", str(words), "-o", str(out), "-q", "--measure", "10"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "queries/s" in text and "table/search" in text
    rows = table_rows(out)
    assert len(rows) == 3 * 2 * 4
    assert [r["word"] for r in rows[::4]] == ["the", "of", "new"] * 2
    assert {r["pair"] for r in rows} == {"in-out", "in-in"}


@pytest.mark.parametrize("argv_tail, flag", [
    (["--pair", "in-up", "--all"], "--pair"),
    (["--pair", "in-out", "--all", "-k", "0"], "-k"),
    (["--pair", "in-out", "--all", "--batch", "0"], "--batch"),
    (["--pair", "in-out", "--words", "WORDS"], "--words"),
])
def test_command_bad_input_is_one_line_naming_the_flag(tmp_path, capsys, argv_tail, flag):
    words = tmp_path / "words.txt"
    words.write_text("the\nnot-a-word\n", encoding="utf-8")
    argv_tail = [str(words) if a == "WORDS" else a for a in argv_tail]
    assert main(["neighbors", str(FIXTURES / "flat"), "-o", str(tmp_path / "nb.tsv"), "-q", *argv_tail]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err


def test_command_bad_extension_and_skip_unknown(tmp_path, capsys):
    assert main(["neighbors", str(FIXTURES / "flat"), "--pair", "in-in", "--all", "-o",
                 str(tmp_path / "nb.csv"), "-q"]) == 1
    assert "-o" in capsys.readouterr().err
    words = tmp_path / "words.txt"
    words.write_text("the\nnot-a-word\n", encoding="utf-8")
    out = tmp_path / "nb.tsv"
    assert main(["neighbors", str(FIXTURES / "flat"), "--pair", "in-in", "--words", str(words), "--skip-unknown",
                 "-k", "2", "-o", str(out), "-q"]) == 0
    assert "left out 1 words" in capsys.readouterr().err
    assert [r["word"] for r in table_rows(out)] == ["the", "the"]


def test_exact_refuses_above_the_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kn, "EXACT_MAX_WORDS", 30)
    assert main(["neighbors", str(FIXTURES / "flat"), "--pair", "in-in", "--all", "--exact", "-o",
                 str(tmp_path / "nb.tsv"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--exact" in err[0] and "40 queries x 40 words" in err[0]
    monkeypatch.setattr(kn, "EXACT_MAX_WORDS", 40)
    out = tmp_path / "nb.tsv"
    assert main(["neighbors", str(FIXTURES / "hnsw"), "--pair", "in-in", "--all", "--exact", "-k", "3", "-o",
                 str(out), "-q"]) == 0
    assert len(table_rows(out)) == 40 * 3


def test_command_constants_agree_with_the_kernel():
    assert (cli_neighbors.DEFAULT_BATCH, cli_neighbors.MAX_K, cli_neighbors.EXACT_MAX_WORDS) == (
        kn.DEFAULT_BATCH, kn.MAX_K, kn.EXACT_MAX_WORDS)
