"""The hub merge (dualvec.kernel.hubs): the one-query path (a plain merge of two sorted lists) gives what the batched,
vectorized path gives, and both give what a numpy brute force gives (the union of the index's answer and the exact
scores of the scanned hubs, each id once, the best k by score), duplicates, padding, limits and ties included."""
from __future__ import annotations

import numpy as np
import pytest

from dualvec.kernel.ann import SpaceIndex


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(40))
def test_one_query_merge_equals_batched_merge(seed):
    rng = np.random.default_rng(seed)
    n, d, k = 300, 8, int(rng.integers(1, 15))
    vectors = unit_rows(rng, n, d)
    if seed % 4 == 0:  # exact ties: some rows repeated
        vectors[rng.integers(0, n, 30)] = vectors[0]
    space = SpaceIndex(vectors, None)
    hubs = rng.permutation(n)[: int(rng.integers(1, 60))]
    space.hubs.set("in-in", hubs)
    query = unit_rows(rng, 1, d)
    # an index answer: the exact scores of some rows (often hubs too, so duplicates occur), best first, -1 padded
    found = rng.choice(np.concatenate([hubs, rng.integers(0, n, 20)]), size=k, replace=False) \
        if len(hubs) + 20 >= k else rng.integers(0, n, k)
    scores = vectors[found] @ query[0]
    order = np.argsort(-scores, kind="stable")
    ids, scores = found[order].astype(np.int64), scores[order].astype(np.float32)
    pad = int(rng.integers(0, k))
    if pad:
        ids[-pad:], scores[-pad:] = -1, -np.inf
    one = space.hubs.merge(query, k, "in-in", len(hubs), scores[None], ids[None], None)
    two = space.hubs.merge(np.repeat(query, 2, axis=0), k, "in-in", len(hubs), np.repeat(scores[None], 2, axis=0),
                            np.repeat(ids[None], 2, axis=0), None)
    np.testing.assert_array_equal(one[1][0], two[1][0])
    np.testing.assert_array_equal(one[0][0], two[0][0])
    kept = one[1][0][one[1][0] >= 0]
    assert len(set(kept.tolist())) == len(kept), "an id is returned twice"
    assert np.all(np.diff(one[0][0][one[0][0] > -np.inf]) <= 0), "not best first"


# ------------------------------------------------------------------------------------------ against a brute force

TOL = 1e-5


def brute_force_merge(index_scores: np.ndarray, index_ids: np.ndarray, hub_ids: np.ndarray, rows: np.ndarray,
                      query: np.ndarray, limit: int | None = None) -> dict[int, float]:
    """Every id the merge may return, with its score: the union of the index's answer (padding dropped) and the
    exact cosines of all the hubs (those below limit); an id found in both keeps its best score."""
    best: dict[int, float] = {}
    for s, i in zip(index_scores.tolist(), index_ids.tolist()):
        if i >= 0 and np.isfinite(s):
            best[i] = max(best.get(i, -np.inf), s)
    exact = np.asarray(rows, np.float64) @ np.asarray(query, np.float64)
    for h in hub_ids.tolist():
        if not limit or h < limit:
            best[h] = max(best.get(h, -np.inf), float(exact[h]))
    return best


def assert_best_k(got_scores: np.ndarray, got_ids: np.ndarray, best: dict[int, float], k: int) -> None:
    """(k,) got is the best k of ``best`` by score: distinct ids, each with its own score, best first, the same
    score at every rank as the brute force, the same id wherever that score is not tied, then -1 / -inf."""
    ranked = sorted(best.items(), key=lambda item: -item[1])
    want = np.array([s for _, s in ranked[:k]])
    n = len(want)
    assert got_ids.shape == (k,) and got_scores.shape == (k,)
    assert (got_ids[n:] == -1).all() and np.isneginf(got_scores[n:]).all(), "padding"
    ids = got_ids[:n].tolist()
    assert min(ids, default=0) >= 0 and len(set(ids)) == n, f"{n} distinct ids expected: {ids}"
    np.testing.assert_allclose(got_scores[:n], [best[i] for i in ids], atol=TOL, err_msg="a score is not its id's")
    np.testing.assert_allclose(got_scores[:n], want, atol=TOL, err_msg="not the best k scores")
    scores = [s for _, s in ranked]
    for j in range(n):
        near = [scores[j - 1] if j else np.inf, scores[j + 1] if j + 1 < len(scores) else -np.inf]
        if all(abs(scores[j] - x) > 2 * TOL for x in near):
            assert ids[j] == ranked[j][0], f"rank {j}: id {ids[j]}, expected {ranked[j][0]}"


def index_answer(rng: np.random.Generator, rows: np.ndarray, query: np.ndarray, hubs: np.ndarray, k: int,
                 noisy: bool) -> tuple[np.ndarray, np.ndarray]:
    """A plausible (k,) answer of an index, best first: rows drawn among the hubs and others (so that some are
    duplicates of hubs), sometimes one row twice, scored exactly (noisy: up to 0.05 off, as approximate codes
    would be), then a random number of -1 / -inf paddings at the end."""
    n = rows.shape[0]
    found = rng.choice(np.concatenate([hubs, rng.integers(0, n, 2 * k)]), size=k, replace=True)
    scores = (rows[found] @ query).astype(np.float64)
    if noisy:
        scores += rng.uniform(-0.05, 0.05, size=k)
    order = np.argsort(-scores, kind="stable")
    ids, scores = found[order].astype(np.int64), scores[order].astype(np.float32)
    fill = int(rng.integers(0, k + 1))  # up to all of it: an index that found nothing
    if fill:
        ids[k - fill:], scores[k - fill:] = -1, -np.inf
    return scores, ids


def merge_case(seed: int):
    rng = np.random.default_rng(seed)
    n, d = 400, 8
    rows = unit_rows(rng, n, d)
    if seed % 3 == 0:  # exact ties: some rows repeated
        rows[rng.integers(0, n, 40)] = rows[1]
    k = int(rng.integers(1, 25))
    hubs = rng.permutation(n)[: int(rng.integers(1, 80))].astype(np.int64)
    space = SpaceIndex(rows, None)
    space.hubs.set("out-in", hubs)
    h = int(rng.integers(1, len(hubs) + 1))  # a prefix of the list is scanned
    limit = int(rng.integers(50, n)) if seed % 4 == 1 else None
    return rng, rows, space, hubs[:h], h, k, limit


@pytest.mark.parametrize("noisy", [False, True], ids=["exact-index-scores", "approximate-index-scores"])
@pytest.mark.parametrize("seed", range(30))
def test_one_query_merge_equals_a_brute_force_merge(seed, noisy):
    rng, rows, space, scanned, h, k, limit = merge_case(seed)
    query = unit_rows(rng, 1, rows.shape[1])
    scores, ids = index_answer(rng, rows, query[0], scanned, k, noisy)
    if limit:  # an index searched with a limit returns rows below it only
        scores, ids = np.where(ids < limit, scores, -np.inf).astype(np.float32), np.where(ids < limit, ids, -1)
        order = np.argsort(-scores, kind="stable")
        scores, ids = scores[order], ids[order]
    out_s, out_i = space.hubs.merge(query, k, "out-in", h, scores[None], ids[None], limit)
    assert out_s.shape == (1, k) and out_i.shape == (1, k)
    assert_best_k(out_s[0], out_i[0], brute_force_merge(scores, ids, scanned, rows, query[0], limit), k)


@pytest.mark.parametrize("noisy", [False, True], ids=["exact-index-scores", "approximate-index-scores"])
@pytest.mark.parametrize("seed", range(30))
def test_batched_merge_equals_a_brute_force_merge_row_by_row(seed, noisy):
    rng, rows, space, scanned, h, k, limit = merge_case(seed)
    m = int(rng.integers(2, 9))
    queries = unit_rows(rng, m, rows.shape[1])
    answers = [index_answer(rng, rows, q, scanned, k, noisy) for q in queries]
    if limit:
        answers = [(np.where(i < limit, s, -np.inf).astype(np.float32), np.where(i < limit, i, -1)) for s, i in answers]
        answers = [(s[np.argsort(-s, kind="stable")], i[np.argsort(-s, kind="stable")]) for s, i in answers]
    scores = np.stack([s for s, _ in answers])
    ids = np.stack([i for _, i in answers])
    out_s, out_i = space.hubs.merge(queries, k, "out-in", h, scores, ids, limit)
    assert out_s.shape == (m, k) and out_i.shape == (m, k)
    for row in range(m):
        best = brute_force_merge(scores[row], ids[row], scanned, rows, queries[row], limit)
        assert_best_k(out_s[row], out_i[row], best, k)


@pytest.mark.parametrize("kind, params", [("IVF16,Flat", {"nprobe": 1}), ("HNSW32,SQ8", {"ef_search": 16})])
def test_search_with_hubs_is_the_index_answer_merged_with_the_exact_hub_scores(kind, params):
    """Through SpaceIndex.search, as the server calls it, for one query and for batches. (A search limited to the
    first rows is exact below 4M row-dimensions, hubs or not: limits are covered by the merge tests above.)"""
    from dualvec.kernel.ann import IndexSpec, SearchParams, build_index

    rng = np.random.default_rng(9)
    rows = unit_rows(rng, 2_000, 16)
    spec = IndexSpec("ivf" if kind.startswith("IVF") else "hnsw", kind, 40 if kind.startswith("HNSW") else 0)
    space = SpaceIndex(rows, build_index(spec, rows))
    hubs = rng.permutation(2_000)[:300].astype(np.int64)
    space.hubs.set("in-out", hubs)
    queries = unit_rows(rng, 40, 16)
    k = 10
    for h in (1, 50, 300):
        base_s, base_i = space.search(queries, k, SearchParams(**params, rerank=4), "in-out")
        for batch in (queries[:1], queries):
            out_s, out_i = space.search(batch, k, SearchParams(**params, rerank=4, hubs=h), "in-out")
            for row in range(len(batch)):
                best = brute_force_merge(base_s[row], base_i[row], hubs[:h], rows, batch[row])
                assert_best_k(out_s[row], out_i[row], best, k)
