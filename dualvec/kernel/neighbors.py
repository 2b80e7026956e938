"""The neighbour table: the top-k neighbours of many words (the whole vocabulary, or a word list) in one or more
space pairs, one row per (pair, word, rank) with the neighbour and its cosine; what `dualvec neighbors` writes.

Words are searched in blocks of ``batch`` queries, one FAISS call per block at the pair's tuned parameters
(``SpaceIndex.search`` with the pair's name, so its hub rows are merged in as the server merges them), or
exhaustively (``exact``). Each query's own word is left out, as Search leaves it out by default, and a row that an
approximate index answered short is answered exactly, as the engine does.

Resumable, with flat memory: each finished block is appended to ``OUT.partial`` (a spool of Arrow IPC streams
holding vocabulary ids, one stream per block); every CHECKPOINT_SECONDS, and when a run stops by an exception or
a signal, the spool is synced and the end of each block in it recorded in ``OUT.partial.json`` (written
atomically). The same job started again checks that the sidecar describes it (the bundle's manifest, pairs, k,
batch, the query words), cuts the spool back to the last recorded block and goes on from there. When every block is done the spool is rendered block by block to
the output (Parquet row groups, or TSV), written beside it under a temporary name and renamed into place, and the
spool and sidecar are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np

from dualvec.kernel.bundle import Bundle
from dualvec.kernel.errors import DualvecError, InvalidArgument
from dualvec.kernel.spaces import Space, pair_name, parse_pair
from dualvec.kernel.topk import drop_query_ids
from dualvec.kernel.truth import exact_search

COLUMNS = ("pair", "word", "rank", "neighbor", "cosine")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".tsv": "tsv"}
PROGRESS_FORMAT = "dualvec-neighbors-progress"
PROGRESS_VERSION = 1

# Queries per FAISS call and per spooled block. Re-scoring an SQ8 graph's candidates gathers (batch, 4 (k+1), d)
# float32 rows: about 110 MB at 2,048 x 44 x 300, so larger blocks buy little speed for much memory.
DEFAULT_BATCH = 2048
MAX_K = 1000
# An exhaustive table costs queries x vocabulary x dim multiply-adds. Two cores sustain about 20 G of them a
# second in faiss.knn (measured here at 100k x 300 with 4,096 queries), so 200,000 words searched for every one
# of 200,000 words at 300 dims is 1.2e13, about 10 minutes a pair; 1M x 1M would be over 4 hours.
EXACT_MAX_WORDS = 200_000
# Seconds between checkpoints: the spool is synced to disk and the sidecar rewritten this often (and when a run
# stops by an exception or a signal), so a crash or a power cut loses at most this much work, and no block pays
# for an fsync (up to 20 ms each on a busy disk, against 80-170 ms of search).
CHECKPOINT_SECONDS = 5.0
# Rows gathered from the spool into one Parquet row group (each a few MB: memory stays flat).
PARQUET_ROW_GROUP_ROWS = 1 << 18


class NeighborsError(DualvecError):
    """A neighbour job that cannot start or go on (the message names the flag, the file or the limit)."""


@dataclass(frozen=True)
class NeighborsJob:
    """What to compute. pairs: names like "in-out"; batch: queries per FAISS call and per spooled block;
    threads: FAISS threads (0 = every CPU this process may run on)."""

    pairs: tuple[str, ...]
    k: int = 10
    exact: bool = False
    batch: int = DEFAULT_BATCH
    threads: int = 0


@dataclass
class RunReport:
    """What a run did. seconds_by_pair: time spent searching and spooling each pair (this run only)."""

    output: Path
    rows: int
    queries: int
    pairs: tuple[str, ...]
    resumed_blocks: int
    blocks: int
    search_seconds: float
    render_seconds: float
    queries_by_pair: dict[str, int] = field(default_factory=dict)
    seconds_by_pair: dict[str, float] = field(default_factory=dict)
    # with measure: per pair, [queries, table seconds, bare search seconds, bare FAISS seconds, table CPU seconds,
    # bare search CPU seconds] of the measured
    # blocks, each block timed both ways one after the other (in turn which first), so that both see the same load
    measured: dict[str, list[float]] = field(default_factory=dict)
    measure_seconds: float = 0.0  # spent on the bare calls (left out of search_seconds)

    @property
    def seconds(self) -> float:
        return self.search_seconds + self.render_seconds


# ------------------------------------------------------------------------------------------------------ inputs

def output_format(path: str | os.PathLike) -> str:
    """"parquet" or "tsv" from the output's extension; raises InvalidArgument naming -o otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidArgument("-o", f"{Path(path).name!r} has no known extension: use .parquet (or .pq) or .tsv")
    return FORMATS[suffix]


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_pairs(bundle: Bundle, names: Sequence[str]) -> tuple[str, ...]:
    """Pair names as given ("in-out", "IN->OUT", or "all" for every pair the bundle has), checked against the
    bundle's spaces; in order, repeats dropped."""
    out: list[str] = []
    for name in names:
        if name.lower() == "all":
            wanted = [pair_name(q, t) for q in Space for t in Space if bundle.has_space(q) and bundle.has_space(t)]
        else:
            try:
                q, t = parse_pair(name)
            except ValueError as exc:
                raise InvalidArgument("--pair", str(exc)) from None
            for space in (q, t):
                if not bundle.has_space(space):
                    raise InvalidArgument("--pair", f"{name}: this bundle has no {space.value.upper()} space")
            wanted = [pair_name(q, t)]
        out.extend(p for p in wanted if p not in out)
    if not out:
        raise InvalidArgument("--pair", "give at least one pair, e.g. --pair in-out")
    return tuple(out)


def read_word_list(path: str | os.PathLike) -> list[str]:
    """One word a line (UTF-8; line ends and surrounding spaces stripped; empty lines skipped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [w for w in (line.strip() for line in fh) if w]
    except UnicodeDecodeError:
        raise InvalidArgument("--words", f"{path} is not UTF-8 text") from None


def query_ids(bundle: Bundle, words: Sequence[str] | None, *, skip_unknown: bool = False) -> tuple[np.ndarray, int]:
    """(ids, unknown): int64 vocabulary rows of the words in order (None = every word), and how many words were
    not in the vocabulary (skipped when skip_unknown, else InvalidArgument naming the first few)."""
    if words is None:
        return np.arange(bundle.vocab_size, dtype=np.int64), 0
    index = bundle.vocab.index
    found = [index.get(w) for w in words]
    missing = [w for w, i in zip(words, found) if i is None]
    if missing and not skip_unknown:
        shown = ", ".join(repr(w) for w in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InvalidArgument("--words", f"{len(missing):,} of {len(words):,} words are not in the vocabulary "
                              f"({shown}); pass --skip-unknown to leave them out")
    ids = np.asarray([i for i in found if i is not None], dtype=np.int64)
    if not len(ids):
        raise InvalidArgument("--words", "no word of the list is in the vocabulary")
    return ids, len(missing)


def check_job(bundle: Bundle, job: NeighborsJob, n_queries: int) -> None:
    """Raise InvalidArgument naming the flag and the limit for a job this bundle cannot run."""
    if not 1 <= job.k <= MAX_K:
        raise InvalidArgument("-k", f"must be between 1 and {MAX_K}, got {job.k}")
    if job.batch < 1:
        raise InvalidArgument("--batch", f"must be at least 1, got {job.batch}")
    if job.threads < 0:
        raise InvalidArgument("--threads", f"must be >= 0 (0 = every CPU), got {job.threads}")
    n = bundle.vocab_size
    if job.exact and n_queries * n > EXACT_MAX_WORDS ** 2:
        raise InvalidArgument("--exact", f"{n_queries:,} queries x {n:,} words is past the limit of an exhaustive "
                              f"table ({EXACT_MAX_WORDS:,} x {EXACT_MAX_WORDS:,}, about 10 min a pair at 300 dims "
                              f"on 2 cores); drop --exact to use the tuned index, or give fewer --words")


# ------------------------------------------------------------------------------------------------------ search

def search_block(bundle: Bundle, pair: str, qids: np.ndarray, k: int, exact: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the words qids (m,) int64 in one pair, each query's own word left out, as Search answers a
    one-word query: (m, <=k) int64 ids (-1 = none) and float32 cosines, best first. One FAISS call."""
    query, target = parse_pair(pair)
    space = bundle.spaces[target]
    queries = np.ascontiguousarray(bundle.vectors[query][qids], dtype=np.float32)
    fetch = min(k + 1, space.n)
    if exact:
        scores, ids = exact_search(space.vectors, queries, fetch)
    else:
        tail = np.asarray([bundle.past_table(pair, int(i)) for i in qids], dtype=bool)
        if tail.any() and not tail.all():  # words past the pair's answer table have parameters of their own
            scores = np.empty((len(qids), fetch), np.float32)
            ids = np.empty((len(qids), fetch), np.int64)
            for part in (tail, ~tail):
                scores[part], ids[part] = space.search(queries[part], fetch,
                                                       bundle.search_params(pair, bool(part is tail)), pair)
        else:
            scores, ids = space.search(queries, fetch, bundle.search_params(pair, bool(tail.all())), pair)
        # an approximate index can come back short (IVF lists holding too few rows): answered exactly, as the
        # engine answers them, so that every word gets k neighbours whenever the vocabulary has them
        if ids.size and ids.min() < 0:
            short = np.flatnonzero(np.count_nonzero(ids >= 0, axis=1) < fetch)
            if len(short):
                scores, ids = np.array(scores), np.array(ids)
                scores[short], ids[short] = exact_search(space.vectors, queries[short], fetch)
    ids, scores = drop_query_ids(ids, scores, qids, k)
    return ids, scores


def block_batch(pair_index: int, qids: np.ndarray, ids: np.ndarray, scores: np.ndarray):
    """A block's answers as an Arrow record batch of vocabulary ids (the spool's form), rows without an answer
    dropped: pair (uint8 index into the job's pairs), word, rank (1 = nearest), neighbor, cosine."""
    import pyarrow as pa

    m, kk = ids.shape
    valid = (ids >= 0).ravel()
    word = np.repeat(qids.astype(np.int32), kk)[valid]
    rank = np.tile(np.arange(1, kk + 1, dtype=np.int16), m)[valid]
    return pa.record_batch([
        pa.array(np.full(len(word), pair_index, np.uint8)),
        pa.array(word),
        pa.array(rank),
        pa.array(ids.ravel()[valid].astype(np.int32)),
        pa.array(scores.ravel()[valid].astype(np.float32, copy=False)),
    ], names=list(COLUMNS))


# ----------------------------------------------------------------------------------------------------- the job

def job_fingerprint(bundle: Bundle, job: NeighborsJob, qids: np.ndarray) -> dict:
    """What a spool was made of: a resumed run must match it field for field (threads excepted)."""
    pairs_params = {p: bundle.pair_tuning(p).params.to_dict() for p in job.pairs}
    return {
        # the manifest lists every data file's sha256 and the tuned parameters: its bytes identify the bundle
        "manifest_sha256": hashlib.sha256((bundle.path / "manifest.json").read_bytes()).hexdigest(),
        "vocab_size": bundle.vocab_size,
        "pairs": list(job.pairs),
        "params": pairs_params,
        "k": job.k,
        "exact": job.exact,
        "batch": job.batch,
        "queries": int(len(qids)),
        "queries_sha256": hashlib.sha256(np.ascontiguousarray(qids, dtype=np.int64).tobytes()).hexdigest(),
    }


def partial_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(spool, sidecar) of an output: OUT.partial and OUT.partial.json."""
    output = Path(output)
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".partial.json")


class NeighborTable:
    """One job over one bundle, written to ``output``. run() computes (or resumes) and writes it."""

    def __init__(self, bundle: Bundle, job: NeighborsJob, qids: np.ndarray, output: str | os.PathLike, *,
                 force: bool = False, progress: bool = True, measure: int = 0,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, after_block: Callable[[int], None] | None = None):
        self.bundle = bundle
        self.job = job
        self.qids = np.asarray(qids, dtype=np.int64)
        self.output = Path(output)
        self.format = output_format(self.output)
        self.force = force
        self.progress = progress
        self.after_block = after_block  # called with the number of finished blocks after each one is spooled
        self.checkpoint_seconds = checkpoint_seconds
        self.spool, self.sidecar = partial_paths(self.output)
        check_job(bundle, job, len(self.qids))
        self.fingerprint = job_fingerprint(bundle, job, self.qids)
        self.blocks_per_pair = -(-len(self.qids) // job.batch)
        # measure: time the bare batched search of about this many of each pair's queries, on every stride-th
        # block (RunReport.measured)
        self.measure = measure
        self.measure_stride = max(1, self.blocks_per_pair // max(1, -(-measure // job.batch)))

    @property
    def blocks(self) -> int:
        return self.blocks_per_pair * len(self.job.pairs)

    # ---------------------------------------------------------------------------------------------- state
    def _start_state(self) -> list[int]:
        """End offsets of the spooled blocks a run can keep (empty: start over). Refuses to overwrite the output,
        or a spool of another job, without force."""
        if self.output.exists() and not self.force:
            raise NeighborsError(f"{self.output} already exists; pass --force to replace it")
        if not self.sidecar.exists():
            return []
        try:
            state = json.loads(self.sidecar.read_text(encoding="utf-8"))
            ok = state.get("format") == PROGRESS_FORMAT and state.get("version") == PROGRESS_VERSION
            ends = [int(x) for x in state.get("ends", [])] if ok else []
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
            ok, state, ends = False, {}, []
        if not ok or state.get("job") != self.fingerprint:
            if not self.force:
                raise NeighborsError(
                    f"{self.spool} holds an unfinished run of another job (other bundle, pairs, k, --batch, "
                    f"--exact or words); pass --force to discard it and start over, or run that job again")
            return []
        size = self.spool.stat().st_size if self.spool.exists() else -1
        if len(ends) > self.blocks or (ends and size < ends[-1]):
            if not self.force:
                raise NeighborsError(f"{self.spool} is shorter than {self.sidecar} records (damaged); pass --force "
                                     f"to discard it and start over")
            return []
        return ends

    def _checkpoint(self, spool, ends: list[int]) -> None:
        """Make the spooled blocks durable, then record them: a resumed run keeps what the sidecar lists."""
        spool.flush()
        os.fsync(spool.fileno())
        self._record(ends)

    def _record(self, ends: list[int]) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps({"format": PROGRESS_FORMAT, "version": PROGRESS_VERSION,
                                   "job": self.fingerprint, "ends": ends}) + "\n", encoding="utf-8")
        os.replace(tmp, self.sidecar)

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> RunReport:
        ends = self._start_state()
        resumed = len(ends)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not ends:
            self._record([])
        threads = self.job.threads or available_threads()
        faiss.omp_set_num_threads(threads)
        for pair in self.job.pairs:  # the pair's hub rows gathered once, as the server does at start
            target = parse_pair(pair)[1]
            for params in (self.bundle.search_params(pair), self.bundle.search_params(pair, tail=True)):
                if params.hubs and not self.job.exact:
                    self.bundle.spaces[target].hubs.warm(pair, params.hubs)
        report = RunReport(self.output, 0, len(self.qids), self.job.pairs, resumed, self.blocks, 0.0, 0.0)
        batch, n = self.job.batch, len(self.qids)
        bar = None
        if self.progress:
            from tqdm import tqdm

            done_queries = sum(min(batch, n - (b % self.blocks_per_pair) * batch) for b in range(resumed))
            bar = tqdm(total=n * len(self.job.pairs), initial=done_queries, unit="q", unit_scale=True,
                       desc=f"neighbors {'+'.join(self.job.pairs)}", dynamic_ncols=True)
        start = time.perf_counter()
        try:
            with open(self.spool, "r+b" if ends else "wb") as spool:
                spool.truncate(ends[-1] if ends else 0)
                spool.seek(0, os.SEEK_END)
                try:
                    self._search_blocks(spool, ends, report, bar)
                finally:  # done, or stopped (Ctrl-C, SIGTERM, an error): every block spooled is kept
                    self._checkpoint(spool, ends)
        finally:
            if bar is not None:
                bar.close()
        report.search_seconds = time.perf_counter() - start - report.measure_seconds
        t0 = time.perf_counter()
        report.rows = self._render(ends)
        report.render_seconds = time.perf_counter() - t0
        self.spool.unlink()
        self.sidecar.unlink()
        return report

    def _search_blocks(self, spool, ends: list[int], report: RunReport, bar) -> None:
        """Search and spool the blocks after the ``len(ends)`` done, appending each one's end offset to ends."""
        import pyarrow as pa

        batch = self.job.batch
        checkpointed = time.monotonic()
        for block in range(len(ends), self.blocks):
            pair_index, b = divmod(block, self.blocks_per_pair)
            pair = self.job.pairs[pair_index]
            qids = self.qids[b * batch:(b + 1) * batch]
            timed = bool(self.measure) and b % self.measure_stride == 0
            bare_first = timed and (b // self.measure_stride) % 2 == 1
            if bare_first:
                bare = bare_search_seconds(self.bundle, pair, qids, self.job.k, self.job.exact)
            t0, c0 = time.perf_counter(), time.process_time()
            ids, scores = search_block(self.bundle, pair, qids, self.job.k, self.job.exact)
            record = block_batch(pair_index, qids, ids, scores)
            with pa.ipc.new_stream(spool, record.schema) as writer:
                writer.write_batch(record)
            ends.append(spool.tell())
            if time.monotonic() - checkpointed >= self.checkpoint_seconds:
                self._checkpoint(spool, ends)
                checkpointed = time.monotonic()
            spent, spent_cpu = time.perf_counter() - t0, time.process_time() - c0
            report.seconds_by_pair[pair] = report.seconds_by_pair.get(pair, 0.0) + spent
            report.queries_by_pair[pair] = report.queries_by_pair.get(pair, 0) + len(qids)
            if timed:
                if not bare_first:
                    bare = bare_search_seconds(self.bundle, pair, qids, self.job.k, self.job.exact)
                report.measure_seconds += bare[0] + bare[1]
                sums = report.measured.setdefault(pair, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                for j, value in enumerate((len(qids), spent, bare[0], bare[1], spent_cpu, bare[2])):
                    sums[j] += value
            if bar is not None:
                bar.update(len(qids))
            if self.after_block is not None:
                self.after_block(len(ends))

    # --------------------------------------------------------------------------------------------- render
    def _spooled(self, ends: list[int]):
        """The spool's record batches, block by block (memory-mapped: one block in memory at a time)."""
        import pyarrow as pa

        with pa.memory_map(str(self.spool)) as source:
            data = source.read_buffer()
            begin = 0
            for end in ends:
                yield from pa.ipc.open_stream(data.slice(begin, end - begin))
                begin = end

    def _render(self, ends: list[int]) -> int:
        """Write the spooled blocks to the output under a temporary name and rename it into place; the row
        count."""
        import pyarrow as pa

        words = pa.array(self.bundle.vocab.words, pa.string())
        pairs = pa.array(list(self.job.pairs), pa.string())
        tmp = self.output.with_name(f".{self.output.name}.writing-{os.getpid()}")
        rows = 0
        try:
            if self.format == "parquet":
                rows = self._render_parquet(tmp, ends, words, pairs)
            else:
                rows = self._render_tsv(tmp, ends, words, pairs)
            os.replace(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return rows

    @staticmethod
    def _table(record, words, pairs):
        """A spooled record batch (ids) as output columns (strings)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        return pa.table([pc.take(pairs, record.column(0)), pc.take(words, record.column(1)), record.column(2),
                         pc.take(words, record.column(3)), record.column(4)], names=list(COLUMNS))

    def _render_parquet(self, path: Path, ends: list[int], words, pairs) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("pair", pa.string()), ("word", pa.string()), ("rank", pa.int16()),
                            ("neighbor", pa.string()), ("cosine", pa.float32())])
        rows, held, held_rows = 0, [], 0
        with pq.ParquetWriter(str(path), schema) as writer:
            for record in self._spooled(ends):
                held.append(self._table(record, words, pairs))
                held_rows += record.num_rows
                if held_rows >= PARQUET_ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(held), row_group_size=held_rows)
                    rows, held, held_rows = rows + held_rows, [], 0
            if held_rows or not rows:
                table = pa.concat_tables(held) if held else schema.empty_table()
                writer.write_table(table, row_group_size=max(1, held_rows))
                rows += held_rows
        return rows

    def _render_tsv(self, path: Path, ends: list[int], words, pairs) -> int:
        import pyarrow.compute as pc

        rows = 0
        with open(path, "wb") as out:
            out.write(("\t".join(COLUMNS) + "\n").encode())
            for record in self._spooled(ends):
                table = self._table(record, words, pairs)
                # words never hold a tab or a line end (the bundle's vocab.tsv cannot); cosines as the shortest
                # text that reads back as the same float32
                last = pc.binary_join_element_wise(pc.cast(table.column("cosine"), "string"), "\n", "")
                lines = pc.binary_join_element_wise(table.column("pair"), table.column("word"),
                                                    pc.cast(table.column("rank"), "string"),
                                                    table.column("neighbor"), last, "\t")
                for chunk in lines.chunks:
                    offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
                    if len(chunk):
                        out.write(memoryview(chunk.buffers()[2])[offsets[0]:offsets[-1]])
                rows += table.num_rows
        return rows


# ------------------------------------------------------------------------------------------------- the raw rate

def bare_search_seconds(bundle: Bundle, pair: str, qids: np.ndarray, k: int, exact: bool = False
                        ) -> tuple[float, float, float]:
    """(search, faiss, search CPU): seconds of the bare batched calls behind one block, its query vectors
    gathered beforehand and nothing kept: "search" is SpaceIndex.search (or the exhaustive scan) at the pair's
    parameters, re-scoring and hub rows included, the call the table makes, timed by the clock and in this
    process's CPU time; "faiss" is the index call alone (the same for an exhaustive scan)."""
    from dualvec.kernel.ann import DEFAULT_RERANK, zero_padded

    query, target = parse_pair(pair)
    space = bundle.spaces[target]
    params = bundle.pair_tuning(pair).params
    queries = np.ascontiguousarray(bundle.vectors[query][qids], dtype=np.float32)
    fetch = min(k + 1, space.n)
    exact = exact or space.index is None
    t0, c0 = time.perf_counter(), time.process_time()
    if exact:
        exact_search(space.vectors, queries, fetch)
    else:
        space.search(queries, fetch, params, pair)
    t1, cpu = time.perf_counter(), time.process_time() - c0
    if exact:
        return t1 - t0, t1 - t0, cpu
    padded = zero_padded(queries, space.index_dim) if space.index_dim > space.dim else queries
    kk = fetch if space.exact_scores else fetch * max(1, params.rerank or DEFAULT_RERANK)
    space.index.search(padded, kk, params=space._faiss_params(params, fetch))
    return t1 - t0, time.perf_counter() - t1, cpu
