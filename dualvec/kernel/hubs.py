"""Hubs: the few target rows that are the frequent exact answers of a cross-space pair's queries.

Cross-space top-k lists are dominated by hubs, and a graph built on one space tends to miss them for queries of
the other. The build finds them (``find_hubs``, capped by ``hub_cap``) and stores each pair's list in the bundle,
best first; a pair's tuned ``hubs`` parameter says how many of them a query scans exactly; ``HubLists`` holds a
target space's lists, keeps the scanned prefixes gathered in memory, and merges their exact scores into the
index's answer.
"""
from __future__ import annotations

from operator import itemgetter

import faiss
import numpy as np

from dualvec.kernel.topk import drop_query_ids, later_duplicates
from dualvec.kernel.truth import QuerySample, exact_search


def hub_cap(n_rows: int, max_hubs: int) -> int:
    """How many hubs a space of n_rows may keep: max_hubs, and never more than an eighth of the rows."""
    return min(max_hubs, max(1, n_rows // 8))


def find_hubs(rows: np.ndarray, sample: QuerySample, depth: int, max_hubs: int) -> np.ndarray:
    """Rows that are frequent exact answers of the sample's queries in (n, d) float32 unit rows: the union of the
    exact top-``depth`` of every query (its own word left out), ordered by how many lists each row is in (ties by
    row id), at most max_hubs. Returns (h,) int64."""
    scores, ids = exact_search(rows, sample.vectors, depth + 1)
    ids, _ = drop_query_ids(ids, scores, sample.ids, depth)
    counts = np.bincount(ids[ids >= 0], minlength=rows.shape[0])
    hubs = np.flatnonzero(counts)
    order = np.lexsort((hubs, -counts[hubs]))
    return hubs[order][:max_hubs].astype(np.int64)


class HubLists:
    """The hub rows of each query pair that targets one space, best first, and their merge into an answer.

    rows: the target space's (n, d) float32 unit rows. Prefixes of a list are gathered into memory on first use
    (``warm`` at load, so that no request pays for it) and shared read-only by every thread afterwards."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self._ids: dict[str, np.ndarray] = {}
        self._gathered: dict[tuple[str, int], np.ndarray] = {}

    def set(self, pair: str, ids: np.ndarray) -> None:
        """A pair's hub rows, best first: (h,) int64 row ids."""
        self._ids[pair] = np.asarray(ids, dtype=np.int64)
        for key in [key for key in self._gathered if key[0] == pair]:
            del self._gathered[key]

    def count(self, pair: str) -> int:
        return len(self._ids.get(pair, ()))

    def ids(self, pair: str) -> np.ndarray:
        """(h,) int64: every hub row of the pair (empty when none)."""
        return self._ids.get(pair, np.empty(0, np.int64))

    def warm(self, pair: str, h: int) -> np.ndarray:
        """(h, d) float32 rows of the pair's first h hubs, gathered once and kept."""
        key = (pair, h)
        if key not in self._gathered:
            self._gathered[key] = np.ascontiguousarray(self.rows[self._ids[pair][:h]], dtype=np.float32)
        return self._gathered[key]

    def merge(self, queries: np.ndarray, k: int, pair: str, h: int, scores: np.ndarray, ids: np.ndarray,
              limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The index's (m, k) answer merged with the exact scores of the pair's first h hubs (rows < limit only):
        the best k distinct ids of both, the index's answer first on equal scores. queries: (m, d) float32."""
        if h <= 0 or not self.count(pair):
            return scores, ids
        hub_ids = self._ids[pair][:h]
        hub_vecs = self.warm(pair, h)
        if limit and limit < self.rows.shape[0]:
            keep = hub_ids < limit
            hub_ids, hub_vecs = hub_ids[keep], hub_vecs[keep]
        if len(hub_ids) == 0:
            return scores, ids
        kk = min(k, len(hub_ids))
        hs, hi = faiss.knn(queries, hub_vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
        hi = hub_ids[hi]
        if len(queries) == 1:
            return merge_one(scores[0], ids[0], hs[0], hi[0], k)
        all_s = np.concatenate([scores, hs], axis=1)
        all_i = np.concatenate([ids, hi], axis=1)
        # drop duplicates (a hub the index also found) and padding, then take the best k
        all_s = np.where(all_i < 0, -np.inf, all_s)
        order = np.argsort(-all_s, axis=1, kind="stable")
        all_s = np.take_along_axis(all_s, order, axis=1)
        all_i = np.take_along_axis(all_i, order, axis=1)
        all_s = np.where(later_duplicates(all_i), -np.inf, all_s)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        out_s = np.take_along_axis(all_s, order, axis=1)
        out_i = np.take_along_axis(all_i, order, axis=1)
        out_i = np.where(np.isfinite(out_s), out_i, -1)
        out_s = np.where(np.isfinite(out_s), out_s, -np.inf).astype(np.float32)
        return out_s, out_i


def merge_one(scores: np.ndarray, ids: np.ndarray, hub_scores: np.ndarray, hub_ids: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """HubLists.merge for one query, without the (m, c, c) arrays: a stable sort of the two short lists (the
    index's answer first on equal scores), then the first k distinct ids. Returns (1, k) scores and ids."""
    # reverse=True keeps equal scores in their first order, as a stable sort on -score does
    merged = sorted(zip(scores.tolist() + hub_scores.tolist(), ids.tolist() + hub_ids.tolist()),
                    key=itemgetter(0), reverse=True)
    out_s, out_i, seen = [], [], set()
    for s, i in merged:
        if i < 0 or s == -np.inf or i in seen:
            continue
        seen.add(i)
        out_s.append(s)
        out_i.append(i)
        if len(out_i) == k:
            break
    fill = k - len(out_i)
    return (np.array([out_s + [-np.inf] * fill], dtype=np.float32),
            np.array([out_i + [-1] * fill], dtype=np.int64))
