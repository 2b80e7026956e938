"""What every model reader takes and returns: an input file it checks once (``require_file``), and the
vocabulary and the two raw matrices of a model (``SourceModel``), whose words must be unique
(``duplicate_words``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dualvec.kernel.errors import ModelError


def require_file(path: Path, what: str) -> None:
    """Refuse (ModelError naming ``what`` and the path) a path that is missing, a directory, or empty."""
    if not path.exists():
        raise ModelError(f"{what} {path}: no such file")
    if path.is_dir():
        raise ModelError(f"{what} {path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ModelError(f"{what} {path}: the file is empty")


def duplicate_words(words: list[str]) -> list[str]:
    """The words that occur more than once, each at its second and later occurrences, in order."""
    seen: set[str] = set()
    dups = []
    for w in words:
        if w in seen:
            dups.append(w)
        seen.add(w)
    return dups


@dataclass
class SourceModel:
    """A model's two spaces as read, before normalization.

    words: n strings, row order (most frequent first where the source knows counts).
    counts: (n,) int64 corpus counts (zeros when the source has none).
    in_vectors: (n, d) float32 IN rows. out_vectors: (n, d) float32 OUT rows, or None for an IN-only source.
    source: where it came from ({"kind", "path", "sha256", ...}), recorded in the manifest.
    tokenizer: how the model's corpus was tokenized (dualvec.kernel.tokenizer spec), when known.
    docfreq: (number of documents, token -> document frequency) of the training corpus, when recorded.
    """

    words: list[str]
    counts: np.ndarray
    in_vectors: np.ndarray
    out_vectors: np.ndarray | None
    source: dict
    tokenizer: dict | None = None
    docfreq: tuple[int, dict[str, int]] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.in_vectors.shape[1])
