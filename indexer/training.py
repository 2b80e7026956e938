"""`dualvec train`: gensim Word2Vec with negative sampling, so that the OUT space (syn1neg) exists.

The corpus is a plain text file, one sentence (and, for BM25, one document) per line. It is tokenized with the
chosen tokenizer into a temporary file that gensim reads in `corpus_file` mode (its fastest path, one worker per
core). The tokenizer and the corpus document frequencies are written beside the model (MODEL.dualvec.json) so
that `dualvec build` puts them in the bundle.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dualvec.kernel.bundle import sha256_of
from dualvec.kernel.errors import ModelError
from dualvec.indexer.model_readers import SIDECAR_SUFFIX
from dualvec.kernel.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Options of `dualvec train` (gensim Word2Vec names in brackets)."""

    dim: int = 100            # vector_size
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    sg: bool = False          # skip-gram instead of CBOW
    negative: int = 5         # negative samples; must be > 0 for OUT to exist
    sample: float = 1e-3
    workers: int = 0          # 0 = every core
    seed: int = 1
    tokenizer: str = "simple"
    quiet: bool = False


def tokenize_corpus(corpus: Path, tokenizer: Tokenizer, out_path: Path) -> tuple[int, int, dict[str, int]]:
    """Write the tokenized corpus (one line per input line) and return (lines, tokens, document frequencies)."""
    docfreq: Counter[str] = Counter()
    n_docs = n_tokens = 0
    size = corpus.stat().st_size
    with open(corpus, encoding="utf-8", errors="replace") as src, open(out_path, "w", encoding="utf-8") as dst, \
            tqdm(total=size, unit="B", unit_scale=True, desc="tokenize corpus", leave=False,
                 disable=None) as bar:
        for line in src:
            bar.update(len(line.encode("utf-8", errors="replace")))
            tokens = tokenizer(line)
            if not tokens:
                continue
            n_docs += 1
            n_tokens += len(tokens)
            docfreq.update(set(tokens))
            dst.write(" ".join(tokens) + "\n")
    return n_docs, n_tokens, dict(docfreq)


def train(corpus: str | os.PathLike, output: str | os.PathLike, cfg: TrainConfig, *, force: bool = False) -> Path:
    """Train on ``corpus`` and save the full gensim model (with syn1neg) at ``output``."""
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    corpus, output = Path(corpus), Path(output)
    if not corpus.exists():
        raise ModelError(f"corpus {corpus}: no such file")
    if corpus.is_dir():
        raise ModelError(f"corpus {corpus}: is a directory, expected a text file with one sentence per line")
    if cfg.negative <= 0:
        raise ModelError("--negative must be > 0: without negative sampling there is no OUT space (syn1neg)")
    if output.exists() and not force:
        raise ModelError(f"{output} already exists; pass --force to replace it")
    tokenizer = Tokenizer(cfg.tokenizer)
    workers = cfg.workers or os.cpu_count() or 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dualvec-train-") as tmp:
        tokenized = Path(tmp) / "corpus.txt"
        n_docs, n_tokens, docfreq = tokenize_corpus(corpus, tokenizer, tokenized)
        if n_tokens == 0:
            raise ModelError(f"corpus {corpus}: no tokens found")

        class Progress(CallbackAny2Vec):
            def __init__(self) -> None:
                self.bar = tqdm(total=cfg.epochs, desc="train word2vec", unit="epoch", disable=cfg.quiet or None)

            def on_epoch_end(self, model) -> None:
                self.bar.update(1)

            def on_train_end(self, model) -> None:
                self.bar.close()

        model = Word2Vec(corpus_file=str(tokenized), vector_size=cfg.dim, window=cfg.window,
                         min_count=cfg.min_count, epochs=cfg.epochs, sg=int(cfg.sg), hs=0, negative=cfg.negative,
                         sample=cfg.sample, workers=workers, seed=cfg.seed, callbacks=[Progress()])
    if len(model.wv) == 0:
        raise ModelError(f"corpus {corpus}: no word occurs --min-count {cfg.min_count} times")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    model.save(str(partial))
    vocab = set(model.wv.key_to_index)
    sidecar = {"tokenizer": tokenizer.to_dict(), "corpus": str(corpus.absolute()),
               "corpus_sha256": sha256_of(corpus), "n_documents": n_docs, "n_tokens": n_tokens,
               "train": asdict(cfg) | {"workers": workers}, "seconds": round(time.perf_counter() - started, 2),
               "docfreq": {t: df for t, df in docfreq.items() if t in vocab}}
    # gensim may write large arrays beside the model (MODEL.partial.wv.vectors.npy ...): rename them too
    for extra in sorted(partial.parent.glob(partial.name + ".*")):
        os.replace(extra, output.with_name(output.name + extra.name[len(partial.name):]))
    os.replace(partial, output)
    output.with_name(output.name + SIDECAR_SUFFIX).write_text(json.dumps(sidecar), encoding="utf-8")
    log.info("trained %d words x %d dims in %.1f s -> %s", len(model.wv), cfg.dim, sidecar["seconds"], output)
    return output
