"""Every system scripts/bench.py measures, behind one tiny adapter (ann-benchmarks' habit):

    adapter.fit()                              build or load; returns what it cost ({"seconds": ..., ...})
    adapter.pairs                              the space pairs it can answer ("in-in", "in-out", ...)
    adapter.set_query_arguments(pair, **kw)    query-time parameters of one pair (efSearch, nprobe, ...)
    adapter.query(pair, word_id, k)            top-k row ids of one query word, its own row left out
    adapter.close()

Adapters: dualvec in-process (the server's SearchEngine), dualvec through gRPC (dualvec.Client), dualvec's FAISS
index alone (SpaceIndex.search, for the parameter sweep), gensim ``most_similar``, hnswlib, and Qdrant in local
(embedded) mode. Measuring is bench_measure.py's job, reporting bench_report.py's.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import numpy as np

from dualvec.kernel.ann import SearchParams
from dualvec.kernel.bundle import Bundle
from dualvec.kernel.spaces import Space, parse_pair

log = logging.getLogger("bench")

ALL = ("in-in", "in-out", "out-in", "out-out")


class Adapter:
    """The interface. ``pairs``: what the system answers; ``info``: what fit() measured."""

    name = "adapter"
    pairs: tuple[str, ...] = ALL

    def fit(self) -> dict:
        return {}

    def set_query_arguments(self, pair: str, **kwargs) -> None:
        pass

    def query(self, pair: str, word_id: int, k: int) -> Sequence[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _drop(ids: Sequence[int], word_id: int, k: int) -> list[int]:
    return [i for i in ids if i != word_id and i >= 0][:k]


# ------------------------------------------------------------------------------------------------------- dualvec

class DualvecEngine(Adapter):
    """The server's core in-process: SearchEngine.search with the bundle's tuned parameters (one thread).
    ``limit``: restrict_vocab (search only the `limit` most frequent rows), to compare with a capped peer."""

    name = "dualvec (in-process)"

    def __init__(self, bundle: Bundle, limit: int = 0):
        from dualvec.kernel.search import SearchEngine, SearchQuery

        self.engine = SearchEngine(bundle)
        self.words = bundle.vocab.words
        self.limit = limit
        self._query = SearchQuery
        self.pairs = tuple(p for p in ALL if all(bundle.has_space(s) for s in parse_pair(p)))

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        q, t = parse_pair(pair)
        res = self.engine.search(self._query(positive=(self.words[word_id],), query_space=q, target_space=t, k=k,
                                             restrict_vocab=self.limit))
        return [n.id for n in res]


class DualvecGrpc(Adapter):
    """A running `dualvec serve` through the typed client (dualvec.Client.search), one call per query."""

    name = "dualvec (gRPC)"

    def __init__(self, bundle: Bundle, address: str):
        from dualvec.client import Client

        self.client = Client(address, timeout=30.0)
        self.client.wait_ready(30.0)
        self.words = bundle.vocab.words
        self.pairs = tuple(p for p in ALL if all(bundle.has_space(s) for s in parse_pair(p)))

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        q, t = pair.split("-")
        return [n.id for n in self.client.search(self.words[word_id], query_space=q, target_space=t, k=k)]

    def close(self) -> None:
        self.client.close()


class DualvecIndex(Adapter):
    """dualvec's FAISS index of the target space alone (SpaceIndex.search), with parameters set per pair: the
    parameter sweep uses it. Defaults to the bundle's tuned parameters."""

    name = "dualvec index"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.params = {p: bundle.tuning(*parse_pair(p)).params for p in ALL}
        self.pairs = tuple(p for p in ALL if all(bundle.has_space(s) for s in parse_pair(p)))

    def set_query_arguments(self, pair: str, params: SearchParams | None = None, **_) -> None:
        if params is not None:
            self.params[pair] = params

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        q, t = parse_pair(pair)
        vec = np.asarray(self.bundle.vectors[q][word_id:word_id + 1], dtype=np.float32)
        _, ids = self.bundle.spaces[t].search(vec, k + 1, self.params[pair], pair)
        return _drop(ids[0].tolist(), word_id, k)


# -------------------------------------------------------------------------------------------------------- gensim

class Gensim(Adapter):
    """gensim ``KeyedVectors.most_similar(word, topn=k)``: exact search of IN, query word left out (IN->IN only).

    model: a gensim model file (Word2Vec / FastText / KeyedVectors .save()) or a word2vec-format file of the IN
    vectors (binary or text); None = KeyedVectors built from the bundle's IN rows (same words, same order)."""

    name = "gensim most_similar"
    pairs = ("in-in",)

    def __init__(self, bundle: Bundle, model: str | None = None):
        self.bundle = bundle
        self.model = model
        self.kv = None

    def fit(self) -> dict:
        t0 = time.perf_counter()
        if self.model:
            self.kv = load_keyed_vectors(self.model)
            source = self.model
        else:
            from gensim.models import KeyedVectors

            vecs = np.asarray(self.bundle.vectors[Space.IN], dtype=np.float32)
            self.kv = KeyedVectors(vector_size=vecs.shape[1], count=0, dtype=np.float32)
            self.kv.add_vectors(self.bundle.vocab.words, vecs)
            source = "KeyedVectors from the bundle's IN rows"
        load = time.perf_counter() - t0
        self.kv.fill_norms()
        index = self.bundle.vocab.index
        self.to_row = np.array([index.get(w, -1) for w in self.kv.index_to_key], dtype=np.int64)
        same = len(self.kv.index_to_key) == self.bundle.vocab_size and bool(
            np.all(self.to_row == np.arange(len(self.to_row))))
        self.words = self.bundle.vocab.words
        return {"seconds": load, "source": source, "vocab_size": len(self.kv.index_to_key),
                "same_vocabulary_as_bundle": same}

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        res = self.kv.most_similar(positive=[self.words[word_id]], topn=k)
        index = self.bundle.vocab.index
        return [index.get(w, -1) for w, _ in res]


def load_keyed_vectors(path: str):
    """gensim KeyedVectors from a gensim .save() file (its .wv when it is a model), else a word2vec-format file."""
    from gensim.models import KeyedVectors
    from gensim.utils import SaveLoad

    try:
        obj = SaveLoad.load(path)
        return getattr(obj, "wv", obj)
    except Exception as first:  # not a gensim pickle: try the word2vec formats
        for binary in (True, False):
            try:
                return KeyedVectors.load_word2vec_format(path, binary=binary)
            except Exception:
                continue
        raise ValueError(f"{path} is neither a gensim model nor a word2vec-format file ({first})") from None


# ------------------------------------------------------------------------------------------------------- hnswlib

class Hnswlib(Adapter):
    """hnswlib HNSW on the normalized rows of each space (inner product); one index per space, efSearch per pair
    (set before each query, as the two pairs targeting one space share the index). Built with every core, queried
    with one thread."""

    name = "hnswlib"

    def __init__(self, bundle: Bundle, spaces: Sequence[str] = ("in", "out"), m: int = 16,
                 ef_construction: int = 200, threads: int = 0, quiet: bool = False):
        self.bundle = bundle
        self.spaces = [Space(s) for s in spaces if bundle.has_space(Space(s))]
        self.m, self.efc = m, ef_construction
        self.threads = threads or os.cpu_count() or 1
        self.quiet = quiet
        self.index: dict[Space, object] = {}
        self.ef: dict[str, int] = {}
        self.pairs = tuple(p for p in ALL if parse_pair(p)[1] in self.spaces and bundle.has_space(parse_pair(p)[0]))

    def fit(self) -> dict:
        import hnswlib
        from tqdm.auto import tqdm

        out = {"M": self.m, "ef_construction": self.efc, "threads": self.threads, "spaces": {}}
        for space in self.spaces:
            vecs = self.bundle.vectors[space]
            n, d = vecs.shape
            t0 = time.perf_counter()
            idx = hnswlib.Index(space="ip", dim=d)
            idx.init_index(max_elements=n, M=self.m, ef_construction=self.efc, random_seed=100)
            step = 50_000
            with tqdm(total=n, desc=f"hnswlib {space.value.upper()}", unit="row", leave=False,
                      disable=self.quiet) as bar:
                for s in range(0, n, step):
                    chunk = np.ascontiguousarray(vecs[s:s + step], dtype=np.float32)
                    idx.add_items(chunk, np.arange(s, s + len(chunk)), num_threads=self.threads)
                    bar.update(len(chunk))
            idx.set_num_threads(1)
            self.index[space] = idx
            secs = time.perf_counter() - t0
            # links: level-0 has 2M neighbours of 4 bytes, plus the vectors themselves
            approx = n * (d * 4 + 2 * self.m * 4 + 16)
            out["spaces"][space.value] = {"seconds": secs, "approx_bytes": approx}
        out["seconds"] = sum(v["seconds"] for v in out["spaces"].values())
        return out

    def set_query_arguments(self, pair: str, ef: int = 64, **_) -> None:
        self.ef[pair] = int(ef)

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        q, t = parse_pair(pair)
        idx = self.index[t]
        ef = max(self.ef.get(pair, 64), k + 1)
        idx.set_ef(ef)
        vec = np.asarray(self.bundle.vectors[q][word_id], dtype=np.float32)
        labels, _ = idx.knn_query(vec, k=k + 1, num_threads=1)
        return _drop(labels[0].tolist(), word_id, k)


# -------------------------------------------------------------------------------------------------------- Qdrant

class QdrantLocal(Adapter):
    """Qdrant in local (embedded, in-memory) mode: one collection, named vectors "in" and "out" per word, cosine.
    An X->Y query searches the named vector Y with word's X vector, so all four pairs are expressible.

    Local mode keeps points in Python and scans them with numpy; loading is slow, so only the `rows` most frequent
    words are loaded (the ground truth for it is then computed over those rows)."""

    name = "qdrant (local mode)"

    def __init__(self, bundle: Bundle, rows: int, batch: int = 2048, quiet: bool = False):
        self.bundle = bundle
        self.rows = min(rows, bundle.vocab_size)
        self.batch = batch
        self.quiet = quiet
        self.client = None
        self.pairs = tuple(p for p in ALL if all(bundle.has_space(s) for s in parse_pair(p)))

    def fit(self) -> dict:
        from qdrant_client import QdrantClient, models
        from tqdm.auto import tqdm

        import warnings

        t0 = time.perf_counter()
        self.client = QdrantClient(location=":memory:")
        # local mode warns above 20,000 points that it is not meant for that size: said in the report instead
        warnings.filterwarnings("ignore", message="Local mode is not recommended", category=UserWarning)
        spaces = [s for s in (Space.IN, Space.OUT) if self.bundle.has_space(s)]
        d = self.bundle.dim
        self.client.create_collection(
            "words", vectors_config={s.value: models.VectorParams(size=d, distance=models.Distance.COSINE)
                                     for s in spaces})
        with tqdm(total=self.rows, desc="qdrant load", unit="row", leave=False, disable=self.quiet) as bar:
            for s in range(0, self.rows, self.batch):
                e = min(self.rows, s + self.batch)
                vecs = {sp.value: np.asarray(self.bundle.vectors[sp][s:e], dtype=np.float32) for sp in spaces}
                points = [models.PointStruct(id=i, vector={name: v[i - s].tolist() for name, v in vecs.items()})
                          for i in range(s, e)]
                self.client.upsert("words", points=points, wait=True)
                bar.update(e - s)
        from importlib.metadata import version

        return {"seconds": time.perf_counter() - t0, "rows": self.rows, "of": self.bundle.vocab_size,
                "version": version("qdrant-client")}

    def query(self, pair: str, word_id: int, k: int) -> list[int]:
        q, t = parse_pair(pair)
        vec = np.asarray(self.bundle.vectors[q][word_id], dtype=np.float32)
        res = self.client.query_points("words", query=vec, using=t.value, limit=k + 1, with_payload=False)
        return _drop([int(p.id) for p in res.points], word_id, k)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
