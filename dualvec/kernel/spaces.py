"""The two embedding spaces and the four ordered pairs of them."""
from __future__ import annotations

from enum import Enum


class Space(str, Enum):
    """An embedding space: IN = word2vec syn0 (gensim ``wv.vectors``), OUT = syn1neg."""

    IN = "in"
    OUT = "out"

    @classmethod
    def parse(cls, text: str) -> "Space":
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unknown space {text!r}: expected 'in' or 'out'") from None


ALL_PAIRS: tuple[tuple[Space, Space], ...] = (
    (Space.IN, Space.IN),
    (Space.IN, Space.OUT),
    (Space.OUT, Space.IN),
    (Space.OUT, Space.OUT),
)


def pair_name(query: Space, target: Space) -> str:
    """'in-out' for an IN query searched in the OUT index."""
    return f"{query.value}-{target.value}"


def parse_pair(name: str) -> tuple[Space, Space]:
    """Inverse of pair_name: 'in-out' -> (IN, OUT)."""
    parts = name.lower().replace("->", "-").split("-")
    if len(parts) != 2:
        raise ValueError(f"unknown space pair {name!r}: expected e.g. 'in-out'")
    return Space.parse(parts[0]), Space.parse(parts[1])
