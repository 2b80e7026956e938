"""Answer tables: a query pair's answers to one-word queries, computed at build and looked up when served.

On a dense vocabulary (rare words trained on few occurrences crowd together), a graph search must visit much of
a crowd to return the true top 10, and a same-space query can cost a millisecond of CPU. Most queries name one
word, and a word's answer depends only on the word and the pair's tuned parameters, so the build can compute it
once. An answer table holds, for the first ``rows`` words of the vocabulary (the most frequent: the words that
traffic asks for most), the ``width`` rows the pair's own search returns for that word's query vector: ids and
exact cosines, best first, the word itself included (it is left out when the query is answered, as the index's
answer is). The engine answers a covered word from the table when the query asks no more than the table holds,
names no vocabulary prefix and is not exact; every other query goes to the index.

The table is filled by the same search the engine runs (``SpaceIndex.search`` with the pair's tuned parameters
and hub rows), so an answer from the table is the index's answer: recall is the pair's recorded recall, and the
time is a row lookup. It costs ``rows`` x ``width`` x 8 bytes per pair (128 MB for a million words at width 16,
memory-mapped) and, at build, one batched search per covered word (dualvec.indexer.answer_tables).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualvec.kernel.errors import BundleError


@dataclass(frozen=True)
class AnswerTable:
    """ids: (rows, width) int32 (-1 = none); scores: (rows, width) float32 exact cosines; row i answers word i."""

    ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.ndim != 2 or self.ids.shape != self.scores.shape:
            raise BundleError(f"an answer table's ids {self.ids.shape} and scores {self.scores.shape} differ "
                              f"in shape")
        if self.ids.dtype != np.int32 or self.scores.dtype != np.float32:
            raise BundleError(f"an answer table holds int32 ids and float32 scores, not {self.ids.dtype} and "
                              f"{self.scores.dtype}")

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def covers(self, word: int, fetch: int) -> bool:
        """Whether the table answers a query for vocabulary row ``word`` that asks ``fetch`` rows of the index."""
        return word < self.ids.shape[0] and fetch == self.ids.shape[1]

    def answer(self, word: int) -> tuple[list[float], list[int]]:
        """The stored rows of one word: (scores, ids) as lists, best first."""
        return self.scores[word].tolist(), self.ids[word].tolist()

