"""Exact ground truth and recall@k: the one definition the tuner, the evaluation and the benchmark all count by.

Recall is counted as ann-benchmarks counts it: a returned row is right when its exact cosine reaches the k-th best
exact cosine less TIE_EPS, so ties are not held against an index. Each query's own word is left out of both lists
(as the server does by default), a row returned twice counts once, and a truth limited to the first ``limit``
rows (the most frequent words) counts nothing beyond them.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from dualvec.kernel.topk import drop_query_ids, later_duplicates, pad

TIE_EPS = 1e-4
# The held-out recall must reach the target by this many standard errors: a setting chosen because its sample
# recall just crossed the target is as likely below as above it on queries the build never saw.
LOWER_BOUND_Z = 2.0


@dataclass
class QuerySample:
    """Query words of one space: ids (m,) int64 into the vocabulary and their (m, d) float32 unit vectors."""

    ids: np.ndarray
    vectors: np.ndarray


@dataclass
class Truth:
    """Exact top-k of a query sample in a target space, each query's own word left out.

    ids: (m, k) int64 (-1 where fewer rows exist); scores: (m, k) float32 exact cosines; thresholds: (m,) float32,
    the k-th best exact cosine less TIE_EPS; limit: the truth covers rows [0, limit) only (None = all)."""

    ids: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    limit: int | None = None

    @property
    def k(self) -> int:
        return self.ids.shape[1]


def frequency_weights(counts: np.ndarray) -> np.ndarray:
    """(n,) float64 sampling weights by word frequency: the counts, or a Zipf law by rank when they are all 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        counts = 1.0 / np.arange(1, len(counts) + 1)
    return counts / counts.sum()


def draw_ids(n: int, m: int, rng: np.random.Generator, *, weights: np.ndarray | None = None,
             exclude: np.ndarray | None = None) -> np.ndarray:
    """(m,) int64 row ids: uniform without replacement (weights None; at most n, sorted), else by weights with
    replacement; exclude (uniform only) removes ids already used elsewhere when enough remain."""
    if weights is not None:
        return rng.choice(n, size=m, replace=True, p=weights).astype(np.int64)
    pool = np.arange(n)
    if exclude is not None and len(exclude) and n - len(np.unique(exclude)) >= m:
        pool = np.setdiff1d(pool, exclude)
    return np.sort(rng.choice(pool, size=min(m, len(pool)), replace=False)).astype(np.int64)


def exact_search(rows: np.ndarray, queries: np.ndarray, k: int,
                 limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-k by inner product over rows [0, limit). rows: (n, d) float32; queries: (m, d) float32.
    Returns (m, k) float32 scores and (m, k) int64 ids, best first, -inf / -1 padded."""
    base = rows if not limit or limit >= rows.shape[0] else rows[:limit]
    scores, ids = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), base, min(k, base.shape[0]),
                            metric=faiss.METRIC_INNER_PRODUCT)
    return pad(scores, ids, k)


def exact_truth(rows: np.ndarray, sample: QuerySample, k: int, limit: int | None = None) -> Truth:
    """The exact top-k of each query of the sample in (n, d) float32 unit rows, its own word left out."""
    scores, ids = exact_search(rows, sample.vectors, k + 1, limit)
    ids, scores = drop_query_ids(ids, scores, sample.ids, k)
    kth = scores[:, k - 1]
    return Truth(ids, scores, np.where(np.isfinite(kth), kth - TIE_EPS, -np.inf).astype(np.float32), limit)


def recall_per_query(rows: np.ndarray, sample: QuerySample, truth: Truth, found: np.ndarray) -> np.ndarray:
    """(m,) float64 recall@k of found (m, >=k) int64 ids (-1 = nothing; the first k are judged): a found row is
    right when its exact cosine reaches the truth's threshold; the query's own word, repeats and rows outside the
    truth's limit never count."""
    m, k = truth.ids.shape
    found = np.asarray(found, dtype=np.int64)[:, :k]
    valid = (found >= 0) & (found != sample.ids[:, None]) & ~later_duplicates(found)
    if truth.limit:
        valid &= found < truth.limit
    safe = np.where(valid, found, 0)
    gathered = np.asarray(rows[safe.ravel()], dtype=np.float32).reshape(m, found.shape[1], -1)
    exact = np.einsum("md,mkd->mk", sample.vectors, gathered)
    hits = (exact >= truth.thresholds[:, None]) & valid
    return hits.sum(axis=1) / k


def recall(rows: np.ndarray, sample: QuerySample, truth: Truth, found: np.ndarray) -> float:
    """Mean recall@k of found (m, k) ids, counted as recall_per_query counts it."""
    return float(recall_per_query(rows, sample, truth, found).mean())


def lower_bound(per_query: np.ndarray, z: float = LOWER_BOUND_Z) -> float:
    """Mean recall less z standard errors: what a sample's recall says of the recall of its whole distribution."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 0.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(len(per_query)))
