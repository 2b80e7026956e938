"""Index kinds, and how one space is searched with a pair's tuned parameters.

One FAISS index per space (the *target* space of a query). A query pair (say IN->OUT) is searched in the target
space's index with its own query-time parameters (``SearchParams``): efSearch or nprobe, plus an optional *hub
scan*: a short list of target rows, found at build time, that are the frequent answers of that pair's queries and
are scored exactly for every query. Cross-space queries are out of distribution for an index built on one space;
their top-k lists are dominated by a few hub words the index tends to miss, and scanning those exactly is cheap.

The indexer (building, tuning) and the server (answering) both search through ``SpaceIndex.search``, so the recall
the bundle records is the recall the server delivers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from dualvec.kernel.errors import ModelError
from dualvec.kernel.hubs import HubLists
from dualvec.kernel.topk import drop_query_ids, pad
from dualvec.kernel.truth import QuerySample, exact_search

# Below this many rows `auto` searches exactly: a full scan is then about as fast as an index.
AUTO_EXACT_MAX_ROWS = 20_000
# HNSW graph construction effort. 40 builds 1M x 300 in about 3.3 min per space on 2 cores; the tuned efSearch
# recovers the recall (measured: IN->IN recall@10 .964 uniform / .970 by frequency at efSearch 64).
HNSW_EF_CONSTRUCTION = 40


@dataclass(frozen=True)
class IndexSpec:
    """Build parameters of one space's index (stored in the bundle manifest).

    kind: "flat" (exact: the stored normalized vectors are scanned; no index file), "ivf", "hnsw", or "factory"
    (``factory`` holds any FAISS index_factory string; inner-product metric).
    """

    kind: str
    factory: str = ""
    ef_construction: int = 0
    index_dim: int = 0  # the dimension the FAISS index works in: rows and queries are zero-padded to it (0: none)

    def describe(self) -> str:
        if self.kind == "flat":
            return "exact scan of the normalized vectors"
        return f"{self.factory} (on {self.index_dim} zero-padded dims)" if self.index_dim else self.factory


def choose_spec(requested: str, n_rows: int, dim: int) -> IndexSpec:
    """Turn the ``--index`` option into build parameters for an (n_rows, dim) space.

    "auto" is exact below AUTO_EXACT_MAX_ROWS rows and "hnsw" above (measured at 1M x 300: about half the
    single-query time of IVF at the same recall, on every pair); "ivf" is IVF with full vectors in the lists
    (nlist ~ 4 sqrt(n)); "ivfpq" is the same partition with 4-bit product-quantized codes scanned by FAISS's fast
    scan (about 1/32 of the bytes), every candidate re-scored exactly from the stored vectors; "hnsw" is HNSW32
    with efConstruction HNSW_EF_CONSTRUCTION over 8-bit scalar-quantized rows (a quarter of the bytes per hop),
    every candidate re-scored exactly from the stored vectors; anything else is taken as a FAISS factory string.
    Scalar-quantized indexes work on rows zero-padded to a multiple of 8 dimensions, the only case FAISS's SIMD
    code handles (at 300 dimensions an unpadded SQ8 scan is 6x slower than full vectors).
    """
    req = requested.strip()
    low = req.lower()
    if low == "auto":
        return IndexSpec("flat") if n_rows <= AUTO_EXACT_MAX_ROWS else choose_spec("hnsw", n_rows, dim)
    if low == "flat":
        return IndexSpec("flat")
    if low == "ivf":
        nlist = ivf_nlist(n_rows)
        return IndexSpec("ivf", f"IVF{nlist},Flat")
    if low == "ivfpq":
        nlist = ivf_nlist(n_rows)
        return IndexSpec("ivf", f"IVF{nlist},PQ{pq_subquantizers(dim)}x4fs")
    if low == "hnsw":
        return IndexSpec("hnsw", "HNSW32,SQ8", ef_construction=HNSW_EF_CONSTRUCTION,
                         index_dim=padded_dim("HNSW32,SQ8", dim))
    try:
        probe = faiss.index_factory(dim, req, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:  # faiss raises RuntimeError with a C++ message
        raise ModelError(f"--index {req!r} is not 'auto', 'flat', 'hnsw', 'ivf' or a valid FAISS factory string "
                         f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc})") from None
    kind = "ivf" if faiss.try_extract_index_ivf(probe) is not None else (
        "hnsw" if isinstance(probe, faiss.IndexHNSW) else "factory")
    return IndexSpec(kind, req, ef_construction=HNSW_EF_CONSTRUCTION if kind == "hnsw" else 0,
                     index_dim=padded_dim(req, dim))


def padded_dim(factory: str, dim: int) -> int:
    """The padded dimension a factory string should work in (0 = none): the next multiple of 8 for scalar
    quantizers (SQ8, SQ4, SQfp16...) when ``dim`` is not one, else 0."""
    if "SQ" not in factory.upper() or dim % 8 == 0:
        return 0
    return dim + (-dim) % 8


def zero_padded(rows: np.ndarray, width: int) -> np.ndarray:
    """(m, d) float32 rows as a C-contiguous (m, width) copy with zeros after column d (width >= d)."""
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    out[:, : rows.shape[1]] = rows
    return out


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers for fast scan: 2 dimensions each (4 bits per 2 dimensions: 1/16 of float32) where the
    dimension allows, else 1 (measured: 4 dimensions per sub-quantizer lose too much for re-ranking to recover)."""
    for width in (2,):
        if dim % width == 0:
            return dim // width
    return dim


def ivf_nlist(n_rows: int) -> int:
    """Number of IVF lists for n rows: the power of two nearest 4 sqrt(n), at least 16; capped at n / 39 (so that
    k-means has 39 points per centroid), which need not be a power of two."""
    target = 4.0 * math.sqrt(max(n_rows, 1))
    nlist = 2 ** round(math.log2(target))
    return int(max(16, min(nlist, max(16, n_rows // 39))))


def build_index(spec: IndexSpec, vectors: np.ndarray, *, seed: int = 1234, progress=None) -> faiss.Index | None:
    """Build the index of one space from its (n, d) float32 unit rows. Returns None for "flat".

    progress: optional callable(str) told about each phase (training, adding).
    """
    if spec.kind == "flat":
        return None
    n, d = vectors.shape
    width = max(d, spec.index_dim)

    def rows(chunk: np.ndarray) -> np.ndarray:
        return zero_padded(chunk, width) if width > d else np.ascontiguousarray(chunk, dtype=np.float32)

    index = faiss.index_factory(width, spec.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.spherical = True  # centroids on the sphere: the right k-means for cosine
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 64
        if ivf.nlist > n:
            raise ModelError(f"--index {spec.factory!r} wants {ivf.nlist} lists but the space has only {n} rows")
    hnsw = _hnsw_of(index)
    if hnsw is not None and spec.ef_construction:
        hnsw.hnsw.efConstruction = spec.ef_construction
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        limit = 64 * ivf.nlist if ivf is not None else 100_000
        if progress:
            progress(f"training {spec.factory} on {min(n, limit):,} rows")
        sample = vectors if n <= limit else vectors[np.sort(rng.choice(n, limit, replace=False))]
        index.train(rows(sample))
    if progress:
        progress(f"adding {n:,} rows")
    start, reported = 0, 0
    while start < n:
        step = graph_insertion_step(start) if hnsw is not None else 100_000
        index.add(rows(vectors[start:start + step]))
        start = min(n, start + step)
        if progress and (start - reported >= n // 20 or start == n):
            progress(f"added {start:,} of {n:,} rows")
            reported = start
    return index


def graph_insertion_step(added: int) -> int:
    """Rows given to one HNSW ``add`` call once ``added`` rows are in the graph.

    FAISS shuffles the rows of one ``add`` call (within each level) before linking them. Rows come in vocabulary
    order, most frequent words first, and the frequent words are what cross-space queries look for (the OUT
    vectors of frequent words are the nearest ones to most IN queries, and back): inserted first, they gather the
    graph's long-range links and a query from the other space reaches them. Small calls keep that order where it
    matters, among the frequent words; later ones grow for speed. Measured at 1M x 300 (efSearch 64, no hub
    scan), OUT->IN recall@10 went from .56/.79 (uniform/by frequency) with 100,000-row calls to .92/.93, at
    the same IN->IN recall and build time (scripts/index_options.py)."""
    return min(100_000, max(1_000, added // 20))


def _hnsw_of(index: faiss.Index):
    """The index as an IndexHNSW, or None when it is another kind."""
    concrete = faiss.downcast_index(index)
    return concrete if isinstance(concrete, faiss.IndexHNSW) else None


@dataclass(frozen=True)
class SearchParams:
    """Query-time parameters of one space pair; re-tunable without a rebuild.

    ef_search: HNSW efSearch (0 = not an HNSW index). nprobe: IVF lists visited (0 = not IVF).
    hubs: how many of the pair's hub rows (best first) are scored exactly and merged in (0 = none).
    rerank: for indexes whose scores are approximate (PQ, SQ): k * rerank candidates are re-scored exactly from
    the stored vectors (0 = 4).
    """

    ef_search: int = 0
    nprobe: int = 0
    hubs: int = 0
    rerank: int = 0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchParams":
        return cls(**{k: int(v) for k, v in data.items() if k in ("ef_search", "nprobe", "hubs", "rerank")})

    def __str__(self) -> str:
        return json.dumps(self.to_dict()) if self.to_dict() else "{}"


class SpaceIndex:
    """One space ready to search: its (n, d) float32 unit rows, its FAISS index (None = exact only), and the hub
    rows of each query pair that targets it.

    Thread-safe: parameters travel with each call (FAISS SearchParameters), nothing global is changed.
    """

    def __init__(self, vectors: np.ndarray, index: faiss.Index | None, hubs: dict[str, np.ndarray] | None = None):
        self.vectors = vectors
        self.index = index
        self.n, self.dim = vectors.shape
        self.hubs = HubLists(vectors)
        self._shared_params: dict[tuple[int, int, int], faiss.SearchParameters] = {}
        self._ivf = faiss.try_extract_index_ivf(index) if index is not None else None
        self._is_hnsw = index is not None and _hnsw_of(index) is not None
        self.exact_scores = index is None or _stores_full_vectors(index)
        self.index_dim = index.d if index is not None else self.dim  # > dim: queries are zero-padded for it
        for pair, ids in (hubs or {}).items():
            self.hubs.set(pair, ids)

    @property
    def exact_only(self) -> bool:
        return self.index is None

    def exact(self, queries: np.ndarray, k: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive top-k by inner product. queries: (m, d) float32 unit rows. Returns (m, k) float32 scores
        and (m, k) int64 ids (-1 where fewer than k rows exist). limit: search only rows [0, limit)."""
        return exact_search(self.vectors, queries, k, limit)

    def search(self, queries: np.ndarray, k: int, params: SearchParams, pair: str = "",
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k with a pair's parameters. queries: (m, d) float32 unit rows. Returns (m, k) float32
        cosines and (m, k) int64 ids, best first, -1 padded. limit: search only rows [0, limit) (the most
        frequent words), exactly when that is small."""
        if self.index is None or (limit and limit * self.dim <= 4_000_000):
            return self.exact(queries, k, limit)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sel = None  # (kept referenced in this frame: the parameters do not own it)
        if limit and limit < self.n:
            sel = faiss.IDSelectorRange(0, int(limit))
            fp = self._faiss_params(params, k)
            fp.sel = sel
        else:
            key = (params.nprobe, params.ef_search, k)
            fp = self._shared_params.get(key)
            if fp is None:  # read-only once made: shared by every thread
                fp = self._shared_params.setdefault(key, self._faiss_params(params, k))
        padded = zero_padded(queries, self.index_dim) if self.index_dim > self.dim else queries
        if self.exact_scores:
            scores, ids = self.index.search(padded, k, params=fp)
        else:
            _, cand = self.index.search(padded, k * max(1, params.rerank or DEFAULT_RERANK), params=fp)
            scores, ids = self.rescore(queries, cand, k)
        if params.hubs:
            scores, ids = self.hubs.merge(queries, k, pair, params.hubs, scores, ids, limit)
        return scores, ids

    def _faiss_params(self, params: SearchParams, k: int) -> faiss.SearchParameters:
        if self._ivf is not None:
            return faiss.SearchParametersIVF(nprobe=max(1, params.nprobe or 1))
        if self._is_hnsw:
            return faiss.SearchParametersHNSW(efSearch=max(k, params.ef_search or 16))
        return faiss.SearchParameters()

    def rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of (m, c) candidate ids (-1 = none) against (m, d) queries; the best k of each row."""
        valid = candidates >= 0
        all_valid = bool(valid.all())
        safe = candidates if all_valid else np.where(valid, candidates, 0)
        rows = np.asarray(self.vectors[safe.ravel()], dtype=np.float32).reshape(*safe.shape, self.dim)
        exact = np.einsum("md,mcd->mc", queries, rows)
        if not all_valid:
            exact[~valid] = -np.inf
        kk = min(k, exact.shape[1])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :kk]
        row = np.arange(len(order))[:, None]  # plain fancy indexing: take_along_axis costs ~10 us a call
        out_s = exact[row, order].astype(np.float32, copy=False)
        out_i = candidates[row, order]
        if not all_valid:
            out_i = np.where(np.isfinite(out_s), out_i, -1)
        return pad(out_s, out_i, k)


DEFAULT_RERANK = 4


def _stores_full_vectors(index: faiss.Index) -> bool:
    """True when the index's scores are exact inner products (flat storage); False for PQ/SQ codes."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
    hnsw = _hnsw_of(index)
    if hnsw is not None:
        return isinstance(faiss.downcast_index(hnsw.storage), faiss.IndexFlat)
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def search_sample(target: SpaceIndex, sample: QuerySample, k: int, params: SearchParams, pair: str) -> np.ndarray:
    """(m, k) int64 ids a pair's tuned search returns for a query sample, each query's own word left out (as the
    server answers by default): what dualvec.kernel.truth judges."""
    scores, ids = target.search(sample.vectors, k + 1, params, pair)
    ids, _ = drop_query_ids(ids, scores, sample.ids, k)
    return ids
