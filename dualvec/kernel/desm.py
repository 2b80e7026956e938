"""DESM document ranking (Mitra, Nalisnick, Craswell, Caruana 2016) on a bundle, in plain numpy.

    DESM(Q, D) = 1/|Q| * sum_{q in Q} cos(q_query_space, Dbar),   Dbar = 1/|D| * sum_{d in D} d_doc_space / ||d||

Q and D are token sequences; tokens missing from the vocabulary are skipped (and counted), repeated tokens count
each time. The bundle's rows are already unit vectors, so with qbar the mean of the query's rows,
DESM(Q, D) = qbar . Dbar / ||Dbar||: one dot product per document once the centroids are known. The centroids of
all documents of a call come from one sparse (documents x distinct words) count matrix times the distinct words'
rows, accumulated in float64: memory grows with the number of distinct words, not with the number of tokens, and
the only work per token is two dict lookups (vocabulary row, BM25 query term) driven from C by ``map``.

DESM IN-OUT (query IN, documents OUT, the default) scores *aboutness*; DESM IN-IN scores *typical* similarity.
With ``bm25_weight`` w the score is ``(1 - w) * DESM + w * BM25 / max BM25`` (see dualvec.kernel.bm25: BM25 is
divided by the best BM25 among the documents of the same call, so that both parts lie on comparable scales).

This module knows nothing of gRPC: the servicer turns requests into these types and back.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np
import scipy.sparse

from dualvec.kernel.errors import InvalidArgument, SpaceUnavailable, UnknownWords
from dualvec.kernel.results import DocumentScore
from dualvec.kernel.bm25 import bm25_scores, normalize_by_max
from dualvec.kernel.spaces import Space

# distinct words whose rows are gathered (as float64) at once while summing centroids: 32k x 300 x 8 B = 79 MB
_CENTROID_CHUNK = 32_768


@dataclass(frozen=True)
class DocumentInput:
    """A document to score: the caller's id and its tokens (already tokenized)."""

    id: str
    tokens: tuple[str, ...]


# the result type is shared with the client
DocumentScoreResult = DocumentScore


@dataclass(frozen=True)
class DesmLimits:
    """Per-call limits; beyond them the call is refused with InvalidArgument naming the field and the limit."""

    max_documents: int = 1000
    max_document_tokens: int = 100_000
    max_query_tokens: int = 1000
    # a token takes at least one character and a separator: text longer than this many characters per allowed
    # token is refused before it is tokenized, so that refusing it costs almost nothing
    chars_per_token: int = 64


def tokenized_inputs(tokenizer, query: str, query_tokens: Sequence[str],
                     documents: Sequence[tuple[str, Sequence[str], str]],
                     limits: DesmLimits = DesmLimits()) -> tuple[list[str], list[DocumentInput]]:
    """A ScoreDocuments call's query and documents as tokens: given tokens are kept, text is tokenized with the
    bundle's tokenizer. documents: (id, tokens, text) each. Every count and length is checked against ``limits``
    before any text is tokenized; raises InvalidArgument naming the field and the limit."""
    _check_document_count(len(documents), limits)
    _check_text(query, "query", limits.max_query_tokens * limits.chars_per_token)
    for i, (doc_id, tokens, text) in enumerate(documents):
        if not tokens:
            _check_text(text, f"documents[{i}].text", limits.max_document_tokens * limits.chars_per_token)
    q = list(query_tokens) if len(query_tokens) else tokenizer(query)
    if not q:
        raise InvalidArgument("query", "empty query: give query text or query_tokens")
    docs = [DocumentInput(doc_id, tuple(tokens) if len(tokens) else tuple(tokenizer(text)))
            for doc_id, tokens, text in documents]
    return q, docs


def _check_text(text: str, field_name: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise InvalidArgument(field_name, f"{len(text):,} characters; the limit is {max_chars:,}")


def score_documents(bundle, query_tokens: Sequence[str], documents: Sequence[DocumentInput], *,
                    query_space: Space = Space.IN, document_space: Space = Space.OUT, bm25_weight: float = 0.0,
                    limits: DesmLimits = DesmLimits()) -> tuple[list[DocumentScoreResult], str]:
    """Score documents for a query with DESM (and BM25 mixed in by ``bm25_weight``).

    bundle: a dualvec.kernel.bundle.Bundle. query_tokens: the query's tokens. documents: the documents, any number up to
    ``limits.max_documents`` (none gives an empty list).
    Returns (one DocumentScoreResult per document, in request order; "corpus" or "request": where the BM25
    document frequencies came from: the bundle's training corpus when it recorded them, else these documents).

    Raises InvalidArgument (bm25_weight not a finite number in [0, 1], a limit exceeded, an empty query, an unknown
    space name), SpaceUnavailable (a space the bundle lacks), UnknownWords (no query token is in the vocabulary;
    every unknown query token is named).
    """
    query_space = _parse_space(query_space, "query_space")
    document_space = _parse_space(document_space, "document_space")
    weight = _check_weight(bm25_weight)
    query_tokens = list(query_tokens)
    _check_limits(query_tokens, documents, limits)
    for space in (query_space, document_space):
        if not bundle.has_space(space):
            raise SpaceUnavailable(f"the bundle has no {space.value.upper()} space (it was built from IN vectors "
                                   f"only), so DESM {query_space.value.upper()}-{document_space.value.upper()} "
                                   f"cannot be computed")
    if not query_tokens:
        raise InvalidArgument("query_tokens", "the query has no tokens")

    lookup = bundle.vocab.index.get
    query_ids = np.fromiter((lookup(t, -1) for t in query_tokens), dtype=np.int64, count=len(query_tokens))
    known = query_ids[query_ids >= 0]
    if len(known) == 0:
        raise UnknownWords(list(dict.fromkeys(query_tokens)))
    query_mean = np.asarray(bundle.vectors[query_space][np.sort(known)], dtype=np.float64).mean(axis=0)  # (d,)

    token_lists = [doc.tokens for doc in documents]
    desm, found = desm_scores(query_mean, bundle.vectors[document_space], token_lists, lookup)
    raw_bm25, source = bm25_scores(query_tokens, token_lists, docfreq=bundle.docfreq)
    bm25 = normalize_by_max(raw_bm25)
    score = np.where(found > 0, (1.0 - weight) * desm + weight * bm25, 0.0)
    results = [DocumentScoreResult(str(doc.id), float(score[i]), float(desm[i]), float(bm25[i]), int(len(known)),
                                   int(found[i]))
               for i, doc in enumerate(documents)]
    return results, source


def desm_scores(query_mean: np.ndarray, doc_vectors: np.ndarray, documents: Sequence[Sequence[str]],
                lookup) -> tuple[np.ndarray, np.ndarray]:
    """DESM of a query against each document.

    query_mean: (d,) float64 mean of the query tokens' unit rows in the query space. doc_vectors: (n, d) float32
    unit rows of the document space. documents: each document's tokens. lookup: token -> row id (or the default
    given as second argument for unknown tokens), e.g. ``vocab.index.get``.
    Returns ((n_docs,) float64 DESM, 0 where a document has no known token; (n_docs,) int64 known tokens)."""
    n_docs = len(documents)
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=n_docs)
    ids = np.fromiter(map(lookup, chain.from_iterable(documents), repeat(-1)), dtype=np.int64,
                      count=int(lengths.sum()))
    rows = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    hit = ids >= 0
    ids, rows = ids[hit], rows[hit]
    found = np.bincount(rows, minlength=n_docs).astype(np.int64)
    desm = np.zeros(n_docs, dtype=np.float64)
    if len(ids) == 0:
        return desm, found
    # distinct words and each token's column among them, without sorting the tokens (ids are < vocabulary size)
    present = np.zeros(doc_vectors.shape[0], dtype=bool)
    present[ids] = True
    distinct = np.flatnonzero(present)
    column = (np.cumsum(present) - 1)[ids]
    counts = scipy.sparse.csc_matrix((np.ones(len(ids), dtype=np.float64), (rows, column)),
                                     shape=(n_docs, len(distinct)))      # duplicates are summed: token counts
    sums = np.zeros((n_docs, doc_vectors.shape[1]), dtype=np.float64)  # centroids times |D| (direction is enough)
    for start in range(0, len(distinct), _CENTROID_CHUNK):
        stop = start + _CENTROID_CHUNK
        block = np.asarray(doc_vectors[distinct[start:stop]], dtype=np.float64)
        sums += counts[:, start:stop] @ block
    norms = np.linalg.norm(sums, axis=1)
    ok = norms > 0  # a document whose known words cancel out exactly has no direction: score 0, never NaN
    desm[ok] = (sums[ok] @ query_mean) / norms[ok]
    return desm, found


def _parse_space(value, field: str) -> Space:
    if isinstance(value, Space):
        return value
    try:
        return Space.parse(str(value))
    except ValueError as exc:
        raise InvalidArgument(field, str(exc)) from None


def _check_weight(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not 0.0 <= float(value) <= 1.0:
        raise InvalidArgument("bm25_weight", f"must be a finite number in [0, 1], got {value!r}")
    return float(value)


def _check_document_count(n: int, limits: DesmLimits) -> None:
    if n > limits.max_documents:
        raise InvalidArgument("documents", f"{n:,} documents in one call; the limit is {limits.max_documents:,} "
                                           f"(--max-documents)")


def _check_limits(query_tokens: Sequence[str], documents: Sequence[DocumentInput], limits: DesmLimits) -> None:
    _check_document_count(len(documents), limits)
    if len(query_tokens) > limits.max_query_tokens:
        raise InvalidArgument("query_tokens", f"the query has {len(query_tokens)} tokens; the limit is "
                                              f"{limits.max_query_tokens:,} (--max-query-tokens)")
    for i, doc in enumerate(documents):
        if len(doc.tokens) > limits.max_document_tokens:
            raise InvalidArgument(f"documents[{i}].tokens",
                                  f"document {doc.id!r} has {len(doc.tokens)} tokens; the limit is "
                                  f"{limits.max_document_tokens:,} (--max-document-tokens)")
