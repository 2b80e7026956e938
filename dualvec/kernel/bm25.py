"""Okapi BM25 of one query against a set of documents, vectorized with numpy.

    BM25(Q, D) = sum over query tokens q of  idf(q) * tf(q, D) * (k1 + 1) / (tf(q, D) + k1 * (1 - b + b * |D| / avgdl))
    idf(q)     = ln(1 + (N - df(q) + 0.5) / (df(q) + 0.5))          (always positive)

with k1 = 1.2 and b = 0.75. A query token repeated in the query counts each time (as DESM averages over every
query token). BM25 is lexical: every token counts, known to the model's vocabulary or not.

Document frequencies ``df`` and the number of documents ``N`` come from the training corpus when the bundle
recorded them (``dualvec train`` does: source "corpus"), otherwise from the documents being scored (source
"request"). The average document length ``avgdl`` is always that of the documents being scored: the corpus
statistics hold document frequencies only.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import chain, repeat

import numpy as np

K1 = 1.2
B = 0.75

CORPUS = "corpus"
REQUEST = "request"


def idf(df: np.ndarray, n_documents: int) -> np.ndarray:
    """(t,) float64 inverse document frequencies of terms with document frequencies df (t,) among n_documents."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((n_documents - df + 0.5) / (df + 0.5))


def term_frequencies(query_terms: Sequence[str], documents: Sequence[Sequence[str]]) -> np.ndarray:
    """(n_docs, t) int64 counts of each of the t distinct query_terms in each document.

    One dict lookup per document token (in C: map over the chained documents), then one bincount."""
    term_index = {term: i for i, term in enumerate(query_terms)}
    t = len(query_terms)
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    cols = np.fromiter(map(term_index.get, chain.from_iterable(documents), repeat(-1)), dtype=np.int64,
                       count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(documents), dtype=np.int64), lengths)
    hit = cols >= 0
    flat = np.bincount(rows[hit] * t + cols[hit], minlength=len(documents) * t)
    return flat.reshape(len(documents), t)


def bm25_scores(query_tokens: Sequence[str], documents: Sequence[Sequence[str]], *,
                docfreq: tuple[int, dict[str, int]] | None = None) -> tuple[np.ndarray, str]:
    """Raw BM25 of the query against each document.

    query_tokens: the query's tokens (repeats count each time). documents: each document's tokens.
    docfreq: (N, token -> df) of a corpus, or None to take them from ``documents``.
    Returns ((n_docs,) float64 scores, "corpus" or "request": where the document frequencies came from)."""
    source = CORPUS if docfreq is not None else REQUEST
    n_docs = len(documents)
    if n_docs == 0 or not query_tokens:
        return np.zeros(n_docs, dtype=np.float64), source
    counted = Counter(query_tokens)
    terms = list(counted)
    query_counts = np.fromiter(counted.values(), dtype=np.float64, count=len(terms))
    tf = term_frequencies(terms, documents).astype(np.float64)          # (n_docs, t)
    lengths = np.fromiter((len(doc) for doc in documents), dtype=np.float64, count=n_docs)
    avgdl = float(lengths.mean()) if lengths.sum() > 0 else 1.0
    if docfreq is not None:
        n_total, table = docfreq
        df = np.fromiter((table.get(term, 0) for term in terms), dtype=np.float64, count=len(terms))
        # a corpus that is smaller than its own counts say (it cannot be, but a hand-made file could) stays sane
        n_total = max(int(n_total), int(df.max(initial=0)))
    else:
        n_total = n_docs
        df = (tf > 0).sum(axis=0).astype(np.float64)
    weights = idf(df, n_total) * query_counts                            # (t,)
    norm = K1 * (1.0 - B + B * lengths / avgdl)                          # (n_docs,)
    saturated = tf * (K1 + 1.0) / (tf + norm[:, None])
    return saturated @ weights, source


def normalize_by_max(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their maximum (the best document gets 1), all zero when no document matched.

    BM25 is unbounded and grows with the query's length; DESM is a mean cosine. Dividing by the best BM25 among
    the documents scored together puts BM25 in [0, 1] so that ``(1 - w) * DESM + w * BM25`` mixes comparable
    numbers. It makes a document's BM25 depend on the other documents of the same call, as a re-ranker's features
    do."""
    scores = np.asarray(scores, dtype=np.float64)
    top = float(scores.max(initial=0.0))
    return scores / top if top > 0 else np.zeros_like(scores)
