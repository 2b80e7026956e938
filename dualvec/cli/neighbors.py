"""`dualvec neighbors`: the top-k neighbours of every word (or of a word list) in one or more space pairs, written
to a Parquet or TSV table (dualvec.kernel.neighbors does the work)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# dualvec.kernel.neighbors's limits, repeated here so that building the parser imports neither numpy nor FAISS
# (tests/test_neighbors.py checks that they agree)
DEFAULT_BATCH = 2048
MAX_K = 1000
EXACT_MAX_WORDS = 200_000

DESCRIPTION = f"""\
Write the top-k neighbours of every word (--all) or of the words of a file (--words) in one or more space pairs:
one row per (pair, word, rank) with the neighbour and its cosine, the query word left out (as Search leaves it
out). Batched FAISS calls at the bundle's tuned parameters on every CPU, or an exhaustive scan (--exact, up to
{EXACT_MAX_WORDS:,} x {EXACT_MAX_WORDS:,} queries x words). An interrupted run is resumed by running the same
command again: finished blocks are kept in OUT.partial (and OUT.partial.json) until OUT is written."""


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser("neighbors", parents=[common], help="write the top-k neighbours of many words to a table",
                       description=DESCRIPTION)
    p.add_argument("bundle")
    p.add_argument("--pair", action="append", required=True, metavar="PAIR",
                   help="query-target space pair: in-in, in-out, out-in, out-out, or all; repeat for several")
    p.add_argument("-k", type=int, default=10, help=f"neighbours per word, 1 to {MAX_K} (10)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every word of the vocabulary")
    which.add_argument("--words", metavar="FILE", help="the words of a file, one a line")
    p.add_argument("--skip-unknown", action="store_true", help="leave out --words not in the vocabulary "
                   "(default: refuse)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.parquet (or .pq) or OUT.tsv")
    p.add_argument("--exact", action="store_true", help="exhaustive search: the ground truth")
    p.add_argument("--force", action="store_true", help="replace OUT, or an unfinished run of another job")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"queries per FAISS call and per resumable block ({DEFAULT_BATCH})")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (default: every CPU)")
    p.add_argument("--measure", type=int, nargs="?", const=20_000, default=0, metavar="N",
                   help="also time the bare batched search (no table) on the blocks of about N query words per "
                        "pair (20,000), each right beside the table's own, and print both rates")
    p.add_argument("--skip-checksums", action="store_true", help="check file sizes only at load, not sha256")
    p.set_defaults(func=run_neighbors)
    return p


def run_neighbors(args: argparse.Namespace) -> int:
    from dualvec.kernel.bundle import read_bundle
    from dualvec.kernel.neighbors import (NeighborsError, NeighborsJob, NeighborTable, output_format, query_ids,
                                          read_word_list, resolve_pairs)

    output_format(args.output)  # a bad extension, or an output in the way, is refused before the bundle is read
    if Path(args.output).exists() and not args.force:
        raise NeighborsError(f"{args.output} already exists; pass --force to replace it")
    if args.measure < 0:
        from dualvec.kernel.errors import InvalidArgument

        raise InvalidArgument("--measure", f"must be >= 0, got {args.measure}")
    bundle = read_bundle(args.bundle, checksums=not args.skip_checksums)
    pairs = resolve_pairs(bundle, args.pair)
    words = read_word_list(args.words) if args.words else None
    qids, unknown = query_ids(bundle, words, skip_unknown=args.skip_unknown)
    if unknown:
        print(f"left out {unknown:,} words not in the vocabulary", file=sys.stderr)
    job = NeighborsJob(pairs, k=args.k, exact=args.exact, batch=args.batch, threads=args.threads)
    table = NeighborTable(bundle, job, qids, args.output, force=args.force, progress=not args.quiet,
                          measure=args.measure)
    try:
        report = table.run()
    except KeyboardInterrupt:
        print(f"dualvec neighbors: stopped; finished blocks are kept in {table.spool}: run the same command "
              f"again to go on", file=sys.stderr)
        raise
    if report.resumed_blocks:
        print(f"resumed after {report.resumed_blocks:,} of {report.blocks:,} blocks")
    total_queries = sum(report.queries_by_pair.values())
    rate = total_queries / report.seconds if report.seconds > 0 else float("inf")
    print(f"wrote {report.output}: {report.rows:,} rows, {len(qids):,} words x {len(pairs)} pair(s), k={job.k}, "
          f"in {report.seconds:.1f} s ({report.search_seconds:.1f} s searching, {report.render_seconds:.1f} s "
          f"writing): {rate:,.0f} queries/s")
    if report.measured:
        print_rates(report)
    return 0


def print_rates(report) -> None:
    """Each pair's rate in the table beside the bare batched search rate, on the same blocks of the same run."""
    print("rates, queries/s, on the measured blocks (each searched for the table and bare, one after the other):")
    print(f"  {'pair':8} {'queries':>9} {'table':>9} {'search':>9} {'faiss':>9} {'table/search':>13} "
          f"{'with write':>11} {'by CPU time':>12} {'table/faiss':>12}")
    write_share = report.render_seconds / report.search_seconds if report.search_seconds > 0 else 0.0
    rows = list(report.measured.items())
    if len(rows) > 1:
        rows.append(("all", [sum(values[j] for _, values in rows) for j in range(6)]))
    for pair, (queries, table_s, search_s, faiss_s, table_cpu, search_cpu) in rows:
        ratio = search_s / table_s
        cpu_ratio = search_cpu / table_cpu if table_cpu > 0 else float("nan")
        print(f"  {pair:8} {int(queries):9,} {queries / table_s:9,.0f} {queries / search_s:9,.0f} "
              f"{queries / faiss_s:9,.0f} {ratio:13.2f} {ratio / (1 + write_share):11.2f} {cpu_ratio:12.2f} "
              f"{faiss_s / table_s:12.2f}")
    print("  table: searched and spooled for the table; search: SpaceIndex.search alone at the pair's parameters "
          "(re-scoring and hub rows included); faiss: the index call alone; with write: table/search with the "
          "final write's share of the run; by CPU time: table/search counted in this process's CPU seconds "
          "(steadier than the clock on a shared host)")
