"""The committed version-1 bundles (tests/fixtures/bundle_v1, written by tests/fixtures/make_bundle_v1.py) still
read with today's reader and hold what they were built from: a format change cannot slip through unnoticed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualvec.kernel.bundle import FORMAT_NAME, read_bundle, read_manifest
from dualvec.cli.info import bundle_summary
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name

FIXTURES = Path(__file__).parent / "fixtures" / "bundle_v1"
KINDS = {"flat": None, "ivf": "IVF16,Flat", "hnsw": "HNSW32,Flat"}


@pytest.fixture(scope="module")
def source() -> dict:
    return json.loads((FIXTURES / "source.json").read_text(encoding="utf-8"))


def unit_rows(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_committed_fixture_stays_small():
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 100_000, f"tests/fixtures/bundle_v1 is {total} bytes; keep it under 100 KB"


@pytest.mark.parametrize("kind", list(KINDS))
def test_version1_bundle_manifest_is_read_and_describes_the_bundle(kind, source):
    manifest = read_manifest(FIXTURES / kind)
    assert manifest.format == FORMAT_NAME
    assert manifest.format_version == 1
    assert manifest.vocab_size == len(source["words"]) == 40
    assert manifest.dim == 8
    assert manifest.spaces == ["in", "out"]
    assert manifest.has_out is True
    for space in ("in", "out"):
        spec = manifest.indexes[space].spec
        assert spec.kind == kind
        if KINDS[kind]:
            assert spec.factory == KINDS[kind]
            assert manifest.indexes[space].file == f"{space}.index.faiss"
    assert set(manifest.pairs) == {pair_name(q, t) for q, t in ALL_PAIRS}
    for entry in manifest.pairs.values():
        assert 0.95 <= entry.recall_uniform <= 1.0 and 0.95 <= entry.recall_frequency <= 1.0
    # every file of the bundle is listed with its size and checksum, and nothing else is there
    on_disk = {p.name for p in (FIXTURES / kind).iterdir()} - {"manifest.json"}
    assert set(manifest.files) == on_disk


@pytest.mark.parametrize("kind", list(KINDS))
def test_version1_bundle_holds_the_source_words_counts_and_vectors(kind, source):
    bundle = read_bundle(FIXTURES / kind, checksums=True)
    assert bundle.vocab.words == source["words"]
    assert bundle.vocab.counts.dtype == np.int64
    assert bundle.vocab.counts.tolist() == source["counts"]
    assert bundle.vocab.get("the") == source["words"].index("the")
    for space, key in ((Space.IN, "in"), (Space.OUT, "out")):
        vec = bundle.vectors[space]
        assert vec.shape == (40, 8) and vec.dtype == np.float32
        np.testing.assert_allclose(vec, unit_rows(source[key]), atol=1e-6)
        np.testing.assert_allclose(bundle.norms[space], np.linalg.norm(np.asarray(source[key], np.float64), axis=1),
                                   rtol=1e-6)
        assert bundle.spaces[space].exact_only == (kind == "flat")


@pytest.mark.parametrize("kind", list(KINDS))
def test_version1_bundle_search_reproduces_the_recorded_recall(kind, source):
    """Searched with each pair's recorded parameters, every word of the 40 as a query: the exact bundle returns the
    brute-force top-10 (compared by score, so ties may swap ids), and each ANN bundle reaches the recall@10 its
    manifest records (its held-out uniform sample was the whole vocabulary), counted as ann-benchmarks does."""
    bundle = read_bundle(FIXTURES / kind)
    vectors = {Space.IN: unit_rows(source["in"]), Space.OUT: unit_rows(source["out"])}
    for q, t in ALL_PAIRS:
        pname = pair_name(q, t)
        exact = vectors[q] @ vectors[t].T
        np.fill_diagonal(exact, -np.inf)  # the query word is left out
        truth = -np.sort(-exact, axis=1)[:, :10]
        scores, ids = bundle.spaces[t].search(vectors[q].astype(np.float32), 11, bundle.tuning(q, t).params, pname)
        found = np.array([[i for i in row if i != r][:10] for r, row in enumerate(ids)])
        got = np.take_along_axis(exact, found, axis=1)
        recall = float((got >= truth[:, 9:10] - 1e-4).mean())
        if kind == "flat":
            np.testing.assert_allclose(got, truth, atol=1e-5, err_msg=pname)
            assert bundle.manifest.pairs[pname].exact is True
        assert recall == pytest.approx(bundle.manifest.pairs[pname].recall_uniform, abs=1e-4), pname
        assert recall >= 0.95, pname


def test_version1_bundle_summary_for_info(source):
    summary = bundle_summary(read_bundle(FIXTURES / "hnsw"))
    assert summary["vocab_size"] == 40 and summary["dim"] == 8 and summary["spaces"] == ["in", "out"]
    assert summary["most_frequent"] == source["words"][:8]
    assert set(summary["pairs"]) == {"in-in", "in-out", "out-in", "out-out"}
    assert all("ef_search" in p["params"] for p in summary["pairs"].values())
