"""The bundle format: the one writer and the one reader, used by the indexer and the server alike.

A bundle is a directory::

    manifest.json          what is inside (format, version, source, spaces, indexes, tuned pairs, checksums)
    vocab.tsv              one "word<TAB>count" line per row, most frequent first
    in.vectors.npy         (n, d) float32 L2-normalized IN rows (memory-mappable)
    in.norms.npy           (n,) float32 norms of the model's IN rows
    in.index.faiss         the IN space's FAISS index (absent for exact "flat" spaces)
    out.*                  the same for OUT (absent in an --in-only bundle)
    hubs.<pair>.npy        (h,) int64 hub rows of a query pair, best first (see dualvec.kernel.ann)
    answers.<pair>.ids.npy (r, w) int32 and answers.<pair>.scores.npy (r, w) float32: optional, the pair's answers
                           to one-word queries for the first r words (see dualvec.kernel.answer_table)
    docfreq.tsv            optional: "token<TAB>document frequency" of the training corpus, for BM25

The writer fills a hidden directory beside the target and renames it into place last: a failed or interrupted
build leaves nothing at the target. The reader refuses an unknown format version and files whose size or sha256
differ from the manifest, with a sentence that says which.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np

from dualvec import __version__
from dualvec.kernel.ann import SearchParams, SpaceIndex
from dualvec.kernel.answer_table import AnswerTable
from dualvec.kernel.errors import BundleError
from dualvec.kernel.manifest import (FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, FileEntry, Manifest,
                                     canonical_sha256)
from dualvec.kernel.spaces import Space, pair_name
MANIFEST = "manifest.json"
VOCAB = "vocab.tsv"
DOCFREQ = "docfreq.tsv"


def vectors_file(space: Space) -> str:
    return f"{space.value}.vectors.npy"


def norms_file(space: Space) -> str:
    return f"{space.value}.norms.npy"


def index_file(space: Space) -> str:
    return f"{space.value}.index.faiss"


def hubs_file(pair: str) -> str:
    return f"hubs.{pair}.npy"


def answer_files(pair: str) -> tuple[str, str]:
    """The file names of a pair's answer table: (ids, scores)."""
    return f"answers.{pair}.ids.npy", f"answers.{pair}.scores.npy"


def sha256_of(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------- writer

def current_umask() -> int:
    """The process's umask: read from /proc/self/status where Linux tells it, else set and put back at once (two
    calls, during which a file another thread creates would get 022)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class BundleWriter:
    """Write a bundle atomically. Use as a context manager::

        with BundleWriter(target, force=False) as w:
            w.write_vocab(words, counts)
            w.write_array("in.vectors.npy", unit_rows)
            ...
            w.commit(manifest)

    Leaving the block without commit() (an exception, Ctrl-C) removes everything written.
    """

    def __init__(self, target: str | os.PathLike, *, force: bool = False):
        self.target = Path(target).absolute()
        if self.target.exists() and not force:
            raise BundleError(f"{self.target} already exists; pass --force to replace it")
        if self.target.exists() and (not self.target.is_dir() or (
                not (self.target / MANIFEST).exists() and any(self.target.iterdir()))):
            raise BundleError(f"{self.target} exists and is not a dualvec bundle; refusing to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        self.files: dict[str, FileEntry] = {}
        self.manifest: Manifest | None = None  # the full manifest, once committed
        self._committed = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _record(self, name: str) -> None:
        path = self.tmp / name
        self.files[name] = FileEntry(path.stat().st_size, sha256_of(path))

    def write_vocab(self, words: list[str], counts: np.ndarray) -> None:
        """words: n strings without tab or newline; counts: (n,) int64."""
        with open(self.tmp / VOCAB, "w", encoding="utf-8", newline="\n") as fh:
            for word, count in zip(words, counts.tolist()):
                fh.write(f"{word}\t{count}\n")
        self._record(VOCAB)

    def write_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp / name, array, allow_pickle=False)
        self._record(name)

    def write_index(self, name: str, index: faiss.Index) -> None:
        faiss.write_index(index, str(self.tmp / name))
        self._record(name)

    def write_docfreq(self, n_documents: int, frequencies: dict[str, int]) -> None:
        with open(self.tmp / DOCFREQ, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(f"\t{n_documents}\n")  # first line: empty token, number of documents
            for token, df in sorted(frequencies.items()):
                fh.write(f"{token}\t{df}\n")
        self._record(DOCFREQ)

    def commit(self, manifest: Manifest) -> Path:
        """Complete the manifest (format, version, creation time, every file's checksum, content_id), write it, and
        move the bundle into place."""
        full = replace(manifest, format=FORMAT_NAME, format_version=FORMAT_VERSION, dualvec_version=__version__,
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), files=dict(self.files)).sealed()
        self.manifest = full
        with open(self.tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(full.to_dict(), fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        # mkdtemp made the directory 0700, for this user alone; a bundle is for whoever the umask lets read it (a
        # server running as another user), as its files are
        os.chmod(self.tmp, 0o777 & ~current_umask())
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target


# ----------------------------------------------------------------------------------------------------------- reader

@dataclass
class Vocabulary:
    """Words in row order (most frequent first) with their corpus counts."""

    words: list[str]
    counts: np.ndarray  # (n,) int64
    index: dict[str, int] = field(repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def get(self, word: str) -> int | None:
        return self.index.get(word)


@dataclass
class PairTuning:
    """Tuned query-time parameters and measured recall@10 of one query pair."""

    params: SearchParams
    recall_uniform: float | None = None
    recall_frequency: float | None = None
    tail_params: SearchParams | None = None  # one-word queries of words past the pair's answer table


UNTUNED = PairTuning(SearchParams())


@dataclass
class Bundle:
    """A bundle read from disk: vocabulary, per-space unit vectors, norms and searchable indexes."""

    path: Path
    manifest: Manifest
    vocab: Vocabulary
    vectors: dict[Space, np.ndarray]   # (n, d) float32 unit rows, memory-mapped
    norms: dict[Space, np.ndarray]     # (n,) float32
    spaces: dict[Space, SpaceIndex]
    pairs: dict[str, PairTuning]
    docfreq: tuple[int, dict[str, int]] | None = None
    tables: dict[str, AnswerTable] = field(default_factory=dict)  # answer tables by pair name

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def has_space(self, space: Space) -> bool:
        return space in self.vectors

    def tuning(self, query: Space, target: Space) -> PairTuning:
        return self.pair_tuning(pair_name(query, target))

    def pair_tuning(self, pair: str) -> PairTuning:
        """The tuning recorded for a pair ("in-out"), or the index's defaults when none was."""
        return self.pairs.get(pair, UNTUNED)

    def past_table(self, pair: str, word: int | None) -> bool:
        """Whether a one-word query for vocabulary row ``word`` is searched with the pair's tail parameters: the
        word lies past the pair's answer table, and the build tuned the index for such words."""
        if word is None:
            return False
        table = self.tables.get(pair)
        return table is not None and word >= table.rows and self.pair_tuning(pair).tail_params is not None

    def search_params(self, pair: str, tail: bool = False) -> SearchParams:
        """The pair's search parameters: for words past its answer table (tail, see past_table), or else."""
        tuning = self.pair_tuning(pair)
        return tuning.tail_params if tail and tuning.tail_params is not None else tuning.params


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a bundle's manifest (format, version, fields, and from version 2 its own content_id) without
    loading anything else. Raises BundleError with a sentence naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle directory (expected a directory with {MANIFEST})")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise BundleError(f"{path} is not a dualvec bundle: {MANIFEST} is missing")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise BundleError(f"{mpath} is not a dualvec bundle manifest (format is {found!r})")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{path} has bundle format version {version}; this dualvec ({__version__}) reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}: rebuild it with `dualvec build`")
    if version >= 2:
        stored = raw.get("content_id")
        if not stored:
            raise BundleError(f"{mpath} lacks the field 'content_id' that format version {version} requires")
        if canonical_sha256({k: v for k, v in raw.items() if k != "content_id"}) != stored:
            raise BundleError(f"bundle {path} is damaged: {MANIFEST} does not match its content_id")
    return Manifest.from_dict(raw, str(mpath))


def verify_files(path: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Check every file the manifest lists: present, of the recorded size, and (checksums=True) of its sha256."""
    for name, meta in manifest.files.items():
        fpath = path / name
        if not fpath.exists():
            raise BundleError(f"bundle {path} is incomplete: {name} is missing")
        size = fpath.stat().st_size
        if size != meta.bytes:
            raise BundleError(f"bundle {path} is damaged: {name} has {size} bytes, the manifest says {meta.bytes}")
        if checksums and sha256_of(fpath) != meta.sha256:
            raise BundleError(f"bundle {path} is damaged: {name} fails its sha256 checksum")


def read_vocab(path: Path) -> Vocabulary:
    words: list[str] = []
    counts: list[int] = []
    try:
        with open(path, encoding="utf-8", newline="\n") as fh:
            for lineno, line in enumerate(fh, 1):
                word, sep, count = line.rstrip("\n").rpartition("\t")
                if not sep or not count.isdigit():
                    raise BundleError(f"{path}:{lineno}: expected 'word<TAB>count'")
                words.append(word)
                counts.append(int(count))
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not valid UTF-8") from None
    return Vocabulary(words, np.asarray(counts, dtype=np.int64))


def read_bundle(path: str | os.PathLike, *, checksums: bool = True, mmap: bool = True) -> Bundle:
    """Load a bundle. Vectors are memory-mapped (mmap=True); IVF and flat indexes are mapped too where FAISS
    can. Readying the memory for serving (prefaulting, huge pages) is the server's business
    (dualvec.server.host.prefault). Raises BundleError naming what is wrong (missing, wrong version, damaged)."""
    path = Path(path).absolute()
    manifest = read_manifest(path)
    verify_files(path, manifest, checksums=checksums)
    vocab = read_vocab(path / VOCAB)
    n, dim = manifest.vocab_size, manifest.dim
    if len(vocab) != n:
        raise BundleError(f"bundle {path}: vocab.tsv has {len(vocab)} words, the manifest says {n}")
    vectors: dict[Space, np.ndarray] = {}
    norms: dict[Space, np.ndarray] = {}
    spaces: dict[Space, SpaceIndex] = {}
    for name in manifest.spaces:
        space = Space(name)
        vec = np.load(path / vectors_file(space), mmap_mode="r" if mmap else None, allow_pickle=False)
        if vec.shape != (n, dim) or vec.dtype != np.float32:
            raise BundleError(f"bundle {path}: {vectors_file(space)} is {vec.shape} {vec.dtype}, expected "
                              f"({n}, {dim}) float32")
        # a plain ndarray view of the map: row gathers skip np.memmap's per-result bookkeeping (2x faster)
        vectors[space] = np.asarray(vec)
        norms[space] = np.load(path / norms_file(space), allow_pickle=False)
        spec = manifest.indexes[name].spec
        index = None
        if spec.kind != "flat":
            ipath = str(path / index_file(space))
            try:
                index = faiss.read_index(ipath, faiss.IO_FLAG_MMAP if mmap else 0)
            except RuntimeError:
                index = faiss.read_index(ipath)  # index types FAISS cannot map are read into memory
            _no_prefetch_threads(index)
            expected = max(dim, spec.index_dim)
            if index.d != expected:
                raise BundleError(f"bundle {path}: {index_file(space)} works in {index.d} dimensions, expected "
                                  f"{expected} (the manifest's dim {dim}, index_dim {spec.index_dim})")
        spaces[space] = SpaceIndex(vectors[space], index)
    pairs: dict[str, PairTuning] = {}
    for pname, entry in manifest.pairs.items():
        pairs[pname] = PairTuning(entry.params, entry.recall_uniform, entry.recall_frequency, entry.tail_params)
        target = Space(pname.split("-")[1])
        hub_name = hubs_file(pname)
        if hub_name in manifest.files and target in spaces:
            spaces[target].hubs.set(pname, np.load(path / hub_name, allow_pickle=False))
    tables: dict[str, AnswerTable] = {}
    for pname, entry in manifest.pairs.items():
        ids_name, scores_name = answer_files(pname)
        if ids_name in manifest.files and scores_name in manifest.files:
            table = AnswerTable(np.load(path / ids_name, mmap_mode="r" if mmap else None, allow_pickle=False),
                                np.load(path / scores_name, mmap_mode="r" if mmap else None, allow_pickle=False))
            if table.rows != entry.answer_rows or table.rows > n:
                raise BundleError(f"bundle {path}: {ids_name} answers {table.rows:,} words, the manifest says "
                                  f"{entry.answer_rows:,} (of {n:,})")
            tables[pname] = table
    docfreq = None
    if DOCFREQ in manifest.files:
        docfreq = read_docfreq(path / DOCFREQ)
    return Bundle(path, manifest, vocab, vectors, norms, spaces, pairs, docfreq, tables)


def _no_prefetch_threads(index: faiss.Index) -> None:
    """A memory-mapped IVF index gets OnDiskInvertedLists, which start ``prefetch_nthread`` (32) threads on every
    search call: about 2 ms of fixed cost per query, 10 to 50 times the search itself. The page cache does the
    prefetching for us, so turn them off."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    if hasattr(invlists, "prefetch_nthread"):
        invlists.prefetch_nthread = 0


def read_docfreq(path: Path) -> tuple[int, dict[str, int]]:
    freqs: dict[str, int] = {}
    n_docs = 0
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh):
            token, _, df = line.rstrip("\n").rpartition("\t")
            if lineno == 0:
                n_docs = int(df)
            else:
                freqs[token] = int(df)
    return n_docs, freqs


def bundle_size(path: str | os.PathLike) -> int:
    """Bytes on disk of every file of the bundle."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
