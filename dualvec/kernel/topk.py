"""Operations on top-k answers held as a pair of (m, k) arrays: float32 scores and int64 ids, best first, with
-inf / -1 where a row has fewer than k answers. The index, the hub merge and the ground truth share them."""
from __future__ import annotations

import numpy as np


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, c) scores and ids widened to (m, k) float32 / int64 with -inf / -1 (c <= k)."""
    if scores.shape[1] == k:
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)
    m = scores.shape[0]
    s = np.full((m, k), -np.inf, np.float32)
    i = np.full((m, k), -1, np.int64)
    s[:, :scores.shape[1]] = scores
    i[:, :ids.shape[1]] = ids
    return s, i


def later_duplicates(ids: np.ndarray) -> np.ndarray:
    """(m, c) bool: True where the id already appeared earlier in its row."""
    c = ids.shape[1]
    eq = ids[:, :, None] == ids[:, None, :]          # (m, c, c)
    earlier = np.tril(np.ones((c, c), dtype=bool), -1)  # [i, j] True when j < i
    return (eq & earlier[None]).any(axis=2)


def drop_query_ids(ids: np.ndarray, scores: np.ndarray, query_ids: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, k+1) answers with each row's query id (m,) removed, the first k kept: (m, k) ids and scores."""
    keep = ids != query_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
