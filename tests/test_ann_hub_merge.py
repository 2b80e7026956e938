"""The hub merge (dualvec.kernel.hubs): the one-query path (a plain merge of two sorted lists) gives what the batched,
vectorized path gives, duplicates, padding and ties included."""
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
