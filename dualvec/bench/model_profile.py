#!/usr/bin/env python
"""Per-pair ANN recall profile of a two-space model, to compare a synthetic model with a real one (DESIGN.md 1).

For each space (IN, OUT; rows L2-normalized, inner product) builds one FAISS index (default HNSW32,
efConstruction 40; or --index IVF4096,Flat) and measures recall@10 against exact search for the four pairs
IN->IN, IN->OUT, OUT->IN, OUT->OUT at several efSearch (or nprobe) values. Queries: --queries words drawn
uniformly from the vocabulary, and as many drawn by word frequency. The query word is left out of both lists; a
returned word is a hit when its exact cosine >= the 10th best exact cosine - 1e-4 (ann-benchmarks' rule).
Also prints hub statistics: distinct words in the exact top-10 lists and the mean exact top-10 cosine, and the
median single-query time (one thread) at each setting.

HNSW insertion order (--insertion): "vocab" adds the rows in vocabulary order (most frequent first) in the small
calls dualvec's build makes (dualvec.kernel.ann.graph_insertion_step); "shuffled" adds them in one call, which FAISS
shuffles within each level. Compare both on one model to see what the order does to cross-space recall.

The crowd table (--crowd-queries per draw, exact scan, no index): per pair and query draw, the median exact top-1
and 10th cosine, and how many words lie within 0.01 and within 0.05 of the 10th (median / p90; the top 10
included, the query word left out). Where hundreds of words sit within 0.01 of the 10th, a graph search must visit
a large part of that crowd to return the true top 10: this is what makes a model's same-space pairs slow.
--crowd-only prints that table alone (minutes at 1M words instead of building two indexes).

MODEL_DIR holds model.model (gensim full model) or in.bin + out.bin; a model file may be given directly.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualvec.indexer.normalize import normalize_rows
from dualvec.kernel.topk import drop_query_ids
from dualvec.kernel.truth import QuerySample, exact_truth, recall

PAIRS = [("IN", "IN"), ("IN", "OUT"), ("OUT", "IN"), ("OUT", "OUT")]
CROWD_MARGINS = (0.01, 0.05)
# score rows held at once by the crowd scan: 32M float32 (128 MiB) whatever the vocabulary size
CROWD_CHUNK_SCORES = 32_000_000


@dataclass
class Crowd:
    """Exact neighbourhood of m queries in one target space: top1 (m,) and kth (m,) float32, the best and k-th
    best exact cosines (the query word left out); within[margin] (m,) int64, how many target rows (the query word
    left out) score at least kth - margin, the top k included."""

    top1: np.ndarray
    kth: np.ndarray
    within: dict[float, np.ndarray]


def crowd(rows: np.ndarray, queries: np.ndarray, query_ids: np.ndarray, k: int = 10,
          margins: tuple[float, ...] = CROWD_MARGINS) -> Crowd:
    """The crowd around each query's k-th neighbour, by an exact scan of every row (counting rows within a
    margin needs each query's whole score row, so the scan goes a few queries at a time).
    rows: (n, d) float32 unit rows of the target space; queries: (m, d) float32; query_ids: (m,) int64."""
    n = rows.shape[0]
    m = len(query_ids)
    step = max(1, min(m, CROWD_CHUNK_SCORES // max(n, 1)))
    top1 = np.empty(m, np.float32)
    kth = np.empty(m, np.float32)
    within = {mg: np.empty(m, np.int64) for mg in margins}
    kk = min(k, n - 1)
    for start in range(0, m, step):
        stop = min(m, start + step)
        scores = np.asarray(queries[start:stop], np.float32) @ rows.T          # (c, n)
        own = np.asarray(query_ids[start:stop])
        scores[np.arange(stop - start), own] = -np.inf                          # the query word is left out
        part = np.partition(scores, n - kk, axis=1)
        kth[start:stop] = part[:, n - kk]
        top1[start:stop] = scores.max(axis=1)
        for mg in margins:
            within[mg][start:stop] = (scores >= kth[start:stop, None] - mg).sum(axis=1)
    return Crowd(top1, kth, within)


def crowd_table(X: dict[str, np.ndarray], qsets: dict[str, np.ndarray], k: int, queries: int,
                margins: tuple[float, ...] = CROWD_MARGINS, progress=None) -> list[str]:
    """The crowd table's markdown lines: one row per query draw and pair, the first ``queries`` ids of each draw."""
    lines = ["| queries | pair | top-1 cosine (median) | 10th cosine (median) | "
             + " | ".join(f"words within {mg:g} of the 10th (median / p90)" for mg in margins) + " |",
             "|---|---|---|---|" + "---|" * len(margins)]
    for qname, ids in qsets.items():
        ids = np.asarray(ids[:queries], np.int64)
        for src, dst in PAIRS:
            started = time.perf_counter()
            c = crowd(X[dst], X[src][ids], ids, k, margins)
            cells = [f"{np.median(c.top1):.3f}", f"{np.median(c.kth):.3f}"]
            cells += [f"{np.median(c.within[mg]):,.0f} / {np.percentile(c.within[mg], 90):,.0f}" for mg in margins]
            lines.append(f"| {qname} | {src}->{dst} | " + " | ".join(cells) + " |")
            if progress:
                progress(f"{lines[-1]}  ({time.perf_counter() - started:.0f}s)")
    return lines


def load(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    if path.is_dir():
        if (path / "model.model").exists():
            path = path / "model.model"
        else:
            from dualvec.indexer.word2vec_format import read_word2vec
            w, a = read_word2vec(path / "in.bin")
            w2, b = read_word2vec(path / "out.bin")
            assert w == w2, "in.bin and out.bin differ in their words"
            return w, a, b, None
    from gensim.models import Word2Vec
    m = Word2Vec.load(str(path))
    words = list(m.wv.index_to_key)
    counts = np.array([m.wv.get_vecattr(w, "count") for w in words], dtype=np.float64)
    return words, m.wv.vectors, m.syn1neg, counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="MODEL_DIR (model.model, or in.bin + out.bin) or a gensim model file")
    ap.add_argument("--index", default="HNSW32", help="HNSW32 (default) or a FAISS IVF factory string")
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef", default="", help="efSearch / nprobe values, comma separated (default: 32,64,128 "
                    "below 200k words, 64,256,1024 above; IVF: 16,64,256)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--insertion", choices=("vocab", "shuffled"), default="vocab",
                    help="HNSW insertion order (default vocab: dualvec's build)")
    ap.add_argument("--crowd-queries", type=int, default=200,
                    help="queries per draw for the crowd table (exact scan of every row; 0 = no crowd table)")
    ap.add_argument("--crowd-only", action="store_true", help="print the crowd table alone (no index is built)")
    args = ap.parse_args(argv)

    import faiss
    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    words, vin, vout, counts = load(Path(args.model))
    n, d = vin.shape
    X = {"IN": normalize_rows(vin, words, "in")[0], "OUT": normalize_rows(vout, words, "out")[0]}
    del vin, vout
    print(f"{args.model}: {n:,} words x {d} dims (loaded in {time.perf_counter() - t0:.0f}s)", flush=True)
    ivf = args.index.upper().startswith("IVF")
    if args.ef:
        efs = [int(v) for v in args.ef.split(",")]
    else:
        efs = [16, 64, 256] if ivf else ([32, 64, 128] if n < 200_000 else [64, 256, 1024])

    rng = np.random.default_rng(args.seed)
    qsets = {"uniform": rng.choice(n, size=min(args.queries, n), replace=False)}
    if counts is not None:
        qsets["by-frequency"] = rng.choice(n, size=args.queries, replace=True, p=counts / counts.sum())
    else:
        print("(no counts in in.bin/out.bin: by-frequency queries skipped)")

    k = args.k
    if args.crowd_queries > 0:
        print(f"\ncrowd around the {k}th exact neighbour, {args.crowd_queries} queries per draw, exact scan",
              flush=True)
        table = crowd_table(X, qsets, k, args.crowd_queries, progress=lambda line: print(line, file=sys.stderr,
                                                                                          flush=True))
        print("\n".join(table), flush=True)
    if args.crowd_only:
        print(f"\n(total {time.perf_counter() - t0:.0f}s)")
        return 0
    indexes = {}
    for sp in ("IN", "OUT"):
        t = time.perf_counter()
        if ivf:
            index = faiss.index_factory(d, args.index, faiss.METRIC_INNER_PRODUCT)
            train = X[sp][rng.choice(n, size=min(n, 100_000 if n > 100_000 else n), replace=False)]
            index.train(train)
        else:
            m = int(args.index.upper().replace("HNSW", "") or 32)
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = args.ef_construction
        if ivf or args.insertion == "shuffled":
            index.add(X[sp])
        else:
            from dualvec.kernel.ann import graph_insertion_step
            start = 0
            while start < n:
                step = graph_insertion_step(start)
                index.add(X[sp][start:start + step])
                start += step
        indexes[sp] = index
        print(f"built {args.index} on {sp} in {time.perf_counter() - t:.0f}s", flush=True)

    results = {}
    micros = {}
    hubs = {}
    for qname, qids in qsets.items():
        for src, dst in PAIRS:
            Q = X[src][qids]
            truth = exact_truth(X[dst], QuerySample(qids, Q), k)
            gt_ids, gt_sc, thr = truth.ids, truth.scores, truth.thresholds
            hubs[(qname, src, dst)] = (len(np.unique(gt_ids)), float(gt_sc.mean()))
            for ef in efs:
                idx = indexes[dst]
                if ivf:
                    faiss.extract_index_ivf(idx).nprobe = ef
                else:
                    idx.hnsw.efSearch = max(ef, k + 1)
                _, I = idx.search(Q, k + 1)
                faiss.omp_set_num_threads(1)
                times = []
                for row in Q[: min(len(Q), 200)]:
                    started = time.perf_counter()
                    idx.search(row[None, :], k + 1)
                    times.append(time.perf_counter() - started)
                faiss.omp_set_num_threads(args.threads)
                micros[(qname, src, dst, ef)] = float(np.median(times) * 1e6)
                results[(qname, src, dst, ef)] = recall(X[dst], QuerySample(qids, Q), truth, drop_query_ids(
                    I, np.zeros(I.shape, np.float32), qids, k)[0])

    label = "nprobe" if ivf else "ef"
    for qname in qsets:
        order = "" if ivf else f", {args.insertion} insertion"
        print(f"\nrecall@{k} (median single-query microseconds), {args.index}{order}, {len(qsets[qname])} "
              f"queries drawn {qname}")
        print("| pair | " + " | ".join(f"{label}={e}" for e in efs) + " | distinct in top-10 | mean top-10 cos |")
        print("|---|" + "---|" * (len(efs) + 2))
        for src, dst in PAIRS:
            dist, mc = hubs[(qname, src, dst)]
            print(f"| {src} -> {dst} | " + " | ".join(f"{results[(qname, src, dst, e)]:.3f} ({micros[(qname, src, dst, e)]:.0f})"
                                                  for e in efs)
                  + f" | {dist} / {k * len(qsets[qname])} | {mc:.3f} |")
    print(f"\n(total {time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
