"""The batch transforms a distributed engine runs: a batch of query words in, the neighbour table's rows out.

Both are plain callables on a ``pyarrow.Table`` with a column of words (``column``, "word" by default) and return
a ``pyarrow.Table`` of the columns `dualvec neighbors` writes (pair, word, rank, neighbor, cosine; OUTPUT_SCHEMA):
for each pair in turn, each word of the batch in order, its ranks in order. Neither needs an engine, so they run
the same under Ray Data (dualvec.distributed.ray_data), in Spark's ``mapInArrow``, or in a plain loop.

- BundleNeighbors searches a bundle in the worker's own process: the bundle is opened once per process (vectors
  and IVF or flat indexes memory-mapped, so the worker processes of one machine share one copy in the page
  cache) and each block is searched by dualvec.kernel.neighbors.search_block at the pair's tuned parameters, hub
  rows included: the rows `dualvec neighbors` writes for the same words, to the bit.
- FleetNeighbors sends the words to running servers in BatchSearch calls through dualvec.Client (one channel per
  worker process; a ``dns:///`` address spreads the calls over every replica): what each server's Search
  answers.

Instances pickle without what they opened (the bundle, the channel), and open it again, once per process, where
they are called: an engine may build them on the driver and ship them to its workers.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pyarrow as pa

from dualvec.kernel.errors import InvalidArgument, UnknownWords

OUTPUT_SCHEMA = pa.schema([("pair", pa.string()), ("word", pa.string()), ("rank", pa.int16()),
                           ("neighbor", pa.string()), ("cosine", pa.float32())])
DEFAULT_COLUMN = "word"

_lock = threading.Lock()
_bundles: dict[tuple[str, bool], object] = {}   # (absolute path, checksums) -> Bundle, one per process
_vocab_arrays: dict[str, pa.Array] = {}         # absolute path -> the vocabulary as an Arrow string array
_clients: dict[tuple, object] = {}              # client settings -> dualvec.Client, one per process


def open_bundle(path: str | os.PathLike, *, checksums: bool = False):
    """The process's one copy of a bundle: read on the first call (dualvec.kernel.bundle.read_bundle, memory-mapped),
    the same object afterwards. ``checksums``: check every file's sha256 too (sizes are always checked)."""
    from dualvec.kernel.bundle import read_bundle

    key = (str(Path(path).absolute()), bool(checksums))
    with _lock:
        bundle = _bundles.get(key)
        if bundle is None:
            bundle = _bundles[key] = read_bundle(key[0], checksums=checksums)
        return bundle


def check_pairs(spaces: Sequence[str], pairs: Sequence[str] | str) -> tuple[str, ...]:
    """Pair names ("in-out", "IN->OUT", "all") resolved against a bundle's spaces (its manifest's ``spaces``), as
    `dualvec neighbors --pair` resolves them; InvalidArgument naming "pairs" otherwise."""
    from dualvec.kernel.neighbors import resolve_pairs

    names = [pairs] if isinstance(pairs, str) else list(pairs)
    shim = SimpleNamespace(has_space=lambda space: space.value in spaces)
    try:
        return resolve_pairs(shim, names)
    except InvalidArgument as exc:
        raise InvalidArgument("pairs", str(exc).split(": ", 1)[-1]) from None


def check_k(k: int) -> int:
    from dualvec.kernel.neighbors import MAX_K

    if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be between 1 and {MAX_K}, got {k!r}")
    return int(k)


def batch_words(batch, column: str) -> list[str]:
    """The words of a batch: a pyarrow Table or RecordBatch, a pandas DataFrame, or a dict of columns."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        if column not in batch.schema.names:
            raise InvalidArgument("column", f"the batch has no column {column!r} (it has {batch.schema.names})")
        return batch.column(column).to_pylist()
    try:
        values = batch[column]
    except (KeyError, TypeError):
        raise InvalidArgument("column", f"the batch has no column {column!r}") from None
    return values.tolist() if hasattr(values, "tolist") else list(values)


def empty_table() -> pa.Table:
    return OUTPUT_SCHEMA.empty_table()


class BundleNeighbors:
    """The top-k neighbours of each word of a batch in each pair, searched in this process on a bundle at the
    pairs' tuned parameters (``exact``: exhaustively): the rows of `dualvec neighbors` for the same words.

    bundle: the bundle's directory, at the same path on every machine that runs this (a shared file system, or a
    copy on each machine's local disk); pairs: names as `dualvec neighbors --pair` takes them ("all" for every
    pair); threads: FAISS threads of each call (give each worker as many as the CPUs the engine reserves for it);
    batch: queries per FAISS call (a larger batch is searched in blocks of this many); skip_unknown: a word not in
    the vocabulary gets no rows (default: UnknownWords is raised, naming it); checksums: check every file's sha256
    when a process opens the bundle (sizes are always checked)."""

    def __init__(self, bundle: str | os.PathLike, pairs: Sequence[str] | str = ("in-out",), k: int = 10, *,
                 column: str = DEFAULT_COLUMN, exact: bool = False, threads: int = 1, batch: int | None = None,
                 skip_unknown: bool = False, checksums: bool = False):
        from dualvec.kernel.neighbors import DEFAULT_BATCH

        self.path = str(Path(bundle).absolute())
        self.k = check_k(k)
        self.column = column
        self.exact = bool(exact)
        if threads < 1:
            raise InvalidArgument("threads", f"must be at least 1, got {threads}")
        self.threads = int(threads)
        self.batch = DEFAULT_BATCH if batch is None else int(batch)
        if self.batch < 1:
            raise InvalidArgument("batch", f"must be at least 1, got {batch}")
        self.skip_unknown = bool(skip_unknown)
        self.checksums = bool(checksums)
        self._pairs_asked = (pairs,) if isinstance(pairs, str) else tuple(pairs)
        self._bundle = None
        self._open()

    def _open(self):
        """Open (once per process) and check the job against the bundle; gather each pair's hub rows."""
        if self._bundle is not None:
            return self._bundle
        from dualvec.kernel.neighbors import NeighborsJob, check_job
        from dualvec.kernel.spaces import parse_pair

        bundle = open_bundle(self.path, checksums=self.checksums)
        self.pairs = check_pairs(bundle.manifest.spaces, self._pairs_asked)
        check_job(bundle, NeighborsJob(self.pairs, k=self.k, exact=self.exact, batch=self.batch), 1)
        if not self.exact:
            for pair in self.pairs:  # the hub rows of both parameter sets (words in and past the answer table)
                for params in (bundle.search_params(pair), bundle.search_params(pair, tail=True)):
                    if params.hubs:
                        bundle.spaces[parse_pair(pair)[1]].hubs.warm(pair, params.hubs)
        with _lock:
            words = _vocab_arrays.get(self.path)
            if words is None:
                words = _vocab_arrays[self.path] = pa.array(bundle.vocab.words, pa.string())
        self._words = words
        self._pair_names = pa.array(list(self.pairs), pa.string())
        self._bundle = bundle
        return bundle

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_bundle", "_words", "_pair_names"):
            state.pop(name, None)
        state["_bundle"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def query_ids(self, words: Sequence[str]) -> np.ndarray:
        """Vocabulary rows of the words, in order: unknown words left out (skip_unknown) or UnknownWords raised."""
        index = self._open().vocab.index
        found = [index.get(w) for w in words]
        if None in found:
            if not self.skip_unknown:
                raise UnknownWords([w for w, i in zip(words, found) if i is None])
            found = [i for i in found if i is not None]
        return np.asarray(found, dtype=np.int64)

    def search_ids(self, qids: np.ndarray) -> pa.Table:
        """The rows of the words qids (vocabulary rows), pair by pair, in blocks of ``batch`` queries."""
        import faiss
        import pyarrow.compute as pc

        from dualvec.kernel.neighbors import block_batch, search_block

        bundle = self._open()
        faiss.omp_set_num_threads(self.threads)  # per call: an engine may call from a thread of its own
        parts = []
        for p, pair in enumerate(self.pairs):
            for start in range(0, len(qids), self.batch):
                block = qids[start:start + self.batch]
                ids, scores = search_block(bundle, pair, block, self.k, self.exact)
                record = block_batch(p, block, ids, scores)
                parts.append(pa.table([pc.take(self._pair_names, record.column(0)),
                                       pc.take(self._words, record.column(1)), record.column(2),
                                       pc.take(self._words, record.column(3)), record.column(4)],
                                      schema=OUTPUT_SCHEMA))
        return pa.concat_tables(parts) if parts else empty_table()

    def __call__(self, batch) -> pa.Table:
        return self.search_ids(self.query_ids(batch_words(batch, self.column)))


class FleetNeighbors:
    """The top-k neighbours of each word of a batch in each pair, asked of running servers with BatchSearch: what
    their Search answers for each word alone (the word itself left out), in the same columns as BundleNeighbors.

    address: any gRPC target dualvec.Client takes (``dns:///dualvec.example:50051`` spreads calls over every
    replica the name resolves to); pairs: names ("in-out"; "all" needs the bundle, so it is not taken here);
    per_call: queries per BatchSearch, at most the servers' --max-batch (1,024) and their --max-results (100,000)
    over k; skip_unknown: a word the servers do not know gets no rows (its call is sent again as a SearchStream,
    which answers each query on its own) instead of ClientError NOT_FOUND; client_options: Client's keyword
    arguments (token, tls_ca, service_config, timeout, model)."""

    def __init__(self, address: str, pairs: Sequence[str] | str = ("in-out",), k: int = 10, *,
                 column: str = DEFAULT_COLUMN, per_call: int = 1024, skip_unknown: bool = False,
                 **client_options):
        from dualvec.kernel.search import Limits
        from dualvec.kernel.spaces import pair_name, parse_pair

        self.address = address
        self.k = check_k(k)
        names = [pairs] if isinstance(pairs, str) else list(pairs)
        resolved = []
        for name in names:
            try:
                resolved.append(pair_name(*parse_pair(name)))
            except ValueError as exc:
                raise InvalidArgument("pairs", str(exc)) from None
        if not resolved:
            raise InvalidArgument("pairs", "give at least one pair, e.g. 'in-out'")
        self.pairs = tuple(dict.fromkeys(resolved))
        self.column = column
        limits = Limits()
        self.per_call = max(1, min(int(per_call), limits.max_batch, limits.max_results // self.k))
        self.skip_unknown = bool(skip_unknown)
        self.client_options = dict(client_options)
        self.client_options.setdefault("timeout", 60.0)

    def _client(self):
        from dualvec.client import Client

        key = (self.address, tuple(sorted((k, repr(v)) for k, v in self.client_options.items())))
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = Client(self.address, **self.client_options)
            return client

    def _ask(self, queries: list[dict]) -> list[list | None]:
        """Each query's neighbours (None: a word the server does not know, with skip_unknown)."""
        import grpc

        from dualvec.client import ClientError

        client = self._client()
        try:
            return client.batch_search(queries)
        except ClientError as exc:
            if not (self.skip_unknown and exc.code == grpc.StatusCode.NOT_FOUND):
                raise
        answers: list[list | None] = [None] * len(queries)
        for result in client.search_stream(queries, timeout=self.client_options.get("timeout")):
            if result.ok:
                answers[result.index] = result.neighbors
            elif result.error.code != grpc.StatusCode.NOT_FOUND:
                raise result.error
        return answers

    def __call__(self, batch) -> pa.Table:
        from dualvec.kernel.spaces import parse_pair

        words = batch_words(batch, self.column)
        columns: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
        for pair in self.pairs:
            query, target = parse_pair(pair)
            for start in range(0, len(words), self.per_call):
                chunk = words[start:start + self.per_call]
                queries = [{"positive": [w], "query_space": query.value, "target_space": target.value,
                            "k": self.k} for w in chunk]
                for word, neighbors in zip(chunk, self._ask(queries)):
                    for rank, n in enumerate(neighbors or (), 1):
                        columns["pair"].append(pair)
                        columns["word"].append(word)
                        columns["rank"].append(rank)
                        columns["neighbor"].append(n.word)
                        columns["cosine"].append(n.score)
        return pa.table({name: pa.array(values, type=OUTPUT_SCHEMA.field(name).type)
                         for name, values in columns.items()}, schema=OUTPUT_SCHEMA)
