#!/usr/bin/env python
"""Compare index kinds on one bundle's vectors: recall@10 and single-query time per space pair, no hub scan.

    python scripts/index_options.py BUNDLE [--variants hnsw-sq8,hnsw-flat,hnsw-flat-shuffled,ivf-flat,...]
                                           [--targets in] [--settings 32,64,128] [--queries 300]

For each variant, an index is built on each target space's unit rows (the bundle's `in.vectors.npy` /
`out.vectors.npy`), then searched with query words of both spaces: the pairs X->target. Queries: --queries words
drawn uniformly from the vocabulary and as many drawn by corpus count (the bundle's vocab.tsv counts). Recall@10
as the benchmark counts it (a returned word is right when its exact cosine reaches the 10th best exact cosine less
1e-4; the query word left out); time = median microseconds of one single-query search on one thread, exact
re-ranking included where the index holds codes. The tuner's hub scan is *not* used here: this shows what each
index does alone.

Variants (efSearch or nprobe from --settings):
  hnsw-sq8            dualvec's default graph: HNSW32,SQ8 on zero-padded rows, vocabulary order, exact re-rank
  hnsw-flat           HNSW32,Flat, rows in vocabulary order in small add calls (dualvec.kernel.ann.graph_insertion_step)
  hnsw-flat-shuffled  HNSW32,Flat, one add call per 100,000 rows (FAISS shuffles each call within levels)
  hnswlib             hnswlib M 32, efConstruction 40 (inserts in order; needs `pip install hnswlib`)
  ivf-flat            IVF (about 4 sqrt(n) lists), full vectors
  ivf-sq8             the same lists, SQ8 codes on zero-padded rows, exact re-rank
  ivf-pq              the same lists, 4-bit fast-scan PQ (1 dimension per sub-quantizer), exact re-rank
Building a variant at 1M x 300 takes 1-4 minutes per space on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from dualvec.kernel.ann import IndexSpec, build_index, ivf_nlist, padded_dim, zero_padded
from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.spaces import Space
from dualvec.kernel.truth import QuerySample, exact_truth

K = 10
VARIANTS = ("hnsw-sq8", "hnsw-flat", "hnsw-flat-shuffled", "hnswlib", "ivf-flat", "ivf-sq8", "ivf-pq")


@dataclass
class Searcher:
    """search(query (d,), setting, k) -> candidate ids (c,), best first by the index's own scores."""

    search: Callable[[np.ndarray, int, int], np.ndarray]
    exact_scores: bool


def build(variant: str, rows: np.ndarray, rerank: int) -> Searcher:
    n, d = rows.shape
    if variant == "hnswlib":
        import hnswlib
        graph = hnswlib.Index(space="ip", dim=d)
        graph.init_index(max_elements=n, M=32, ef_construction=40, random_seed=1)
        graph.add_items(rows, np.arange(n))
        graph.set_num_threads(1)

        def search_hnswlib(q, ef, k):
            graph.set_ef(max(ef, k))
            return graph.knn_query(q[None, :], k=k)[0][0].astype(np.int64)
        return Searcher(search_hnswlib, True)
    if variant == "hnsw-flat-shuffled":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 40
        for start in range(0, n, 100_000):
            index.add(np.ascontiguousarray(rows[start:start + 100_000]))
        spec = IndexSpec("hnsw", "HNSW32,Flat", 40)
    else:
        nlist = ivf_nlist(n)
        factory = {"hnsw-sq8": "HNSW32,SQ8", "hnsw-flat": "HNSW32,Flat", "ivf-flat": f"IVF{nlist},Flat",
                   "ivf-sq8": f"IVF{nlist},SQ8", "ivf-pq": f"IVF{nlist},PQ{d}x4fs"}[variant]
        kind = "hnsw" if factory.startswith("HNSW") else "ivf"
        spec = IndexSpec(kind, factory, 40 if kind == "hnsw" else 0, padded_dim(factory, d))
        index = build_index(spec, rows)
    width = max(d, spec.index_dim)
    hnsw = spec.kind == "hnsw"
    exact = factory_is_exact(spec.factory)

    def search_faiss(q, setting, k):
        query = zero_padded(q[None, :], width) if width > d else q[None, :]
        params = faiss.SearchParametersHNSW(efSearch=max(setting, k)) if hnsw else \
            faiss.SearchParametersIVF(nprobe=setting)
        return index.search(query, k if exact else k * rerank, params=params)[1][0]
    return Searcher(search_faiss, exact)


def factory_is_exact(factory: str) -> bool:
    return factory.endswith(",Flat")


def measure(searcher: Searcher, queries: np.ndarray, query_ids: np.ndarray, rows: np.ndarray,
            thresholds: np.ndarray, setting: int) -> tuple[float, float]:
    hits, times = 0, []
    for q, qid, thr in zip(queries, query_ids, thresholds):
        started = time.perf_counter()
        cand = searcher.search(q, setting, K + 1)
        if not searcher.exact_scores:  # codes: the exact re-rank is part of the query's time
            cand = cand[cand >= 0]
            cand = cand[np.argsort(-(rows[cand] @ q), kind="stable")]
        times.append(time.perf_counter() - started)
        top = cand[(cand >= 0) & (cand != qid)][:K]
        hits += int((rows[top] @ q >= thr).sum())
    return hits / (K * len(queries)), float(np.median(times) * 1e6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--variants", default="hnsw-sq8,hnsw-flat,hnsw-flat-shuffled",
                    help=f"comma separated, of {','.join(VARIANTS)}")
    ap.add_argument("--targets", default="in", help="target spaces to index: in, out or in,out")
    ap.add_argument("--settings", default="32,64,128", help="efSearch (graphs) or nprobe (IVF) values")
    ap.add_argument("--queries", type=int, default=300, help="query words per distribution")
    ap.add_argument("--rerank", type=int, default=4, help="candidates per answer re-scored for codes (4)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    settings = [int(s) for s in args.settings.split(",")]

    bundle = read_bundle(args.bundle, checksums=False)
    n = bundle.vocab_size
    rng = np.random.default_rng(args.seed)
    counts = bundle.vocab.counts.astype(np.float64)
    samples = {"uniform": rng.choice(n, size=min(args.queries, n), replace=False),
               "frequency": rng.choice(n, size=args.queries, replace=True, p=counts / counts.sum())}
    spaces = {s: np.ascontiguousarray(bundle.vectors[Space(s)]) for s in ("in", "out") if Space(s) in bundle.vectors}
    targets = [t.strip() for t in args.targets.split(",")]
    print(f"{args.bundle}: {n:,} words x {bundle.dim} dims; {args.queries} queries per distribution; no hub scan",
          flush=True)
    lines = []
    for target in targets:
        rows = spaces[target]
        truth = {(src, dist): exact_truth(rows, QuerySample(ids, spaces[src][ids]), K).thresholds
                 for src in spaces for dist, ids in samples.items()}
        for variant in variants:
            faiss.omp_set_num_threads(2)
            started = time.perf_counter()
            searcher = build(variant, rows, args.rerank)
            built = time.perf_counter() - started
            print(f"built {variant} on {target.upper()} in {built:.0f} s", flush=True)
            faiss.omp_set_num_threads(1)
            for src in spaces:
                cells = []
                for setting in settings:
                    got = [measure(searcher, spaces[src][ids], ids, rows, truth[(src, dist)], setting)
                           for dist, ids in samples.items()]
                    cells.append(f"{got[0][0]:.3f}/{got[1][0]:.3f}, {got[0][1]:.0f}/{got[1][1]:.0f} us")
                lines.append(f"| {variant} | {src.upper()}->{target.upper()} | " + " | ".join(cells)
                             + f" | {built:.0f} s |")
                print(lines[-1], flush=True)
    print(f"\nrecall@{K} uniform/by-frequency, median us per query uniform/by-frequency (one thread), "
          f"at {', '.join(str(s) for s in settings)}")
    print("| variant | pair | " + " | ".join(f"ef/nprobe {s}" for s in settings) + " | build |")
    print("|---|---|" + "---|" * (len(settings) + 1))
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
