"""What every model reader returns: the vocabulary and the two raw matrices of a model."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
