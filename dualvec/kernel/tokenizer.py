"""Tokenizers: how text (corpus lines, DESM queries and documents) becomes tokens. A bundle records its
tokenizer so that queries are split the way the model's corpus was.

    whitespace   split on white space, case kept (a corpus that is already tokenized)
    lower        lowercase, then split on white space
    simple       lowercase, then runs of letters and digits (apostrophes inside a word kept): the default of
                 `dualvec train` and of imported models unless `--tokenizer` says otherwise
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
KINDS = ("whitespace", "lower", "simple")


@dataclass(frozen=True)
class Tokenizer:
    kind: str = "simple"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown tokenizer {self.kind!r}: expected one of {', '.join(KINDS)}")

    def __call__(self, text: str) -> list[str]:
        if self.kind == "whitespace":
            return text.split()
        if self.kind == "lower":
            return text.lower().split()
        return _WORD.findall(text.lower())

    def to_dict(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Tokenizer":
        return cls(**(data or {}))
