"""Filling the answer tables at build: each indexed pair's answers to one-word queries, most frequent words first,
within a time budget (dualvec.kernel.answer_table says what a table is and how it is served).

Words are searched in blocks, one batched FAISS call per block and pair at the pair's tuned parameters, with the
same query vectors (``unit_rows``) and the same rows asked (``fetch_rows``) as the engine's one-word queries, so
that a stored answer is the answer the index gives. Every pair covers the same words: blocks go round the pairs
until the budget is spent (the block under way is finished), or until ``words`` words are covered when a number
is given. A word's row of the most frequent ones is what most traffic asks for: with the budget spent, the
rarer words go to the index.
"""
from __future__ import annotations

import logging
from time import perf_counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dualvec.kernel.ann import SearchParams, SpaceIndex
from dualvec.kernel.answer_table import AnswerTable
from dualvec.kernel.search import fetch_rows, unit_rows

log = logging.getLogger(__name__)

BLOCK = 2048  # words per batched search (the re-scoring gathers BLOCK x rerank x 16 rows of d floats)
# Build seconds the tables may take by default. Filling costs about a pair's tuned time per word divided by the
# cores: a 200k-word vocabulary's four pairs in about a minute on 2 cores. At 1M x 300 (about 3 ms of CPU per word
# for the four pairs) two minutes cover the 80-90k most frequent words, three quarters of the words of a corpus
# whose median word count is 4, so of the queries drawn by frequency; with the tuning of the words past the tables
# (a minute a pair there) the whole build stays within 15 minutes on 2 cores.
DEFAULT_SECONDS = 120.0


@dataclass(frozen=True)
class TableConfig:
    """How much the build spends on answer tables: ``seconds`` of wall time (0: no tables), or, when ``words`` is
    set, exactly that many words per pair (the whole vocabulary when it is at least its size)."""

    seconds: float = DEFAULT_SECONDS
    words: int | None = None

    @property
    def enabled(self) -> bool:
        return (self.words or 0) > 0 if self.words is not None else self.seconds > 0


@dataclass
class PairToFill:
    """One pair to tabulate: its query space's unit rows, its target space's index (hub rows set) and params."""

    name: str
    queries: np.ndarray
    target: SpaceIndex
    params: SearchParams


def fill_tables(pairs: list[PairToFill], n_words: int, cfg: TableConfig,
                progress: Callable[[int], None] | None = None) -> tuple[dict[str, AnswerTable], float]:
    """Fill every pair's table for the same leading words; returns (tables by pair name, seconds spent).
    progress: told the words covered so far (all pairs) after each block."""
    if not pairs or not cfg.enabled:
        return {}, 0.0
    width = fetch_rows(1)  # the rows a one-word query with k up to width - 1 asks of the index
    limit = n_words if cfg.words is None else min(n_words, cfg.words)
    ids: dict[str, list[np.ndarray]] = {p.name: [] for p in pairs}  # blocks: memory for what is filled only
    scores: dict[str, list[np.ndarray]] = {p.name: [] for p in pairs}
    started = perf_counter()
    done = 0
    while done < limit:
        end = min(limit, done + BLOCK)
        for p in pairs:
            vectors = unit_rows(p.queries[done:end])
            s, i = p.target.search(vectors, width, p.params, p.name)
            if i.size and i.min() < 0:  # answered exactly where the index came back short, as the engine does
                redo = np.flatnonzero(np.count_nonzero(i >= 0, axis=1) < min(width, p.target.n))
                if len(redo):
                    s, i = np.array(s), np.array(i)
                    s[redo], i[redo] = p.target.exact(vectors[redo], width)
            ids[p.name].append(i.astype(np.int32))
            scores[p.name].append(np.asarray(s, dtype=np.float32))
        done = end
        if progress:
            progress(done)
        if cfg.words is None and perf_counter() - started >= cfg.seconds:
            break
    seconds = perf_counter() - started
    log.info("answer tables: %s words of %s for %d pairs in %.0f s", f"{done:,}", f"{n_words:,}", len(pairs),
             seconds)
    return {name: AnswerTable(np.concatenate(ids[name]), np.concatenate(scores[name])) for name in ids}, seconds
