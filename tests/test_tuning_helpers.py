"""The tuner's helpers, one at a time: step_up climbs to a strictly costlier setting of the same kind and stops at
the top; candidate_grid lays out one chain per hub count, rising in efSearch or nprobe up to its cap;
lower_bound is the mean less z standard errors (and does bound the mean of the distribution sampled); find_hubs
is the union of the exact top-depth rows of the sampled queries, most frequent first (checked against numpy)."""
from __future__ import annotations

from collections import Counter

import faiss
import numpy as np
import pytest
from scipy import stats

from dualvec.indexer.tuning import EF_GRID, HUB_GRID, RERANK_GRID, candidate_grid, step_up
from dualvec.kernel.ann import IndexSpec, SearchParams, SpaceIndex, build_index
from dualvec.kernel.hubs import find_hubs
from dualvec.kernel.truth import LOWER_BOUND_Z, QuerySample, lower_bound

D = 16


def unit_rows(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return unit_rows(np.random.default_rng(0), 2_000)


@pytest.fixture(scope="module")
def spaces(rows) -> dict[str, SpaceIndex]:
    """One space per kind of index: exact scores (flat, IVF full vectors, HNSW full vectors) or codes."""
    def built(kind, factory, efc=0):
        return SpaceIndex(rows, build_index(IndexSpec(kind, factory, efc), rows))

    return {"flat": SpaceIndex(rows, None), "ivf": built("ivf", "IVF32,Flat"),
            "ivfsq8": built("ivf", "IVF32,SQ8"), "hnsw": built("hnsw", "HNSW32,Flat", 40),
            "hnsw-sq8": built("hnsw", "HNSW32,SQ8", 40)}


def untrained_ivf(nlist: int) -> SpaceIndex:
    """An IVF space of nlist lists (candidate_grid reads only the list count: no training needed)."""
    rows = unit_rows(np.random.default_rng(1), 8)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
    return SpaceIndex(rows, index)


def climb(space: SpaceIndex, start: SearchParams) -> list[SearchParams]:
    """start, then step_up until it says None (at most 100 steps)."""
    chain = [start]
    while len(chain) < 100:
        nxt = step_up(space, chain[-1])
        if nxt is None:
            return chain
        chain.append(nxt)
    raise AssertionError(f"step_up did not stop: {chain[-3:]}")


def costlier(a: SearchParams, b: SearchParams) -> bool:
    """b does at least as much work as a in every parameter and more in one; hubs unchanged."""
    keys = ("ef_search", "nprobe", "rerank")
    return b.hubs == a.hubs and all(getattr(b, x) >= getattr(a, x) for x in keys) and \
        any(getattr(b, x) > getattr(a, x) for x in keys)


# ---------------------------------------------------------------------------------------------------------- step_up

def test_step_up_doubles_nprobe_up_to_the_list_count_then_stops_on_full_vectors(spaces):
    chain = climb(spaces["ivf"], SearchParams(nprobe=1, hubs=7))
    assert [p.nprobe for p in chain] == [1, 2, 4, 8, 16, 32]
    assert all(p.rerank == 0 and p.hubs == 7 and p.ef_search == 0 for p in chain)
    assert climb(spaces["ivf"], SearchParams(nprobe=20)) == [SearchParams(nprobe=20), SearchParams(nprobe=32)]


def test_step_up_on_codes_re_ranks_deeper_with_each_step_then_alone_at_the_top(spaces):
    chain = climb(spaces["ivfsq8"], SearchParams(nprobe=1, rerank=16))
    assert [(p.nprobe, p.rerank) for p in chain] == [(1, 16), (2, 32), (4, 64), (8, 128), (16, 128), (32, 128)]
    # every list visited: only re-ranking is left to deepen, one grid step at a time
    chain = climb(spaces["ivfsq8"], SearchParams(nprobe=32, rerank=2))
    assert [p.rerank for p in chain] == list(RERANK_GRID)
    assert {p.nprobe for p in chain} == {32}


def test_step_up_walks_the_ef_grid_on_a_graph_of_full_vectors(spaces):
    chain = climb(spaces["hnsw"], SearchParams(ef_search=EF_GRID[0], hubs=3))
    assert [p.ef_search for p in chain] == list(EF_GRID)
    assert all(p.rerank == 0 and p.hubs == 3 for p in chain)
    # a value between grid points goes to the next grid point
    assert step_up(spaces["hnsw"], SearchParams(ef_search=40)) == SearchParams(ef_search=48)


def test_step_up_on_a_graph_of_codes_deepens_ef_and_rerank_together_then_rerank_alone(spaces):
    chain = climb(spaces["hnsw-sq8"], SearchParams(ef_search=16, rerank=2))
    expected = [(ef, RERANK_GRID[min(i, len(RERANK_GRID) - 1)]) for i, ef in enumerate(EF_GRID)]
    assert [(p.ef_search, p.rerank) for p in chain] == expected  # rerank reaches 128 long before efSearch 2048
    chain = climb(spaces["hnsw-sq8"], SearchParams(ef_search=EF_GRID[-1], rerank=4))
    assert [p.rerank for p in chain] == [r for r in RERANK_GRID if r >= 4]


def test_step_up_has_nothing_above_an_exact_scan(spaces):
    assert step_up(spaces["flat"], SearchParams()) is None
    assert step_up(spaces["flat"], SearchParams(hubs=300)) is None


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "hnsw", "hnsw-sq8"])
def test_step_up_from_every_grid_setting_is_strictly_costlier_and_ends(spaces, kind):
    space = spaces[kind]
    space.hubs.set("in-out", np.arange(300))
    rerank = 0 if space.exact_scores else 16
    for chain in candidate_grid(space, "in-out", rerank):
        for start in chain:
            steps = climb(space, start)
            assert all(costlier(a, b) for a, b in zip(steps, steps[1:])), steps
            top = steps[-1]
            assert top.nprobe in (0, 32) and top.ef_search in (0, EF_GRID[-1])
            assert top.rerank == (0 if space.exact_scores else RERANK_GRID[-1])


# --------------------------------------------------------------------------------------------------- candidate_grid

def expected_hub_options(n_hubs: int) -> list[int]:
    """None, each grid count below the pair's hub count, and all of them."""
    return [0] + [h for h in HUB_GRID if h < n_hubs] + ([n_hubs] if n_hubs else [])


@pytest.mark.parametrize("n_hubs, options", [(0, [0]), (5, [0, 5]), (256, [0, 256]), (300, [0, 256, 300]),
                                             (1024, [0, 256, 1024]),
                                             (70_000, [0, *HUB_GRID, 70_000])])
def test_candidate_grid_has_a_chain_per_hub_count(spaces, n_hubs, options):
    assert expected_hub_options(n_hubs) == options  # the table above is the rule written out
    space = spaces["hnsw"]
    space.hubs.set("out-in", np.arange(n_hubs) % space.n)
    chains = candidate_grid(space, "out-in")
    assert [chain[0].hubs for chain in chains] == options
    for chain in chains:
        assert len({p.hubs for p in chain}) == 1
        assert [p.ef_search for p in chain] == list(EF_GRID)
        assert all(p.nprobe == 0 and p.rerank == 0 for p in chain)


@pytest.mark.parametrize("nlist, probes", [
    (32, [1, 2, 4, 8, 16, 32]),
    (1024, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]),          # all lists, up to 1024
    (1500, [1, 2, 4, 8, 16, 32, 64, 128, 187]),                      # above: an eighth of them (1500 // 8)
    (4096, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]),
    (24, [1, 2, 4, 8, 16, 24])])
def test_candidate_grid_doubles_nprobe_up_to_its_cap(nlist, probes):
    space = untrained_ivf(nlist)
    space.hubs.set("in-in", np.arange(3))
    chains = candidate_grid(space, "in-in", rerank=8)
    assert len(chains) == 2
    for chain, h in zip(chains, [0, 3]):
        assert [p.nprobe for p in chain] == probes
        assert all(p.hubs == h and p.rerank == 8 and p.ef_search == 0 for p in chain)


def test_candidate_grid_of_an_exact_space_is_one_setting_per_hub_count(spaces):
    space = spaces["flat"]
    space.hubs.set("in-out", np.arange(2_000)[::-1])
    chains = candidate_grid(space, "in-out", rerank=0)
    assert chains == [[SearchParams(hubs=h)] for h in [0, 256, 1024, 2_000]]


def test_candidate_grid_passes_the_rerank_depth_of_codes(spaces):
    for kind in ("ivfsq8", "hnsw-sq8"):
        chains = candidate_grid(spaces[kind], "no-hubs-pair", rerank=16)
        assert len(chains) == 1 and {p.rerank for p in chains[0]} == {16}
        assert all(costlier(a, b) for a, b in zip(chains[0], chains[0][1:]))


# ------------------------------------------------------------------------------------------------------ lower_bound

@pytest.mark.parametrize("values", [[1.0, 1.0, 0.0, 0.0], [0.9, 1.0, 0.8, 1.0, 1.0, 0.7], list(np.linspace(0, 1, 57))])
def test_lower_bound_is_the_mean_less_two_standard_errors(values):
    x = np.asarray(values)
    assert lower_bound(x) == pytest.approx(x.mean() - 2.0 * stats.sem(x), abs=1e-12)
    assert lower_bound(x, z=1.0) == pytest.approx(x.mean() - stats.sem(x), abs=1e-12)
    assert LOWER_BOUND_Z == 2.0


def test_lower_bound_of_a_known_sample():
    # mean 0.5, sample standard deviation sqrt(1/3), standard error sqrt(1/12)
    assert lower_bound(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.5 - 2 * np.sqrt(1 / 12), abs=1e-12)


def test_lower_bound_of_a_constant_one_or_no_value():
    assert lower_bound(np.full(10, 0.9)) == pytest.approx(0.9)
    assert lower_bound(np.array([0.7])) == pytest.approx(0.7)
    assert lower_bound(np.array([])) == 0.0


def test_lower_bound_rarely_exceeds_the_true_mean():
    """What it is for: the tuner accepts a setting when the lower bound of a held-out sample reaches the target.
    Over 4,000 samples of 400 per-query recalls (tenths, true mean 0.95), it is above the true mean in about
    2.3 % of them (one-sided z = 2), and the mean itself is in about half."""
    rng = np.random.default_rng(5)
    per_query = rng.binomial(10, 0.95, size=(4_000, 400)) / 10
    above = np.mean([lower_bound(sample) > 0.95 for sample in per_query])
    assert 0.005 < above < 0.05
    assert 0.4 < np.mean(per_query.mean(axis=1) > 0.95) < 0.6


# -------------------------------------------------------------------------------------------------------- find_hubs

def brute_force_hubs(rows: np.ndarray, queries: np.ndarray, query_ids: np.ndarray, depth: int) -> list[int]:
    """The union of each query's exact top-depth rows (its own id left out), most frequent first, ties by id.

    Also asserts that no query's top-depth boundary is a near tie, so that float32 and float64 agree on it."""
    scores = np.asarray(queries, np.float64) @ np.asarray(rows, np.float64).T
    scores[np.arange(len(query_ids)), query_ids] = -np.inf
    counts: Counter = Counter()
    for row in scores:
        order = np.argsort(-row, kind="stable")
        valid = order[np.isfinite(row[order])]
        top = valid[:depth]
        if len(valid) > depth:
            assert row[valid[depth - 1]] - row[valid[depth]] > 2e-6, "a near tie at the boundary: another seed"
        counts.update(top.tolist())
    return [i for i, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def test_find_hubs_is_the_union_of_exact_top_lists_most_frequent_first():
    rng = np.random.default_rng(4)
    rows = unit_rows(rng, 600, 12)
    ids = rng.integers(0, 600, 150)  # repeats, as the frequency-weighted sample has: each counts again
    assert len(np.unique(ids)) < len(ids)
    sample = QuerySample(ids.astype(np.int64), rows[ids])
    expected = brute_force_hubs(rows, rows[ids], ids, depth=10)
    got = find_hubs(rows, sample, depth=10, max_hubs=10_000)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    counts = Counter(expected)
    assert len(counts) > 1 and len(expected) < 150 * 10  # rows shared between lists: the order is by count


def test_find_hubs_of_a_cross_space_sample_leaves_each_query_word_out():
    """OUT rows close to their IN rows: every query's nearest target row is its own word, which must not count."""
    rng = np.random.default_rng(3)
    target = unit_rows(rng, 500, 12)
    other = target + 0.05 * rng.normal(size=target.shape).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    ids = np.sort(rng.choice(500, 120, replace=False)).astype(np.int64)
    nearest = np.argmax(other[ids] @ target.T, axis=1)
    assert np.array_equal(nearest, ids), "the own word is each query's best answer: leaving it out matters"
    got = find_hubs(target, QuerySample(ids, other[ids]), depth=5, max_hubs=10_000)
    assert got.tolist() == brute_force_hubs(target, other[ids], ids, depth=5)


def test_find_hubs_keeps_the_max_hubs_most_frequent():
    rng = np.random.default_rng(4)
    rows = unit_rows(rng, 600, 12)
    ids = rng.integers(0, 600, 150)
    sample = QuerySample(ids.astype(np.int64), rows[ids])
    everything = find_hubs(rows, sample, depth=10, max_hubs=10_000)
    assert find_hubs(rows, sample, depth=10, max_hubs=37).tolist() == everything[:37].tolist()


def test_find_hubs_deeper_than_the_space_counts_every_other_row():
    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 30, 12)
    ids = np.array([0, 1, 2, 2, 29], dtype=np.int64)
    got = find_hubs(rows, QuerySample(ids, rows[ids]), depth=50, max_hubs=100)
    # every query lists all 29 other rows: rows 3..28 in all 5 lists, 0/1/29 in 4, 2 in 3 (two queries are row 2)
    assert got.tolist() == list(range(3, 29)) + [0, 1, 29] + [2]


def test_step_up_from_an_unset_nprobe_goes_to_one_probe(spaces):
    """nprobe 0 means "not set": the next setting is 1 probe, never the same setting again."""
    nxt = step_up(spaces["ivf"], SearchParams())
    assert nxt == SearchParams(nprobe=1)
