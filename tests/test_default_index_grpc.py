"""The production default index over gRPC: `dualvec build MODEL` with every option at its default (`--index auto`,
target recall 0.95), on a model whose vocabulary is made to count as large (the exact limit lowered for the build,
so `auto` picks what it picks above 20,000 words: HNSW32,SQ8 on rows zero-padded from 42 to 48 dimensions, tuned
hub lists), served with the server's defaults. Every word of the vocabulary is asked on all four pairs; the answers
are compared with exact search in numpy on the gensim model's own matrices: each score is its word's exact cosine,
and recall@10 over the whole vocabulary is the recall the bundle records (uniformly and weighted by count)."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import faiss
import grpc
import numpy as np
import pytest
from gensim.models import Word2Vec

from dualvec.indexer.training import TrainConfig, train
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name
from dualvec.server.app import ServerConfig, load_engines, start_server
from dualvec.v1 import dualvec_pb2 as pb
from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

from conftest import LEE_CORPUS

pytestmark = pytest.mark.slow  # trains a model and builds and tunes two graphs with the default sample sizes

DIM = 42  # not a multiple of 8: the SQ8 graph works on zero-padded rows
K = 10
TIE_EPS = 1e-4
PB_SPACE = {Space.IN: pb.IN, Space.OUT: pb.OUT}

# `dualvec build` run as the command runs, with the exact-search limit lowered below this vocabulary's size
BUILD = """
import sys
import dualvec.kernel.ann as ann
ann.AUTO_EXACT_MAX_ROWS = 1_000
from dualvec.cli.main import main
sys.exit(main(["build", sys.argv[1], "-o", sys.argv[2], "-q"]))
"""


@functools.lru_cache(maxsize=None)
def default_hnsw_bundle(root: Path) -> tuple[Path, Path]:
    """(model, bundle) under root: a 42-dimension model of the Lee corpus and its bundle built with the defaults.
    Built once per test run (test_server_batching uses it too)."""
    model = root / "lee42.model"
    train(LEE_CORPUS, model, TrainConfig(dim=DIM, min_count=2, epochs=8, workers=2, seed=3, quiet=True))
    bundle = root / "lee42-default.bundle"
    done = subprocess.run([sys.executable, "-c", BUILD, str(model), str(bundle)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return model, bundle


@pytest.fixture(scope="module")
def built(workdir) -> tuple[Path, Path]:
    return default_hnsw_bundle(workdir)


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built[1] / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def spaces(built) -> dict:
    """The gensim model's own matrices, normalized in float64, and its counts."""
    model = Word2Vec.load(str(built[0]))
    unit = {s: np.asarray(m, np.float64) / np.linalg.norm(m, axis=1, keepdims=True)
            for s, m in ((Space.IN, model.wv.vectors), (Space.OUT, model.syn1neg))}
    counts = np.array([model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key], dtype=np.float64)
    return {"words": list(model.wv.index_to_key), "counts": counts, **unit}


@pytest.fixture(scope="module")
def server(built):
    cfg = ServerConfig(bundles=(str(built[1]),), port=0)  # every other option at its default
    running = start_server(load_engines(cfg), cfg)
    yield running
    running.stop(1.0)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield pb_grpc.DualVecStub(ch)


def test_auto_above_the_exact_limit_builds_a_padded_sq8_graph_with_hub_lists(built, manifest):
    assert manifest["vocab_size"] > 1_000 and manifest["dim"] == DIM
    for space in ("in", "out"):
        spec = manifest["indexes"][space]["spec"]
        assert (spec["kind"], spec["factory"], spec["index_dim"]) == ("hnsw", "HNSW32,SQ8", 48)
        index = faiss.read_index(str(built[1] / f"{space}.index.faiss"))
        assert isinstance(faiss.downcast_index(index), faiss.IndexHNSWSQ) and index.d == 48
        assert index.ntotal == manifest["vocab_size"]
    assert manifest["tuning"]["target_recall"] == 0.95
    for q, t in ALL_PAIRS:
        entry = manifest["pairs"][pair_name(q, t)]
        assert entry["hubs_found"] > 0 and f"hubs.{pair_name(q, t)}.npy" in manifest["files"]
        hubs = np.load(built[1] / f"hubs.{pair_name(q, t)}.npy")
        assert len(hubs) == entry["hubs_found"] and len(np.unique(hubs)) == len(hubs)
        assert entry["params"].get("ef_search", 0) >= 16 and entry["params"].get("rerank", 0) >= 1


def served_all_words(stub, words: list[str], q: Space, t: Space) -> list[list[tuple[int, float]]]:
    """(id, score) answers of every word, asked in BatchSearch calls of up to 1024 requests."""
    out = []
    for start in range(0, len(words), 1024):
        reqs = [pb.SearchRequest(positive=[w], query_space=PB_SPACE[q], target_space=PB_SPACE[t], k=K)
                for w in words[start:start + 1024]]
        resp = stub.BatchSearch(pb.BatchSearchRequest(requests=reqs), timeout=120)
        out += [[(n.id, n.score) for n in r.neighbors] for r in resp.responses]
    return out


@pytest.mark.parametrize("q, t", ALL_PAIRS, ids=[pair_name(q, t) for q, t in ALL_PAIRS])
def test_every_word_over_grpc_scores_exactly_at_the_recorded_recall(stub, spaces, manifest, q, t):
    words = spaces["words"]
    n = len(words)
    answers = served_all_words(stub, words, q, t)
    per_query = np.empty(n)
    for start in range(0, n, 1024):
        exact = spaces[q][start:start + 1024] @ spaces[t].T
        rows = np.arange(start, min(n, start + 1024))
        exact[rows - start, rows] = -np.inf  # the query word is left out
        kth = -np.partition(-exact, K - 1, axis=1)[:, K - 1]
        for r, i in enumerate(rows):
            got = answers[i]
            ids = [g for g, _ in got]
            scores = np.array([s for _, s in got])
            assert len(got) == K and len(set(ids)) == K and i not in ids, (words[i], got)
            np.testing.assert_allclose(scores, exact[r, ids], atol=1e-5, err_msg=f"{words[i]}: not exact cosines")
            assert np.all(np.diff(scores) <= 1e-6), f"{words[i]}: not best first"
            per_query[i] = np.sum(exact[r, ids] >= kth[r] - TIE_EPS) / K
    entry = manifest["pairs"][pair_name(q, t)]
    uniform = float(per_query.mean())
    by_count = float(per_query @ (spaces["counts"] / spaces["counts"].sum()))
    assert uniform == pytest.approx(entry["recall_uniform"], abs=0.03), (uniform, entry["recall_uniform"])
    assert by_count == pytest.approx(entry["recall_frequency"], abs=0.03), (by_count, entry["recall_frequency"])
    assert min(uniform, by_count) >= 0.95 - 0.02, "below the target the bundle was tuned to"


@pytest.mark.parametrize("q, t", ALL_PAIRS, ids=[pair_name(q, t) for q, t in ALL_PAIRS])
def test_single_search_calls_answer_as_the_batch_calls(stub, spaces, q, t):
    words = spaces["words"][::41]  # about 100 words, most to least frequent
    batch = served_all_words(stub, words, q, t)
    for w, want in zip(words, batch):
        got = stub.Search(pb.SearchRequest(positive=[w], query_space=PB_SPACE[q], target_space=PB_SPACE[t], k=K),
                          timeout=30)
        assert [n.id for n in got.neighbors] == [i for i, _ in want], w
        np.testing.assert_allclose([n.score for n in got.neighbors], [s for _, s in want], atol=1e-6)
