#!/usr/bin/env python3
"""Recall@k of a `dualvec neighbors` table against an exact one (`dualvec neighbors --exact`) of the same bundle,
words and k, per pair, counted as the build counts it (dualvec.kernel.truth): a row is right when its exact cosine
reaches the word's k-th best exact cosine less TIE_EPS, so ties are not held against the index.

    python scripts/neighbors_recall.py BUNDLE TABLE EXACT_TABLE

"uniform" averages over the words; "by frequency" weights each word by its corpus count. Beside them, the recall
the build recorded for the pair (on its own sample of queries).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def read_table(path: str):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if path.endswith(".tsv"):
        return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                             convert_options=pcsv.ConvertOptions(column_types={"word": "string",
                                                                              "neighbor": "string"}))
    return pq.read_table(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("table", help="the table to judge (.parquet or .tsv)")
    ap.add_argument("exact", help="the exact table of the same words and k")
    args = ap.parse_args(argv)
    import pyarrow.compute as pc

    from dualvec.kernel.bundle import read_bundle
    from dualvec.kernel.spaces import parse_pair
    from dualvec.kernel.truth import TIE_EPS

    bundle = read_bundle(args.bundle, checksums=False)
    table, exact = read_table(args.table), read_table(args.exact)
    index = bundle.vocab.index
    counts = bundle.vocab.counts.astype(np.float64)
    print(f"{'pair':8} {'words':>8} {'uniform':>8} {'by frequency':>13} {'recorded':>15}")
    for pair in dict.fromkeys(exact.column("pair").to_pylist()):
        q, t = parse_pair(pair)
        got = table.filter(pc.equal(table["pair"], pair))
        want = exact.filter(pc.equal(exact["pair"], pair))
        # the k-th best exact cosine of each word, less TIE_EPS
        words = want.column("word").to_pylist()
        cos = want.column("cosine").to_numpy()
        last = {}
        k = 0
        for w, c, r in zip(words, cos, want.column("rank").to_numpy()):
            last[w] = c
            k = max(k, int(r))
        hits = {w: 0 for w in last}
        gw = got.column("word").to_pylist()
        gn = got.column("neighbor").to_pylist()
        gr = got.column("rank").to_numpy()
        qi = np.array([index[w] for w in gw], dtype=np.int64)
        ni = np.array([index[w] for w in gn], dtype=np.int64)
        exact_cos = np.einsum("ij,ij->i", np.asarray(bundle.vectors[q][qi], np.float32),
                              np.asarray(bundle.vectors[t][ni], np.float32))
        for w, c, r in zip(gw, exact_cos, gr):
            if r <= k and w in last and c >= last[w] - TIE_EPS:
                hits[w] += 1
        rec = np.array([hits[w] / k for w in last])
        weights = np.array([counts[index[w]] for w in last])
        by_freq = float((rec * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
        tuning = bundle.pair_tuning(pair)
        recorded = (f"{tuning.recall_uniform:.3f} / {tuning.recall_frequency:.3f}"
                    if tuning.recall_uniform is not None else "-")
        print(f"{pair:8} {len(last):8,} {rec.mean():8.4f} {by_freq:13.4f} {recorded:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
