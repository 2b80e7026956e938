"""Small result types shared by the search core and the client (plain dataclasses, no protobuf)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Neighbor:
    """One search result: the word, its vocabulary row (0 = most frequent) and its cosine to the query."""

    word: str
    id: int
    score: float


@dataclass(frozen=True)
class WordVector:
    """A word's vector in one space: unit ``vector`` (d,) floats, the model's ``raw`` vector when asked, its norm
    and corpus count."""

    word: str
    id: int
    vector: tuple[float, ...]
    raw: tuple[float, ...] | None
    norm: float
    count: int
