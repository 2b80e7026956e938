"""L2 normalization of a space, refusing rows that cannot be normalized."""
from __future__ import annotations

import numpy as np

from dualvec.kernel.errors import ModelError


def normalize_rows(rows: np.ndarray, words: list[str], space: str, *, chunk: int = 65_536,
                   progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Return ((n, d) float32 unit rows, (n,) float32 original norms) of ``rows`` without modifying it.

    Refuses non-finite rows and zero rows, naming the words (a zero vector has no direction: its cosine to
    anything is undefined, and silently serving NaN would be worse). progress: optional callable(rows_done).
    """
    n, d = rows.shape
    if n == 0:
        raise ModelError(f"{space.upper()} space: the vocabulary is empty")
    unit = np.empty((n, d), dtype=np.float32)
    norms = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(rows[start:start + chunk], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = [words[start + i] for i in np.flatnonzero(~finite)[:10]]
            raise ModelError(f"{space.upper()} space: non-finite values (NaN or inf) in the vectors of "
                             f"{', '.join(map(repr, bad))}")
        norm = np.linalg.norm(block.astype(np.float64), axis=1)
        zero = ~(norm > 0)
        if zero.any():
            bad = [words[start + i] for i in np.flatnonzero(zero)[:10]]
            more = int(zero.sum()) - len(bad)
            raise ModelError(f"{space.upper()} space: zero vectors cannot be normalized: "
                             f"{', '.join(map(repr, bad))}{f' and {more} more' if more > 0 else ''}")
        unit[start:start + len(block)] = (block / norm[:, None]).astype(np.float32)
        norms[start:start + len(block)] = norm
        if progress:
            progress(len(block))
    return unit, norms
