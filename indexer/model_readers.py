"""Read a model's IN and OUT matrices from what users have: a gensim full model (Word2Vec or FastText saved with
``save()``), a fastText ``.bin``, or a pair of word2vec-format files.

OUT is the output matrix of negative sampling (``syn1neg``), row-aligned with the vocabulary. A model trained
with hierarchical softmax only has ``syn1``, whose rows are Huffman-tree inner nodes, not words: it is refused,
never served as OUT. A source with IN only is refused unless the caller asks for an IN-only bundle.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np

from dualvec.kernel.bundle import sha256_of
from dualvec.kernel.errors import ModelError
from dualvec.indexer.source_model import SourceModel, require_file
from dualvec.indexer.word2vec_format import read_word2vec

log = logging.getLogger(__name__)

FASTTEXT_MAGIC = 793712314  # first int32 of a fastText .bin
SIDECAR_SUFFIX = ".dualvec.json"  # written by `dualvec train` next to the model: tokenizer, corpus statistics


def is_fasttext_bin(path: Path) -> bool:
    """True for a fastText .bin: the magic number, or (fastText before 0.2, which wrote no magic, e.g. gensim's
    lee_fasttext.bin) a plausible old header: dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn,
    maxn, lrUpdateRate as int32. A gensim pickle starts with 0x80 and a text file with digits: neither fits."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if len(head) >= 4 and int.from_bytes(head[:4], "little", signed=True) == FASTTEXT_MAGIC:
        return True
    if len(head) < 48:
        return False
    dim, ws, epoch, min_count, neg, ngrams, loss, model, bucket, minn, maxn, lr_rate = struct.unpack("<12i", head)
    return (0 < dim <= 100_000 and 0 < ws <= 10_000 and 0 < epoch <= 100_000 and min_count >= 0 and neg >= 0
            and 0 < ngrams <= 100 and 1 <= loss <= 4 and 1 <= model <= 3 and bucket >= 0 and 0 <= minn <= maxn <= 100
            and lr_rate > 0)


def read_model(path: str | os.PathLike, *, in_only: bool = False) -> SourceModel:
    """Read a gensim full model or a fastText .bin (detected from its first bytes)."""
    path = Path(path)
    require_file(path, "model")
    if is_fasttext_bin(path):
        return read_fasttext_bin(path, in_only=in_only)
    return read_gensim_model(path, in_only=in_only)


def read_gensim_model(path: Path, *, in_only: bool = False) -> SourceModel:
    from gensim.models import KeyedVectors, Word2Vec
    from gensim.utils import SaveLoad

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SaveLoad.load(str(path))
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError,
            TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ModelError(f"model {path}: not a gensim model saved with save() and not a fastText .bin "
                         f"({type(exc).__name__}: {str(exc)[:120]}); for word2vec-format files use "
                         "--in-vectors/--out-vectors") from None
    except FileNotFoundError as exc:
        raise ModelError(f"model {path}: a file it refers to is missing ({exc.filename}); gensim stores large "
                         "arrays beside the model (*.npy): keep them together") from None
    source = {"kind": "gensim", "path": str(path.absolute()), "sha256": sha256_of(path)}
    if isinstance(model, KeyedVectors):
        return _in_only_source(model, source | {"class": "KeyedVectors"}, in_only, path,
                               "saved KeyedVectors hold IN vectors only")
    if not isinstance(model, Word2Vec):  # FastText is a Word2Vec subclass
        raise ModelError(f"model {path}: a gensim {type(model).__name__}, not a Word2Vec or FastText model")
    source["class"] = type(model).__name__
    return _from_word2vec(model, source, in_only, path)


def read_fasttext_bin(path: Path, *, in_only: bool = False) -> SourceModel:
    from gensim.models.fasttext import load_facebook_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_facebook_model(str(path))
    except NotImplementedError as exc:
        raise ModelError(f"fastText model {path}: {exc} (its output matrix holds labels, not words)") from None
    except Exception as exc:  # truncated or malformed binaries raise struct/ValueError/EOF/assertion errors
        raise ModelError(f"fastText model {path}: cannot be read, the file is truncated or malformed "
                         f"({type(exc).__name__}{': ' + str(exc)[:120] if str(exc) else ''})") from None
    source = {"kind": "fasttext-bin", "path": str(path.absolute()), "sha256": sha256_of(path),
              "class": "FastText"}
    if getattr(model, "hs", 0):
        # fastText -loss hs writes its default neg (5) in the header too, so gensim sets both syn1 and syn1neg to
        # the output matrix: its rows are Huffman-tree nodes, not words, whatever `negative` says.
        if in_only:
            return _source(model, None, source, path)
        raise ModelError(
            f"fastText model {path} was trained with hierarchical softmax (-loss hs): its output matrix is indexed "
            "by Huffman-tree nodes (syn1), not words, so there is no OUT vector per word; retrain with negative "
            "sampling (-loss ns), or pass --in-only to index IN alone")
    syn1neg = getattr(model, "syn1neg", None)
    if syn1neg is not None and syn1neg.size and not np.any(syn1neg):
        if in_only:
            return _source(model, None, source, path)
        raise ModelError(f"fastText model {path}: its output matrix is all zeros (some published .bin files "
                         "ship without a trained output matrix), so it has no OUT space; pass --in-only to "
                         "index IN alone")
    return _from_word2vec(model, source, in_only, path)


def _from_word2vec(model, source: dict, in_only: bool, path: Path) -> SourceModel:
    if len(model.wv) == 0:
        raise ModelError(f"model {path}: the vocabulary is empty")
    negative = int(getattr(model, "negative", 0) or 0)
    hs = int(getattr(model, "hs", 0) or 0)
    source |= {"negative": negative, "hs": hs, "sg": int(getattr(model, "sg", 0) or 0),
               "window": int(getattr(model, "window", 0) or 0)}
    syn1neg = getattr(model, "syn1neg", None)
    if negative <= 0 or syn1neg is None or syn1neg.size == 0:
        if in_only:
            return _source(model, None, source, path)
        if hs:
            raise ModelError(
                f"model {path} was trained with hierarchical softmax only (hs=1, negative=0): it has syn1, whose "
                "rows are Huffman-tree nodes, not words, so there is no OUT vector per word; retrain with "
                "negative sampling (negative > 0, e.g. `dualvec train`), or pass --in-only to index IN alone")
        raise ModelError(f"model {path} has no output matrix (syn1neg): train with negative sampling "
                         "(negative > 0), or pass --in-only to index IN alone")
    if syn1neg.shape != model.wv.vectors.shape:
        raise ModelError(f"model {path}: syn1neg is {syn1neg.shape} but the IN vectors are "
                         f"{model.wv.vectors.shape}; the model is inconsistent")
    return _source(model, syn1neg, source, path)


def _in_only_source(kv, source: dict, in_only: bool, path: Path, why: str) -> SourceModel:
    if not in_only:
        raise ModelError(f"model {path}: {why}, no OUT space (syn1neg); pass --in-only to index IN alone, or "
                         "give the full model saved with model.save()")
    return _source_from_kv(kv, None, source, path)


def _source(model, out: np.ndarray | None, source: dict, path: Path) -> SourceModel:
    return _source_from_kv(model.wv, out, source, path)


def _source_from_kv(kv, out, source: dict, path: Path) -> SourceModel:
    words = list(kv.index_to_key)
    if not words:
        raise ModelError(f"model {path}: the vocabulary is empty")
    counts = np.zeros(len(words), dtype=np.int64)
    if "count" in getattr(kv, "expandos", {}):
        counts[:] = np.asarray(kv.expandos["count"], dtype=np.int64)[: len(words)]
    sidecar = _read_sidecar(path)
    return SourceModel(words, counts, np.asarray(kv.vectors, dtype=np.float32),
                       None if out is None else np.asarray(out, dtype=np.float32), source,
                       tokenizer=sidecar.get("tokenizer"),
                       docfreq=(sidecar["n_documents"], sidecar["docfreq"]) if "docfreq" in sidecar else None)


def _read_sidecar(path: Path) -> dict:
    side = path.with_name(path.name + SIDECAR_SUFFIX)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{side}: not valid JSON ({exc})") from None


def read_vector_pair(in_path: str | os.PathLike, out_path: str | os.PathLike | None, *,
                     in_only: bool = False) -> SourceModel:
    """Read IN and OUT from two word2vec-format files (text or binary each, detected). They must hold the same
    words in the same order with the same dimension. Rows are taken as most frequent first; counts are unknown."""
    in_path = Path(in_path)
    if out_path is None and not in_only:
        raise ModelError("--out-vectors is missing: give the OUT (syn1neg) file too, or pass --in-only")
    words, in_rows = read_word2vec(in_path, what="--in-vectors")
    out_rows = None
    source = {"kind": "word2vec-pair", "path": str(in_path.absolute()), "sha256": sha256_of(in_path)}
    if out_path is not None:
        out_path = Path(out_path)
        out_words, out_rows = read_word2vec(out_path, what="--out-vectors")
        source |= {"out_path": str(out_path.absolute()), "out_sha256": sha256_of(out_path)}
        if len(out_words) != len(words):
            raise ModelError(f"IN has {len(words)} words but OUT has {len(out_words)} ({in_path} vs {out_path})")
        if out_rows.shape[1] != in_rows.shape[1]:
            raise ModelError(f"IN has dimension {in_rows.shape[1]} but OUT has {out_rows.shape[1]} "
                             f"({in_path} vs {out_path})")
        if out_words != words:
            in_set = set(words)
            missing = [w for w in out_words if w not in in_set]
            if missing:
                raise ModelError(f"OUT has words that IN lacks: {', '.join(map(repr, missing[:10]))}")
            row = next(i for i, (a, b) in enumerate(zip(words, out_words)) if a != b)
            raise ModelError(f"IN and OUT list the same words in a different order: row {row + 1} is "
                             f"{words[row]!r} in IN but {out_words[row]!r} in OUT; rows must align")
    return SourceModel(words, np.zeros(len(words), dtype=np.int64), in_rows, out_rows, source)
