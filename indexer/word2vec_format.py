"""word2vec-format vector files (the C tool's format): a header "n d", then n rows "word v1 .. vd" in text, or
"word " followed by d little-endian float32 in binary. Text or binary is detected from the bytes.

Every malformation is refused with the file, the row and what is wrong: a bad header, a truncated file, a row
with the wrong number of values, a non-number, a duplicate word. Non-finite values are refused when the space is
normalized, as they are for every source.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dualvec.indexer.source_model import duplicate_words, require_file
from dualvec.kernel.errors import ModelError

_FLOAT = np.dtype("<f4")


def _header(data: bytes, path: Path) -> tuple[int, int, int]:
    end = data.find(b"\n")
    if end < 0:
        raise ModelError(f"{path}: not a word2vec-format file (no header line 'WORDS DIM')")
    parts = data[:end].split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ModelError(f"{path}: not a word2vec-format file (header is {data[:min(end, 60)]!r}, "
                         "expected 'WORDS DIM')")
    n, d = int(parts[0]), int(parts[1])
    if n == 0:
        raise ModelError(f"{path}: the vocabulary is empty (header says 0 words)")
    if d == 0:
        raise ModelError(f"{path}: the header says dimension 0")
    return n, d, end + 1


def detect_binary(path: str | os.PathLike) -> bool:
    """True for the binary format: a text file's body holds only printable characters and white space."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    start = head.find(b"\n") + 1
    body = head[start:]
    return any(b < 0x20 and b not in (0x09, 0x0A, 0x0D) for b in body) or b"\x7f" in body


def read_word2vec(path: str | os.PathLike, *, binary: bool | None = None,
                  what: str = "word2vec file") -> tuple[list[str], np.ndarray]:
    """Read a word2vec-format file. Returns (words, (n, d) float32 rows). binary=None detects the format; ``what``
    names the file in errors (the option it came from). Non-finite values are refused when a space is normalized
    (dualvec.indexer.normalize), as for every source."""
    path = Path(path)
    require_file(path, what)
    if binary is None:
        binary = detect_binary(path)
    data = path.read_bytes()
    n, d, pos = _header(data, path)
    words, rows = (_read_binary if binary else _read_text)(data, pos, n, d, path)
    dups = duplicate_words(words)
    if dups:
        raise ModelError(f"{path}: duplicate words: {', '.join(repr(w) for w in dups[:10])}"
                         f"{' ...' if len(dups) > 10 else ''}")
    return words, rows


def _read_binary(data: bytes, pos: int, n: int, d: int, path: Path) -> tuple[list[str], np.ndarray]:
    rows = np.empty((n, d), dtype=np.float32)
    words: list[str] = []
    width = 4 * d
    size = len(data)
    for i in range(n):
        while pos < size and data[pos] in b"\n\r":  # some writers end rows with a newline
            pos += 1
        space = data.find(b" ", pos, pos + 10_000)
        if space < 0:
            raise ModelError(f"{path}: truncated or malformed at row {i + 1} of {n} (no word found at byte {pos})")
        try:
            word = data[pos:space].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{path}: row {i + 1}: the word is not valid UTF-8") from None
        if space + 1 + width > size:
            raise ModelError(f"{path}: truncated: row {i + 1} of {n} ({word!r}) needs {width} bytes of vector, "
                             f"{size - space - 1} remain")
        rows[i] = np.frombuffer(data, dtype=_FLOAT, count=d, offset=space + 1)
        words.append(word)
        pos = space + 1 + width
    rest = data[pos:].strip()
    if rest:
        raise ModelError(f"{path}: {len(rest)} bytes after the {n} rows the header announces")
    return words, rows


def _read_text(data: bytes, pos: int, n: int, d: int, path: Path) -> tuple[list[str], np.ndarray]:
    try:
        text = data[pos:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not valid UTF-8 text at byte {pos + exc.start}") from None
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < n:
        raise ModelError(f"{path}: truncated: the header announces {n} rows, the file has {len(lines)}")
    if len(lines) > n:
        raise ModelError(f"{path}: the header announces {n} rows, the file has {len(lines)}")
    rows = np.empty((n, d), dtype=np.float32)
    words = []
    for i, line in enumerate(lines):
        parts = line.rstrip().split(" ")
        if len(parts) != d + 1:
            raise ModelError(f"{path}: row {i + 1} ({parts[0]!r}) has {len(parts) - 1} values, expected {d}")
        try:
            rows[i] = np.asarray(parts[1:], dtype=np.float32)
        except ValueError:
            raise ModelError(f"{path}: row {i + 1} ({parts[0]!r}) has a value that is not a number") from None
        words.append(parts[0])
    return words, rows


def write_word2vec(path: str | os.PathLike, words: list[str], rows: np.ndarray, *, binary: bool) -> None:
    """Write (n, d) rows in word2vec format: text with %.9g values (enough digits to read back every float32
    exactly), or binary little-endian float32."""
    rows = np.asarray(rows, dtype=np.float32)
    with open(path, "wb") as fh:
        fh.write(f"{rows.shape[0]} {rows.shape[1]}\n".encode())
        for word, row in zip(words, rows):
            if binary:
                fh.write(word.encode("utf-8") + b" " + row.astype(_FLOAT).tobytes() + b"\n")
            else:
                fh.write((word + " " + " ".join(f"{v:.9g}" for v in row.tolist()) + "\n").encode("utf-8"))
