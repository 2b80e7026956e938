"""`dualvec train`: gensim Word2Vec with negative sampling, so that the OUT space (syn1neg) exists.

The corpus is a plain text file, one sentence (and, for BM25, one document) per line. It is tokenized with the
chosen tokenizer into a temporary file that gensim reads in `corpus_file` mode (its fastest path, one worker per
core). The tokenizer and the corpus document frequencies are written beside the model (MODEL.dualvec.json) so
that `dualvec build` puts them in the bundle.

A corpus too small for the settings gives vectors that all point one way (every IN->IN cosine near 1, every
IN->OUT near -1): ``corpus_warning`` says so before training, from how often training sees a vocabulary word
(MIN_SIGHTINGS). Progress shows as a bar on a terminal, and as a log line every PROGRESS_SECONDS otherwise.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dualvec.kernel.bundle import sha256_of
from dualvec.kernel.errors import ModelError
from dualvec.indexer.model_readers import SIDECAR_SUFFIX
from dualvec.kernel.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# How often training must see a vocabulary word, on average (epochs x tokens of vocabulary words / vocabulary
# size), for the vectors not to come out all alike; by algorithm (sg). Measured at 100 and 300 dimensions (which
# made no difference) on gensim's lee_background.cor (51k tokens of 1,831 words at min_count 5; of 4,140 at
# min_count 2), on its first half, and on the demo's corpus (471k tokens, 9,819 words): below these the mean
# cosine of two random words' IN vectors stays above about 0.5 (0.99 at 5 epochs of CBOW on lee_background.cor)
# and the Lee document-similarity correlation of averaged vectors is well below the 0.27-0.33 reached above them.
MIN_SIGHTINGS = {True: 400, False: 1000}  # skip-gram, CBOW
ALGORITHM = {True: "skip-gram", False: "CBOW"}
PROGRESS_SECONDS = 30.0  # between progress log lines when stderr is no terminal


@dataclass(frozen=True)
class TrainConfig:
    """Options of `dualvec train` (gensim Word2Vec names in brackets)."""

    dim: int = 100            # vector_size
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    sg: bool = True           # skip-gram; False: CBOW (faster per epoch, needs 2.5x the sightings: MIN_SIGHTINGS)
    negative: int = 5         # negative samples; must be > 0 for OUT to exist
    sample: float = 1e-3
    workers: int = 0          # 0 = every core
    seed: int = 1
    tokenizer: str = "simple"
    quiet: bool = False


def corpus_warning(tokens: int, words: int, cfg: TrainConfig) -> str | None:
    """One line saying the corpus is too small for ``cfg`` and which settings would do, or None when it is not.
    tokens: occurrences of vocabulary words in the corpus; words: vocabulary size."""
    sightings = cfg.epochs * tokens / words
    need = MIN_SIGHTINGS[cfg.sg]
    if sightings >= need:
        return None
    epochs = math.ceil(need * words / tokens)
    advice = f"--epochs {epochs} or more"
    if not cfg.sg:
        advice += f" (or skip-gram, without --cbow: --epochs {math.ceil(MIN_SIGHTINGS[True] * words / tokens)})"
    return (f"the corpus is small for these settings: training sees each of its {words:,} words {sightings:.0f} "
            f"times on average ({tokens:,} tokens x {cfg.epochs} epochs), where {ALGORITHM[cfg.sg]} needs about "
            f"{need} for vectors that are not all alike; train with {advice}, or on a larger corpus")


def progress_mode(quiet: bool) -> str:
    """'off' (quiet), 'bar' (tqdm, stderr is a terminal) or 'log' (log lines, e.g. into a file or a CI job)."""
    if quiet:
        return "off"
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


class ProgressLog:
    """Logs ``status()`` every ``interval`` seconds from a daemon thread while the ``with`` block runs."""

    def __init__(self, status: Callable[[], str], interval: float, enabled: bool = True):
        self.status, self.interval, self.enabled = status, interval, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dualvec-progress", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info("%s", self.status())

    def __enter__(self) -> "ProgressLog":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def tokenize_corpus(corpus: Path, tokenizer: Tokenizer, out_path: Path,
                    progress: str = "bar") -> tuple[int, int, dict[str, int]]:
    """Write the tokenized corpus (one line per input line) and return (lines, tokens, document frequencies).
    progress: as progress_mode returns."""
    docfreq: Counter[str] = Counter()
    n_docs = n_tokens = 0
    size = corpus.stat().st_size
    done = [0]
    with open(corpus, encoding="utf-8", errors="replace") as src, open(out_path, "w", encoding="utf-8") as dst, \
            tqdm(total=size, unit="B", unit_scale=True, desc="tokenize corpus", leave=False,
                 disable=progress != "bar") as bar, \
            ProgressLog(lambda: f"tokenize corpus: {done[0] / max(size, 1):.0%} of {size:,} bytes",
                        PROGRESS_SECONDS, enabled=progress == "log"):
        for line in src:
            n_bytes = len(line.encode("utf-8", errors="replace"))
            done[0] += n_bytes
            bar.update(n_bytes)
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
    progress = progress_mode(cfg.quiet)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dualvec-train-") as tmp:
        tokenized = Path(tmp) / "corpus.txt"
        n_docs, n_tokens, docfreq = tokenize_corpus(corpus, tokenizer, tokenized, progress)
        if n_tokens == 0:
            raise ModelError(f"corpus {corpus}: no tokens found")
        model = Word2Vec(vector_size=cfg.dim, window=cfg.window, min_count=cfg.min_count, epochs=cfg.epochs,
                         sg=int(cfg.sg), hs=0, negative=cfg.negative, sample=cfg.sample, workers=workers,
                         seed=cfg.seed)
        model.build_vocab(corpus_file=str(tokenized))
        if len(model.wv) == 0:
            raise ModelError(f"corpus {corpus}: no word occurs --min-count {cfg.min_count} times")
        in_vocabulary = int(sum(model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key))
        warning = corpus_warning(in_vocabulary, len(model.wv), cfg)
        if warning:
            log.warning("%s", warning)
        log.info("training %s: %d epochs over %s tokens of %s words, %d dims", ALGORITHM[cfg.sg], cfg.epochs,
                 f"{in_vocabulary:,}", f"{len(model.wv):,}", cfg.dim)

        class Progress(CallbackAny2Vec):
            """Epochs done: a bar on a terminal, else a log line every PROGRESS_SECONDS (ProgressLog)."""

            def __init__(self) -> None:
                self.bar = tqdm(total=cfg.epochs, desc="train word2vec", unit="epoch", disable=progress != "bar")
                self.done = 0
                self.began = time.perf_counter()

            def status(self) -> str:
                elapsed = time.perf_counter() - self.began
                line = (f"train word2vec: epoch {min(self.done + 1, cfg.epochs)} of {cfg.epochs}, "
                        f"{_duration(elapsed)} elapsed")
                if self.done:
                    line += f", about {_duration(elapsed / self.done * (cfg.epochs - self.done))} left"
                return line

            def on_epoch_end(self, model) -> None:
                self.done += 1
                self.bar.update(1)

            def on_train_end(self, model) -> None:
                self.bar.close()

        callback = Progress()
        with ProgressLog(callback.status, PROGRESS_SECONDS, enabled=progress == "log"):
            model.train(corpus_file=str(tokenized), total_examples=model.corpus_count,
                        total_words=model.corpus_total_words, epochs=model.epochs,
                        start_alpha=model.alpha, end_alpha=model.min_alpha, callbacks=[callback])
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
