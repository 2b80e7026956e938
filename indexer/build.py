"""Turn a model's two spaces into a bundle: normalize, index each space, tune each pair, write atomically."""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from dualvec.kernel.ann import IndexSpec, SearchParams, SpaceIndex, build_index, choose_spec
from dualvec.kernel.bundle import BundleWriter, answer_files, hubs_file, index_file, norms_file, vectors_file
from dualvec.kernel.errors import ModelError
from dualvec.kernel.hubs import find_hubs, hub_cap
from dualvec.kernel.manifest import BuildRecord, IndexEntry, Manifest, PairEntry
from dualvec.kernel.truth import QuerySample, draw_ids, exact_truth, frequency_weights
from dualvec.indexer.answer_tables import PairToFill, TableConfig, fill_tables
from dualvec.indexer.normalize import normalize_rows
from dualvec.indexer.source_model import SourceModel, duplicate_words
from dualvec.indexer.tuning import TuningConfig, tune_pair
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name
from dualvec.kernel.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """Options of `dualvec build`, fixed once at the edge."""

    index: str = "auto"
    in_only: bool = False
    force: bool = False
    quiet: bool = False
    tokenizer: str | None = None  # overrides what the source recorded; default "simple"
    seed: int = 1234
    threads: int = 0  # FAISS threads while building (0 = all cores)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    tables: TableConfig = field(default_factory=TableConfig)


def check_words(words: list[str]) -> None:
    """Words must be non-empty, unique, and free of tab and newline (the vocabulary file is TSV)."""
    if not words:
        raise ModelError("the vocabulary is empty")
    bad = [w for w in words if not w or "\t" in w or "\n" in w or "\r" in w]
    if bad:
        raise ModelError(f"words with tab, newline or nothing in them cannot be stored: "
                         f"{', '.join(map(repr, bad[:10]))}")
    dups = duplicate_words(words)
    if dups:
        raise ModelError(f"duplicate words: {', '.join(map(repr, dups[:10]))}")


def peak_memory_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_bundle(source: SourceModel, target: str | Path, cfg: BuildConfig) -> Manifest:
    """Build a bundle from ``source`` at ``target``; return its manifest. Nothing is left at target on failure."""
    started = time.perf_counter()
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    check_words(source.words)
    if source.out_vectors is None and not cfg.in_only:
        raise ModelError("the source has no OUT space; pass --in-only to build an IN-only bundle")
    n, dim = source.in_vectors.shape
    spaces_raw = {Space.IN: source.in_vectors}
    if source.out_vectors is not None and not cfg.in_only:
        spaces_raw[Space.OUT] = source.out_vectors
    tokenizer = Tokenizer(cfg.tokenizer) if cfg.tokenizer else Tokenizer.from_dict(source.tokenizer)
    timings: dict[str, float] = {}
    with BundleWriter(target, force=cfg.force) as writer:
        writer.write_vocab(source.words, source.counts)
        units: dict[Space, np.ndarray] = {}
        indexes: dict[Space, faiss.Index | None] = {}
        specs: dict[Space, IndexSpec] = {}
        index_meta: dict[str, IndexEntry] = {}
        for space, raw in spaces_raw.items():
            t0 = time.perf_counter()
            with tqdm(total=n, desc=f"normalize {space.value.upper()}", unit="row", disable=cfg.quiet or None,
                      leave=False) as bar:
                unit, norms = normalize_rows(raw, source.words, space.value, progress=bar.update)
            writer.write_array(vectors_file(space), unit)
            writer.write_array(norms_file(space), norms)
            spec = choose_spec(cfg.index, n, dim)
            log.info("building %s index: %s", space.value.upper(), spec.describe())
            with tqdm(total=1, desc=f"index {space.value.upper()} ({spec.describe()})", disable=cfg.quiet or None,
                      leave=False, bar_format="{desc}: {elapsed}") as bar:
                index = build_index(spec, unit, seed=cfg.seed,
                                    progress=lambda msg: bar.set_postfix_str(msg, refresh=True))
                bar.update(1)
            if index is not None:
                writer.write_index(index_file(space), index)
            units[space], indexes[space], specs[space] = unit, index, spec
            timings[space.value] = round(time.perf_counter() - t0, 3)
            index_meta[space.value] = IndexEntry(spec, spec.describe(), timings[space.value],
                                                 index_file(space) if index is not None else None)
        t_tune = time.perf_counter()
        pairs, hub_arrays = tune_all_pairs(source, units, indexes, cfg)
        for pname, hubs in hub_arrays.items():
            writer.write_array(hubs_file(pname), hubs)
        timings["tuning"] = round(time.perf_counter() - t_tune, 3)
        pairs = fill_answer_tables(pairs, hub_arrays, units, indexes, cfg, writer)
        if any(entry.answer_rows for entry in pairs.values()):
            timings["answer_tables"] = max(entry.answer_seconds for entry in pairs.values())
            t_tail = time.perf_counter()
            pairs = tune_tails(source, pairs, hub_arrays, units, indexes, cfg)
            timings["tuning_past_tables"] = round(time.perf_counter() - t_tail, 3)
        if source.docfreq is not None:
            writer.write_docfreq(*source.docfreq)
        manifest = Manifest(
            vocab_size=n, dim=dim, spaces=[s.value for s in spaces_raw], indexes=index_meta, files={},
            source=source.source, pairs=pairs, tuning=cfg.tuning, tokenizer=tokenizer.to_dict(),
            counts_known=bool(np.any(source.counts)),
            build=BuildRecord(seconds=round(time.perf_counter() - started, 3), phases=timings,
                              peak_memory_mib=round(peak_memory_mib(), 1), faiss_threads=faiss.omp_get_max_threads(),
                              faiss_version=faiss.__version__))
        writer.commit(manifest)
    return writer.manifest  # as written: with format, version, creation time and file checksums


def fill_answer_tables(pairs: dict[str, PairEntry], hub_arrays: dict[str, np.ndarray],
                       units: dict[Space, np.ndarray], indexes: dict[Space, faiss.Index | None], cfg: BuildConfig,
                       writer: BundleWriter) -> dict[str, PairEntry]:
    """Fill and write the answer tables of every indexed pair (dualvec.indexer.answer_tables); returns the pair
    entries with the words each table covers."""
    to_fill = []
    for pname, entry in pairs.items():
        q, t = (Space(s) for s in pname.split("-"))
        if entry.exact or indexes.get(t) is None:
            continue
        target = SpaceIndex(units[t], indexes[t], {pname: hub_arrays[pname]})
        to_fill.append(PairToFill(pname, units[q], target, entry.params))
    if not to_fill or not cfg.tables.enabled:
        return pairs
    n = next(iter(units.values())).shape[0]
    total = n if cfg.tables.words is None else min(n, cfg.tables.words)
    budget = "" if cfg.tables.words is not None else f", up to {cfg.tables.seconds:.0f} s"
    with tqdm(total=total, desc=f"answer tables ({len(to_fill)} pairs{budget})", unit="word",
              disable=cfg.quiet or None, leave=False) as bar:
        tables, seconds = fill_tables(to_fill, n, cfg.tables, progress=lambda done: bar.update(done - bar.n))
    out = dict(pairs)
    for pname, table in tables.items():
        if not table.rows:
            continue
        ids_name, scores_name = answer_files(pname)
        writer.write_array(ids_name, table.ids)
        writer.write_array(scores_name, table.scores)
        out[pname] = replace(pairs[pname], answer_rows=table.rows, answer_seconds=round(seconds, 3))
    return out


def tune_tails(source: SourceModel, pairs: dict[str, PairEntry], hub_arrays: dict[str, np.ndarray],
               units: dict[Space, np.ndarray], indexes: dict[Space, faiss.Index | None],
               cfg: BuildConfig) -> dict[str, PairEntry]:
    """Tune each pair again for the one-word queries its answer table leaves to the index: the words past the
    table, drawn uniformly and by frequency among themselves, against the same target. Frequent words often need
    far more of a cross-space search than rare ones (hub rows, a wider beam); with the frequent words answered from
    the table, the rest can be searched for what they need. Kept only when cheaper than the pair's own parameters
    (timed alike, on uniform draws)."""
    tc = cfg.tuning
    n = len(source.words)
    rng = np.random.default_rng(tc.seed + 1)
    out = dict(pairs)
    for pname, entry in pairs.items():
        rows = entry.answer_rows
        q, t = (Space(s) for s in pname.split("-"))
        if not rows or rows >= n or indexes.get(t) is None:
            continue
        tail_n = n - rows
        weights = frequency_weights(source.counts[rows:])
        held_u = rows + draw_ids(tail_n, tc.eval_queries, rng)
        tune_u = rows + draw_ids(tail_n, tc.tune_queries, rng, exclude=held_u - rows)
        ids = {"held": {"uniform": held_u, "frequency": rows + draw_ids(tail_n, tc.eval_queries, rng, weights=weights)},
               "tune": {"uniform": tune_u, "frequency": rows + draw_ids(tail_n, tc.tune_queries, rng, weights=weights)}}
        sample = {role: {d: QuerySample(i, np.ascontiguousarray(units[q][i])) for d, i in group.items()}
                  for role, group in ids.items()}
        truth = {role: {d: exact_truth(units[t], smp, tc.k) for d, smp in group.items()}
                 for role, group in sample.items()}
        target = SpaceIndex(units[t], indexes[t], {pname: hub_arrays[pname]})
        with tqdm(desc=f"tune {pname.upper()} past its table", unit="cfg", disable=cfg.quiet or None,
                  leave=False) as bar:
            def report(params: SearchParams, r: float, us: float) -> None:
                bar.set_postfix_str(f"{params} recall {r:.3f} {us:.0f}us", refresh=False)
                bar.update(1)
            result = tune_pair(target, pname, sample["tune"], truth["tune"], sample["held"], truth["held"], tc,
                               progress=report)
        if not result.reached_target:  # the pair's own parameters then: they reached it over every word
            log.warning("%s past its table: best recall@%d %.3f / %.3f is below the target; its own parameters "
                        "are kept", pname.upper(), tc.k, result.recall_uniform, result.recall_frequency)
            continue
        tail_us = round(result.microseconds, 1)  # as the pair's own time is recorded
        if entry.microseconds_per_query is not None and tail_us >= entry.microseconds_per_query:
            # the words past the table need as much as any (a same-space crowd of rare words): the pair's own
            # parameters, which reached the target over draws of the whole vocabulary, cost no more
            log.info("%s past its table: %s at %.0f us is no cheaper than its own %s; those are kept",
                     pname.upper(), result.params, result.microseconds, entry.params)
            continue
        out[pname] = replace(entry, tail_params=result.params, tail_recall_uniform=round(result.recall_uniform, 4),
                             tail_recall_frequency=round(result.recall_frequency, 4),
                             tail_microseconds_per_query=round(result.microseconds, 1))
        log.info("%s past its table: %s recall@%d uniform %.3f frequency %.3f, %.0f us/query", pname.upper(),
                 result.params, tc.k, result.recall_uniform, result.recall_frequency, result.microseconds)
    return out


def tune_all_pairs(source: SourceModel, units: dict[Space, np.ndarray], indexes: dict[Space, faiss.Index | None],
                   cfg: BuildConfig) -> tuple[dict[str, PairEntry], dict[str, np.ndarray]]:
    """Tune every pair whose target space has an ANN index; exact spaces get recall 1 by construction."""
    tc = cfg.tuning
    n = len(source.words)
    rng = np.random.default_rng(tc.seed)
    weights = frequency_weights(source.counts)
    pairs: dict[str, PairEntry] = {}
    hub_arrays: dict[str, np.ndarray] = {}
    samples: dict[Space, dict[str, dict[str, QuerySample]]] = {}
    for space, unit in units.items():
        held_u = draw_ids(n, tc.eval_queries, rng)
        tune_u = draw_ids(n, tc.tune_queries, rng, exclude=held_u)
        hub_u = draw_ids(n, tc.hub_queries // 2, rng, exclude=np.concatenate([held_u, tune_u]))
        ids = {"held": {"uniform": held_u, "frequency": draw_ids(n, tc.eval_queries, rng, weights=weights)},
               "tune": {"uniform": tune_u, "frequency": draw_ids(n, tc.tune_queries, rng, weights=weights)},
               "hub": {"mixed": np.concatenate([hub_u, draw_ids(n, tc.hub_queries // 2, rng, weights=weights)])}}
        samples[space] = {role: {d: QuerySample(i, np.ascontiguousarray(unit[i])) for d, i in group.items()}
                          for role, group in ids.items()}
    for q, t in ALL_PAIRS:
        if q not in units or t not in units:
            continue
        pname = pair_name(q, t)
        if indexes[t] is None:
            pairs[pname] = PairEntry(recall_uniform=1.0, recall_frequency=1.0, reached_target=True, exact=True)
            continue
        target = SpaceIndex(units[t], indexes[t])
        log.info("tuning %s: ground truth and hubs", pname.upper())
        hubs = find_hubs(units[t], samples[q]["hub"]["mixed"], tc.hub_depth, hub_cap(n, tc.max_hubs))
        target.hubs.set(pname, hubs)
        held = samples[q]["held"]
        tune = samples[q]["tune"]
        held_truth = {d: exact_truth(units[t], s, tc.k) for d, s in held.items()}
        tune_truth = {d: exact_truth(units[t], s, tc.k) for d, s in tune.items()}
        with tqdm(desc=f"tune {pname.upper()}", unit="cfg", disable=cfg.quiet or None, leave=False) as bar:
            def report(params: SearchParams, r: float, us: float) -> None:
                bar.set_postfix_str(f"{params} recall {r:.3f} {us:.0f}us", refresh=False)
                bar.update(1)
            result = tune_pair(target, pname, tune, tune_truth, held, held_truth, tc, progress=report)
        hub_arrays[pname] = hubs  # all of them, so that the pair can be re-tuned without a rebuild
        pairs[pname] = PairEntry(result.params, round(result.recall_uniform, 4), round(result.recall_frequency, 4),
                                 result.reached_target, microseconds_per_query=round(result.microseconds, 1),
                                 hubs_found=int(len(hubs)), sweep=result.sweep)
        if not result.reached_target:
            log.warning("%s: best recall@%d %.3f / %.3f is below the target %.2f", pname.upper(), tc.k,
                        result.recall_uniform, result.recall_frequency, tc.target_recall)
        log.info("%s: %s recall@%d uniform %.3f frequency %.3f, %.0f us/query", pname.upper(), result.params,
                 tc.k, result.recall_uniform, result.recall_frequency, result.microseconds)
    return pairs, hub_arrays
