#!/usr/bin/env python
"""Same-space search (IN->IN, OUT->OUT) side by side at equal recall: index kinds for a dense vocabulary.

    python scripts/same_space.py BUNDLE [--variants default,hnsw48@80,ivfhnsw8,pca128,table]
                                        [--spaces in,out] [--queries 300] [--targets 0.95,0.97]

On a vocabulary whose rare words crowd together (scripts/check_model_profile.py --crowd-only: hundreds of words
within 0.01 of a query's 10th neighbour), a graph search must visit much of the crowd to return the true top 10.
Each variant below is built on a space's unit rows (the bundle's), searched with words of the same space, its
query-time setting swept upward until recall reaches --stop-recall, and timed in-process on one FAISS thread
(median microseconds per single-word query, its own word left out, exact re-ranking included). Recall@10 as the
benchmark counts it (dualvec.kernel.truth), for --queries words drawn uniformly and as many by corpus count.

Then, for each --targets recall, the cheapest setting of each variant whose recall reaches it on both draws is
timed again with the variants interleaved query by query (a burst of other work on a shared machine falls on
every variant alike): the table at equal recall.

Variants (M, efC, L, D, K are numbers):
  default          the bundle's own index of that space, with the pair's tuned rerank and hubs; efSearch swept
  hnswM[@efC]      HNSW with M links (2M at level 0) over SQ8 codes on zero-padded rows, efConstruction efC
                   (default 40), rows in vocabulary order, k x rerank candidates re-scored exactly; efSearch swept
  ivfhnswL         IVF with n / L lists (L rows a list on average) over an HNSW32 coarse quantizer; centroids are
                   rows drawn at random (they follow the density: a crowd gets many small lists), then one
                   k-means step; lists of full vectors scanned exactly; nprobe swept (quantizer efSearch = nprobe)
  pcaD             the rows projected on their top D principal axes (uncentred, so that inner products keep
                   their order), HNSW32 over the projections, the whole beam (efSearch rows) re-scored exactly
  tableK           a build-time table of each word's top K, filled by the default index at a swept efSearch: a
                   one-word query is a row lookup. Its recall is the default's at that efSearch; its build time is
                   the default's batched search time over the whole vocabulary (measured on a sample, on all
                   cores), its memory n x K x 8 bytes (int32 ids, float32 cosines)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from dualvec.kernel.ann import IndexSpec, SearchParams, SpaceIndex, build_index, graph_insertion_step, padded_dim
from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.spaces import Space, pair_name
from dualvec.kernel.topk import drop_query_ids
from dualvec.kernel.truth import QuerySample, exact_truth, recall_per_query

K = 10
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
NPROBE_GRID = (4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
TABLE_SAMPLE = 4096  # words searched in batches to time a table's build


@dataclass
class Variant:
    """A built index: search(query (1, d) float32, setting, k) -> (k,) int64 ids, best first by exact cosine."""

    name: str
    grid: tuple[int, ...]
    setting_name: str
    search: Callable[[np.ndarray, int, int], np.ndarray]
    build_seconds: float
    memory_bytes: int
    notes: dict = field(default_factory=dict)


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


# ------------------------------------------------------------------------------------------------ the variants
def variant_default(space_index: SpaceIndex, pair: str, tuned: SearchParams, build_seconds: float) -> Variant:
    """The bundle's own index (HNSW: efSearch swept; IVF: nprobe swept; exact: one setting)."""
    ivf = faiss.try_extract_index_ivf(space_index.index) if space_index.index is not None else None

    def params(setting: int) -> SearchParams:
        if ivf is not None:
            return SearchParams(nprobe=setting, hubs=tuned.hubs, rerank=tuned.rerank)
        return SearchParams(ef_search=setting, hubs=tuned.hubs, rerank=tuned.rerank)

    def search(q, setting, k):
        return space_index.search(q, k, params(setting), pair)[1][0]
    grid, label = (NPROBE_GRID, "nprobe") if ivf is not None else (EF_GRID, "ef")
    if space_index.index is None:
        grid, label = (0,), "exact"
    size = index_bytes(space_index.index) if space_index.index is not None else 0
    return Variant("default", grid, label, search, build_seconds, size, {"rerank": tuned.rerank, "hubs": tuned.hubs})


def variant_hnsw(rows: np.ndarray, m: int, efc: int, rerank: int, hubs: tuple[str, np.ndarray, int]) -> Variant:
    d = rows.shape[1]
    factory = f"HNSW{m},SQ8"
    started = time.perf_counter()
    index = build_index(IndexSpec("hnsw", factory, efc, padded_dim(factory, d)), rows)
    built = time.perf_counter() - started
    space_index = SpaceIndex(rows, index)
    pair, hub_ids, n_hubs = hubs
    if n_hubs:
        space_index.hubs.set(pair, hub_ids)

    def search(q, ef, k):
        return space_index.search(q, k, SearchParams(ef_search=ef, hubs=n_hubs, rerank=rerank), pair)[1][0]
    return Variant(f"hnsw{m}@{efc}", EF_GRID, "ef", search, built, index_bytes(index),
                   {"rerank": rerank, "hubs": n_hubs})


def variant_ivfhnsw(rows: np.ndarray, per_list: int, seed: int) -> Variant:
    n, d = rows.shape
    nlist = max(16, n // per_list)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()

    def quantizer_over(centroids: np.ndarray) -> faiss.IndexHNSWFlat:
        quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        quantizer.hnsw.efConstruction = 40
        start = 0
        while start < len(centroids):
            step = graph_insertion_step(start)
            quantizer.add(np.ascontiguousarray(centroids[start:start + step]))
            start += step
        quantizer.hnsw.efSearch = 64
        return quantizer

    centroids = rows[np.sort(rng.choice(n, nlist, replace=False))]  # vocabulary order: frequent words first
    quantizer = quantizer_over(centroids)
    _, assign = quantizer.search(rows, 1)  # one k-means step: each centroid becomes the mean of its rows
    order = np.argsort(assign[:, 0], kind="stable")
    owners, starts = np.unique(assign[order, 0], return_index=True)
    sums = np.zeros((nlist, d), np.float64)
    sums[owners] = np.add.reduceat(rows[order].astype(np.float64), starts, axis=0)
    filled = np.linalg.norm(sums, axis=1) > 0
    centroids = np.where(filled[:, None], sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12),
                         centroids).astype(np.float32)
    quantizer = quantizer_over(centroids)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.own_fields = False
    for start in range(0, n, 100_000):
        index.add(np.ascontiguousarray(rows[start:start + 100_000]))
    built = time.perf_counter() - started
    keep = (quantizer, index)
    params: dict[int, faiss.SearchParametersIVF] = {}

    def search(q, nprobe, k):
        fp = params.get(nprobe)
        if fp is None:
            qp = faiss.SearchParametersHNSW(efSearch=max(nprobe, 16))
            fp = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=qp)
            fp.qp = qp  # kept alive with its parent
            params[nprobe] = fp
        return keep[1].search(q, k, params=fp)[1][0]
    sizes = np.array([index.invlists.list_size(i) for i in range(nlist)])
    return Variant(f"ivfhnsw{per_list}", NPROBE_GRID, "nprobe", search, built,
                   index_bytes(quantizer) + int(n * d * 4 + n * 8),
                   {"nlist": nlist, "list_size_p50_p99": [int(np.median(sizes)), int(np.percentile(sizes, 99))]})


def variant_pca(rows: np.ndarray, dims: int, seed: int) -> Variant:
    n, d = rows.shape
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    sample = rows[np.sort(rng.choice(n, min(n, 100_000), replace=False))].astype(np.float64)
    _, vecs = np.linalg.eigh(sample.T @ sample)             # uncentred: q.x keeps its order in the projection
    axes = np.ascontiguousarray(vecs[:, ::-1][:, :dims], dtype=np.float32)
    reduced = np.ascontiguousarray(rows @ axes)
    index = faiss.IndexHNSWFlat(dims, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    start = 0
    while start < n:
        step = graph_insertion_step(start)
        index.add(reduced[start:start + step])
        start += step
    built = time.perf_counter() - started
    space_index = SpaceIndex(rows, None)
    params: dict[int, faiss.SearchParametersHNSW] = {}

    def search(q, ef, k):
        fp = params.setdefault(ef, faiss.SearchParametersHNSW(efSearch=ef))
        cand = index.search(q @ axes, max(ef, k), params=fp)[1]
        return space_index.rescore(q, cand, k)[1][0]
    kept = float(np.linalg.norm(sample @ axes, axis=1).mean())
    return Variant(f"pca{dims}", EF_GRID, "ef", search, built, index_bytes(index),
                   {"mean_norm_kept": round(kept, 3)})


# ------------------------------------------------------------------------------------------------ measuring
def run_sweep(variant: Variant, samples: dict[str, QuerySample], truths: dict, rows: np.ndarray,
              stop_recall: float, max_us: float, log) -> list[dict]:
    """Recall and median microseconds per draw at each setting of the variant's grid, upward, until both draws
    reach stop_recall or a query takes more than max_us at the median."""
    out = []
    for setting in variant.grid:
        point = {"setting": setting}
        for draw, sample in samples.items():
            found = np.empty((len(sample.ids), K), np.int64)
            times = np.empty(len(sample.ids))
            for i, (qid, q) in enumerate(zip(sample.ids, sample.vectors)):
                started = time.perf_counter()
                ids = variant.search(q[None, :], setting, K + 1)
                times[i] = time.perf_counter() - started
                found[i] = drop_query_ids(ids[None, :], np.zeros((1, len(ids)), np.float32), np.array([qid]), K)[0]
            point[draw] = {"recall": float(recall_per_query(rows, sample, truths[draw], found).mean()),
                           "us": float(np.median(times) * 1e6)}
        out.append(point)
        log(f"  {variant.name} {variant.setting_name} {setting}: " + ", ".join(
            f"{d} {point[d]['recall']:.3f} {point[d]['us']:.0f} us" for d in samples))
        if min(point[d]["recall"] for d in samples) >= stop_recall:
            break
        if max(point[d]["us"] for d in samples) > max_us:
            break
    return out


def cheapest(sweep: list[dict], target: float, draws) -> dict | None:
    return next((p for p in sweep if min(p[d]["recall"] for d in draws) >= target), None)


def interleaved_times(searches: dict[str, Callable[[np.ndarray], object]], samples: dict[str, QuerySample],
                      rounds: int) -> dict[str, dict[str, float]]:
    """Median microseconds per draw of each search, the searches asked in turn query by query."""
    times = {name: {draw: [] for draw in samples} for name in searches}
    for _ in range(rounds):
        for draw, sample in samples.items():
            for q in sample.vectors:
                for name, fn in searches.items():
                    started = time.perf_counter()
                    fn(q[None, :])
                    times[name][draw].append(time.perf_counter() - started)
    return {name: {d: float(np.median(v) * 1e6) for d, v in per.items()} for name, per in times.items()}


def table_build_seconds(default: Variant, rows: np.ndarray, n: int, setting: int, threads: int) -> float:
    """Seconds to fill a table of every word's top k by the default index at ``setting``, on ``threads`` FAISS
    threads in batches of 2,048 words (as `dualvec neighbors` fills one): TABLE_SAMPLE words timed, scaled to n."""
    rng = np.random.default_rng(11)
    ids = np.sort(rng.choice(n, min(n, TABLE_SAMPLE), replace=False))
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        started = time.perf_counter()
        for start in range(0, len(ids), 2048):
            default.search(np.ascontiguousarray(rows[ids[start:start + 2048]]), setting, K + 1)
        spent = time.perf_counter() - started
    finally:
        faiss.omp_set_num_threads(saved)
    return spent * n / len(ids)


def parse_variant(text: str) -> tuple[str, tuple[int, ...]]:
    for kind, pattern in (("default", r"default"), ("hnsw", r"hnsw(\d+)(?:@(\d+))?"), ("ivfhnsw", r"ivfhnsw(\d+)"),
                          ("pca", r"pca(\d+)"), ("table", r"table(\d*)")):
        m = re.fullmatch(pattern, text)
        if m:
            return kind, tuple(int(g) for g in m.groups() if g)
    raise ValueError(f"unknown variant {text!r}: default, hnswM[@efC], ivfhnswL, pcaD or tableK")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--variants", default="default,hnsw48@80,ivfhnsw8,pca128,table16")
    ap.add_argument("--spaces", default="in,out", help="spaces whose same-space pair is measured")
    ap.add_argument("--queries", type=int, default=300, help="query words per draw")
    ap.add_argument("--targets", default="0.95,0.97", help="recall levels of the equal-recall table")
    ap.add_argument("--stop-recall", type=float, default=0.985, help="a sweep stops once both draws reach this")
    ap.add_argument("--max-us", type=float, default=6000.0, help="a sweep stops past this median time")
    ap.add_argument("--rerank", type=int, default=2, help="re-rank depth of the hnswM variants (k x rerank)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries in the interleaved timing")
    ap.add_argument("--threads", type=int, default=2, help="FAISS threads to build (queries use one)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)
    try:
        kinds = [(v.strip(), *parse_variant(v.strip())) for v in args.variants.split(",") if v.strip()]
    except ValueError as exc:
        ap.error(str(exc))
    targets = [float(t) for t in args.targets.split(",")]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    bundle = read_bundle(args.bundle, checksums=False)
    n = bundle.vocab_size
    rng = np.random.default_rng(args.seed)
    counts = bundle.vocab.counts.astype(np.float64)
    draws = {"uniform": np.sort(rng.choice(n, size=min(args.queries, n), replace=False)),
             "frequency": rng.choice(n, size=args.queries, replace=True, p=counts / counts.sum())}
    print(f"{args.bundle}: {n:,} words x {bundle.dim} dims; {args.queries} queries per draw, one FAISS thread",
          flush=True)
    result = {"bundle": str(args.bundle), "n": n, "dim": bundle.dim, "queries": args.queries, "pairs": {}}
    for name in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        space = Space(name)
        pair = pair_name(space, space)
        rows = np.ascontiguousarray(bundle.vectors[space])
        samples = {d: QuerySample(ids.astype(np.int64), np.ascontiguousarray(rows[ids])) for d, ids in draws.items()}
        truths = {d: exact_truth(rows, s, K) for d, s in samples.items()}
        tuned = bundle.pair_tuning(pair).params
        own = bundle.spaces[space]
        own_build = bundle.manifest.indexes[name].build_seconds
        hub_ids = own.hubs.ids(pair)
        log(f"{pair.upper()}: tuned {tuned}, {len(hub_ids)} hubs stored")
        variants: list[Variant] = []
        for label, kind, nums in kinds:
            faiss.omp_set_num_threads(args.threads)
            log(f"building {label} on {name.upper()}")
            if kind in ("default", "table"):
                if not any(v.name == "default" for v in variants):
                    variants.append(variant_default(own, pair, tuned, own_build))
                continue
            if kind == "hnsw":
                m, efc = nums[0], (nums[1] if len(nums) > 1 else 40)
                variants.append(variant_hnsw(rows, m, efc, args.rerank, (pair, hub_ids, tuned.hubs)))
            elif kind == "ivfhnsw":
                variants.append(variant_ivfhnsw(rows, nums[0], args.seed))
            elif kind == "pca":
                variants.append(variant_pca(rows, nums[0], args.seed))
            log(f"  built in {variants[-1].build_seconds:.0f} s, {variants[-1].memory_bytes / 2**20:,.0f} MiB")
        faiss.omp_set_num_threads(1)
        sweeps = {v.name: run_sweep(v, samples, truths, rows, args.stop_recall, args.max_us, log) for v in variants}
        entry = {"tuned": tuned.to_dict(), "variants": {}, "equal_recall": {}}
        for v in variants:
            entry["variants"][v.name] = {"build_seconds": round(v.build_seconds, 1), "memory_mib":
                                         round(v.memory_bytes / 2**20, 1), "notes": v.notes, "sweep": sweeps[v.name]}
        tables = [(label, nums[0] if nums else 16) for label, kind, nums in kinds if kind == "table"]
        for target in targets:
            chosen = {v.name: cheapest(sweeps[v.name], target, samples) for v in variants}
            searches = {name_: (lambda q, v=v, s=p["setting"]: v.search(q, s, K + 1))
                        for v in variants for name_, p in [(v.name, chosen[v.name])] if p is not None}
            rows_out = {}
            if tables and chosen.get("default") is not None:
                table_k = tables[0][1]
                lookup = np.zeros((n, table_k), np.int32)  # a lookup is a row read: time it on a real array
                searches[f"table{table_k}"] = lambda q, qid=[0]: lookup[qid[0]]
            times = interleaved_times(searches, samples, args.rounds)
            for v in variants:
                p = chosen[v.name]
                rows_out[v.name] = None if p is None else {
                    "setting": p["setting"], "recall": {d: p[d]["recall"] for d in samples}, "us": times[v.name],
                    "build_seconds": round(v.build_seconds, 1), "memory_mib": round(v.memory_bytes / 2**20, 1)}
            for label, table_k in tables:
                p = chosen.get("default")
                if p is None:
                    continue
                build_s = table_build_seconds(next(v for v in variants if v.name == "default"), rows, n,
                                              p["setting"], args.threads)
                rows_out[label] = {"setting": p["setting"], "recall": {d: p[d]["recall"] for d in samples},
                                   "us": times.get(f"table{table_k}"), "build_seconds": round(build_s, 1),
                                   "memory_mib": round(n * table_k * 8 / 2**20, 1)}
            entry["equal_recall"][str(target)] = rows_out
        result["pairs"][pair] = entry
        report(pair, entry, targets)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nreproduce: python scripts/same_space.py {args.bundle} --variants {args.variants} --spaces {args.spaces} "
          f"--queries {args.queries} --targets {args.targets} --seed {args.seed}")
    return 0


def report(pair: str, entry: dict, targets: list[float]) -> None:
    print(f"\n{pair.upper()} (tuned {entry['tuned']}): sweep, recall@{K} uniform/by frequency, median us "
          f"uniform/by frequency")
    print("| variant | build s | MiB | " + " | ".join(["setting: recall, us"] * 1) + " |")
    print("|---|---|---|---|")
    for name, v in entry["variants"].items():
        cells = "; ".join(f"{p['setting']}: {p['uniform']['recall']:.3f}/{p['frequency']['recall']:.3f}, "
                          f"{p['uniform']['us']:.0f}/{p['frequency']['us']:.0f}" for p in v["sweep"])
        print(f"| {name} | {v['build_seconds']:.0f} | {v['memory_mib']:,.0f} | {cells} |")
    for target in targets:
        print(f"\n{pair.upper()} at recall >= {target} on both draws (times taken interleaved):")
        print("| variant | setting | recall uniform / by frequency | us uniform / by frequency | build s | MiB |")
        print("|---|---|---|---|---|---|")
        for name, r in entry["equal_recall"][str(target)].items():
            if r is None:
                print(f"| {name} | not reached | | | | |")
                continue
            us = r["us"]
            us_text = f"{us['uniform']:.0f} / {us['frequency']:.0f}" if us else "-"
            print(f"| {name} | {r['setting']} | {r['recall']['uniform']:.3f} / {r['recall']['frequency']:.3f} | "
                  f"{us_text} | {r['build_seconds']:,.0f} | {r['memory_mib']:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
