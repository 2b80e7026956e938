#!/usr/bin/env python
"""Make a realistic two-space (IN and OUT) word2vec model of about N words x D dims, for benchmarks.

How the data are made
---------------------
The vectors come from real word2vec training (gensim Word2Vec, skip-gram, negative sampling, hs=0), so that the IN
rows (model.wv.vectors) and the OUT rows (model.syn1neg) have the structure of a real model's, including the
cross-space structure and the hubs that make IN->OUT / OUT->IN search hard. Only the corpus is synthetic:

1. Base text: real text that ships inside the installed gensim wheel (gensim/test/test_data): the shortened
   English Wikipedia dump (wiki markup stripped with gensim.corpora.wikicorpus), lee_background.cor (news) and
   head500.noblanks.cor (stemmed Wikipedia). About 0.86M tokens, ~80k distinct words. Nothing is downloaded.
2. Enlargement with rare words in real contexts: the base text is emitted P times (each pass in a new random
   line order). A large vocabulary is mostly rare words (the real 1M-word model has median count 4), so V "rare
   variants" of base words are made (`river~17`): each gets a count c >= min_count drawn from a heavy tail
   P(c) ~ c^-s (s=2.5 gives median 4 at min_count 3), a base word drawn in proportion to its number of
   occurrences (the --skip-top most frequent words, function words, get none), and takes the place of c randomly
   chosen occurrences of that base word across the P passes, so it is trained in c real contexts of its base
   word. Every base word loses the same share of its occurrences
   (at most --max-share). V = N - (base words kept), so with min_count the
   vocabulary has exactly N words (for small N only the N*base-share most frequent base words are kept; the
   others are dropped from the text, as min_count would). P is chosen so the corpus has about
   --tokens-per-word x N tokens (20 at 1M: 23 passes, ~20M tokens, a third of them rare variants).
3. Training: gensim Word2Vec, skip-gram (--cbow for CBOW), window 5, 5 negatives, in corpus_file mode,
   vocabulary from the exact counts (frequency ordered, real counts), --epochs epochs, seeded (deterministic
   apart from gensim's thread scheduling). Skip-gram is the default because at 45k x 100 it reproduces the
   real model's per-pair HNSW recall profile (OUT->IN the hardest pair); CBOW does not (OUT->IN far too easy).
   Cost: skip-gram trains ~55k words per CPU-second at 300 dims (CBOW ~3x more), so 1M x 300 with
   --epochs 2 is ~40M words, ~12 CPU-minutes; the default 5 epochs is ~2.5x that.

Profiles
--------
skipgram (the default) is the model above. dense (--profile dense) trains the same corpus with CBOW for 3 epochs:
a rare variant's IN vector is then the sum of the few averaged-context updates it received, and the rare tail
crowds into a dense region, as in a real CBOW model of a large vocabulary (hundreds of words within 0.01 of a
rare word's 10th neighbour, thousands within 0.05: `scripts/check_model_profile.py --crowd-only`). The crowd
thins with more training: more epochs, a larger learning rate, more passes or a wider window each spread it
(measured at 100k-200k words, docs/performance.md, "Dense vocabularies"); fewer epochs, a narrower window or
stronger downsampling (--sample) tighten it, in the OUT space faster than in the IN space.

Writes OUT_DIR/model.model (gensim full model with syn1neg; big arrays in model.model.*.npy beside it),
OUT_DIR/make_model.json (parameters, seed, vocabulary size, count quantiles, timings) and, with --word2vec-pair,
OUT_DIR/in.bin and OUT_DIR/out.bin (word2vec binary format, same word order).
"""
from __future__ import annotations

import argparse
import bz2
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

TEST_DATA = None  # resolved lazily from the gensim package


def test_data_dir() -> Path:
    import gensim
    return Path(gensim.__file__).parent / "test" / "test_data"


# --------------------------------------------------------------------------------------------- base text
def base_documents(max_line: int = 1000) -> list[list[str]]:
    """Lines of lower-cased tokens from the corpora inside the gensim wheel (at most max_line tokens a line)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.utils import tokenize

    d = test_data_dir()
    lines: list[list[str]] = []

    def add(tokens: list[str]) -> None:
        for i in range(0, len(tokens), max_line):
            chunk = tokens[i:i + max_line]
            if len(chunk) >= 5:
                lines.append(chunk)

    wiki = d / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.BZ2File(wiki) as fh:
        for _title, text, _pid in extract_pages(fh):
            text = filter_wiki(text)
            for para in text.split("\n\n"):
                add(list(tokenize(para, lowercase=True)))
    with open(d / "lee_background.cor", encoding="utf-8") as fh:
        for line in fh:
            add(list(tokenize(line, lowercase=True)))
    with open(d / "head500.noblanks.cor", encoding="utf-8") as fh:
        for line in fh:
            add(line.split())
    return lines


# --------------------------------------------------------------------------------------------- variants
def power_law_counts(rng: np.random.Generator, n: int, cmin: int, cmax: int, s: float) -> np.ndarray:
    c = np.arange(cmin, cmax + 1)
    p = c.astype(np.float64) ** -s
    cdf = np.cumsum(p / p.sum())
    return c[np.minimum(np.searchsorted(cdf, rng.random(n)), len(c) - 1)]


def plan(args, lines: list[list[str]], rng: np.random.Generator, log) -> dict:
    counts = Counter(t for line in lines for t in line)
    by_freq = sorted(counts, key=lambda w: (-counts[w], w))
    n_base_all = len(by_freq)
    n_base = min(n_base_all, int(round(args.base_share * args.words)))
    keep = by_freq[:n_base]
    base_id = {w: i for i, w in enumerate(keep)}
    # base text as id arrays (dropped words removed)
    ids_lines = []
    for line in lines:
        a = np.fromiter((base_id.get(t, -1) for t in line), dtype=np.int64, count=len(line))
        a = a[a >= 0]
        if len(a) >= 2:
            ids_lines.append(a)
    lens = np.array([len(a) for a in ids_lines])
    flat = np.concatenate(ids_lines)
    T = len(flat)
    bcount = np.bincount(flat, minlength=n_base)
    n_var = args.words - n_base
    if args.passes:
        P = args.passes
    else:
        P = max(args.min_count + 1, int(round(args.tokens_per_word * args.words / T)))
    log(f"base text: {len(ids_lines)} lines, {T:,} tokens, {n_base:,} of {n_base_all:,} distinct words kept; "
        f"{P} passes, {n_var:,} rare variants")
    if (bcount * P).min() < 2 * args.min_count:
        raise SystemExit(f"{P} passes leave some base word under 2 x min_count occurrences; use more --passes")

    # variant counts and their base words: the variants, in random order, are laid end to end along a line on
    # which every eligible base word owns a stretch as long as its number of occurrences; a variant goes to the
    # word under its (scaled) start, so every base word loses about the same share of its occurrences.
    slots = bcount * P                                             # occurrences of each base word in the corpus
    hard = slots - args.min_count                                  # a base word keeps >= min_count occurrences
    eligible = np.ones(n_base, dtype=bool)
    eligible[:min(args.skip_top, n_base)] = False
    vcount = np.sort(power_law_counts(rng, n_var, args.min_count, args.max_count, args.tail))[::-1]
    vbase = np.empty(n_var, dtype=np.int64)
    R, C = int(vcount.sum()), int(slots[eligible].sum())
    share = R / max(C, 1)
    log(f"{R:,} variant occurrences replace {share:.1%} of the occurrences of the base words ranked "
        f"{args.skip_top + 1}+")
    if share > args.max_share:
        raise SystemExit(f"rare variants would replace {share:.0%} of their base words' occurrences (more than "
                         f"--max-share {args.max_share}); use more --passes / --tokens-per-word")
    if n_var:
        words_perm = rng.permutation(np.flatnonzero(eligible))
        ends_line = np.cumsum(slots[words_perm])
        vperm = rng.permutation(n_var)
        starts_v = (np.cumsum(vcount[vperm]) - vcount[vperm]) / share
        vbase[vperm] = words_perm[np.minimum(np.searchsorted(ends_line, starts_v, side="right"),
                                             len(words_perm) - 1)]
        used = np.bincount(vbase, weights=vcount, minlength=n_base)
        over = np.flatnonzero(used > hard)
        if len(over):                                              # few: move variants to words with room
            room = (np.where(eligible, hard, 0) - used).astype(np.int64)
            for b in over.tolist():
                for i in np.flatnonzero(vbase == b).tolist():
                    if room[b] >= 0:
                        break
                    c = int(vcount[i])
                    cands = np.flatnonzero(room >= c)
                    if len(cands) == 0:
                        raise SystemExit(f"a variant with count {c} fits in no base word; lower --max-count")
                    t = int(rng.choice(cands))
                    vbase[i] = t
                    room[t] -= c
                    room[b] += c
    # serial number of a variant among its base word's variants; names are BASE~SERIAL
    order = np.lexsort((np.arange(n_var), vbase))
    serial = np.empty(n_var, dtype=np.int64)
    sb = vbase[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sb)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, n_var]))
    serial[order] = np.arange(n_var) - run_start + 1
    return dict(lines=ids_lines, lens=lens, flat=flat, keep=keep, bcount=bcount, P=P, T=T, n_base=n_base,
                n_base_all=n_base_all, vcount=vcount, vbase=vbase, serial=serial, order=order, starts=starts)


def write_corpus(args, pl: dict, rng: np.random.Generator, path: Path, tqdm) -> tuple[np.ndarray, list[str]]:
    """Write the enlarged corpus; return (final counts per word id, words) with ids: base words, then variants."""
    flat, lens, P, n_base = pl["flat"], pl["lens"], pl["P"], pl["n_base"]
    vcount, vbase, serial, order = pl["vcount"], pl["vbase"], pl["serial"], pl["order"]
    n_var = len(vcount)
    keep = pl["keep"]
    words = keep + [f"{keep[b]}~{s}" for b, s in zip(vbase.tolist(), serial.tolist())]
    # occurrence positions of each base word in the base text
    pos_sorted = np.argsort(flat, kind="stable")
    occ_start = np.r_[0, np.cumsum(pl["bcount"])]
    # for every variant occurrence: a global slot (pass, position) of its base word, drawn without replacement
    rep_pass, rep_pos, rep_id = [], [], []
    vs = pl["starts"]
    ends = np.r_[vs[1:], n_var]
    for a, e in zip(vs.tolist(), ends.tolist()) if n_var else ():
        vids = order[a:e]
        b = int(vbase[vids[0]])
        nb = int(pl["bcount"][b])
        need = vcount[vids]
        chosen = rng.choice(nb * P, size=int(need.sum()), replace=False)
        rep_pass.append(chosen // nb)
        rep_pos.append(pos_sorted[occ_start[b] + chosen % nb])
        rep_id.append(np.repeat(n_base + vids, need))
    if rep_pass:
        rp, rpos, rid = np.concatenate(rep_pass), np.concatenate(rep_pos), np.concatenate(rep_id)
    else:
        rp = rpos = rid = np.empty(0, np.int64)
    by_pass = np.argsort(rp, kind="stable")
    rp, rpos, rid = rp[by_pass], rpos[by_pass], rid[by_pass]
    pass_start = np.searchsorted(rp, np.arange(P + 1))
    counts = np.zeros(n_base + n_var, dtype=np.int64)
    line_start = np.r_[0, np.cumsum(lens)]
    wordarr = np.array(words, dtype=object)
    with open(path, "w", encoding="utf-8") as fh:
        for p in tqdm(range(P), desc="write corpus", unit="pass"):
            ids = flat.copy()
            sl = slice(pass_start[p], pass_start[p + 1])
            ids[rpos[sl]] = rid[sl]
            counts += np.bincount(ids, minlength=len(counts))
            toks = wordarr[ids]
            buf = []
            for li in rng.permutation(len(lens)).tolist():
                buf.append(" ".join(toks[line_start[li]:line_start[li + 1]]))
            fh.write("\n".join(buf))
            fh.write("\n")
    return counts, words


# --------------------------------------------------------------------------------------------- main
# Training settings of each profile (explicit --epochs / --cbow override them).
PROFILES = {"skipgram": {"sg": True, "epochs": 5}, "dense": {"sg": False, "epochs": 3}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, required=True, help="vocabulary size N (exact, with --min-count)")
    ap.add_argument("--dim", type=int, default=300, help="dimension D (default 300)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", choices=tuple(PROFILES), default="skipgram",
                    help="skipgram (default): skip-gram, 5 epochs; dense: CBOW, 3 epochs, whose rare words crowd "
                    "together as a real CBOW model's do (see 'Profiles' below); --epochs and --cbow override")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's)")
    ap.add_argument("--min-count", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--negative", type=int, default=5)
    ap.add_argument("--sample", type=float, default=1e-3, help="gensim frequent-word downsampling")
    ap.add_argument("--alpha", type=float, default=0.025, help="initial learning rate (gensim's default 0.025)")
    ap.add_argument("--cbow", dest="sg", action="store_false", default=None,
                    help="CBOW instead of skip-gram (3-4x faster, but its cross-space profile is not the real "
                    "45k model's: OUT->IN far too easy, IN->OUT too hard)")
    ap.add_argument("--tokens-per-word", type=float, default=20.0,
                    help="corpus size as tokens per vocabulary word; sets the number of passes (default 20)")
    ap.add_argument("--passes", type=int, default=0, help="number of passes over the base text (0 = from "
                    "--tokens-per-word)")
    ap.add_argument("--base-share", type=float, default=0.5,
                    help="at most this share of N are base words; the rest are rare variants (default 0.5)")
    ap.add_argument("--tail", type=float, default=2.5, help="exponent s of the variant counts P(c) ~ c^-s")
    ap.add_argument("--max-count", type=int, default=2000, help="largest variant count")
    ap.add_argument("--max-share", type=float, default=0.6,
                    help="largest share of a base word's occurrences its variants may take (default 0.6)")
    ap.add_argument("--skip-top", type=int, default=100, help="the most frequent base words get no variants")
    ap.add_argument("--word2vec-pair", action="store_true", help="also write in.bin and out.bin")
    ap.add_argument("--keep-corpus", action="store_true", help="keep OUT_DIR/corpus.txt")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.epochs is None:
        args.epochs = profile["epochs"]
    if args.sg is None:
        args.sg = profile["sg"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm.auto import tqdm
    from gensim.models import Word2Vec
    from gensim.models.callbacks import CallbackAny2Vec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}

    def log(msg):
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    rng = np.random.default_rng(args.seed)
    lines = base_documents()
    timings["read_base_s"] = time.perf_counter() - t0
    pl = plan(args, lines, rng, log)
    del lines
    t1 = time.perf_counter()
    corpus = out / "corpus.txt"
    counts, words = write_corpus(args, pl, rng, corpus, tqdm if not args.quiet else (lambda x, **k: x))
    timings["write_corpus_s"] = time.perf_counter() - t1
    total = int(counts.sum())
    n_var = len(pl["vcount"])
    log(f"corpus: {total:,} tokens ({corpus.stat().st_size / 2**20:.0f} MiB), "
        f"{counts[pl['n_base']:].sum() / max(total, 1):.1%} of them rare variants")

    class Progress(CallbackAny2Vec):
        def __init__(self):
            self.t = time.perf_counter()
            self.epoch = 0

        def on_epoch_end(self, model):
            self.epoch += 1
            dt = time.perf_counter() - self.t
            log(f"epoch {self.epoch}/{args.epochs} done, {dt:.0f}s, "
                f"~{dt / self.epoch * (args.epochs - self.epoch):.0f}s left")

    # gensim's own progress lines (every few seconds within an epoch)
    if not args.quiet:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("  gensim: %(message)s"))
        h.addFilter(lambda r: "PROGRESS" in r.getMessage() or "EPOCH" in r.getMessage()[:6])
        g = logging.getLogger("gensim.models.word2vec")
        g.setLevel(logging.INFO)
        g.addHandler(h)
        g.propagate = False

    t2 = time.perf_counter()
    model = Word2Vec(vector_size=args.dim, window=args.window, min_count=args.min_count, sample=args.sample,
                     sg=int(args.sg), hs=0, negative=args.negative, workers=args.workers, seed=args.seed,
                     epochs=args.epochs, alpha=args.alpha)
    model.build_vocab_from_freq({w: int(c) for w, c in zip(words, counts.tolist()) if c > 0})
    log(f"vocabulary: {len(model.wv):,} words; training {args.epochs} epochs at {args.dim} dims, "
        f"{args.workers} workers")
    model.train(corpus_file=str(corpus), total_words=total, epochs=args.epochs, callbacks=[Progress()],
                report_delay=10.0)
    timings["train_s"] = time.perf_counter() - t2
    log(f"trained in {timings['train_s']:.0f}s ({total * args.epochs / timings['train_s']:,.0f} words/s)")
    if not args.keep_corpus:
        corpus.unlink()

    t3 = time.perf_counter()
    model.save(str(out / "model.model"))
    if args.word2vec_pair:
        from dualvec.indexer.word2vec_format import write_word2vec
        keys = list(model.wv.index_to_key)
        write_word2vec(out / "in.bin", keys, model.wv.vectors, binary=True)
        write_word2vec(out / "out.bin", keys, model.syn1neg, binary=True)
    timings["save_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    timings["cpu_s"] = sum(os.times()[:2])     # user + system, all threads: comparable on a busy machine

    vc = np.array([model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key])
    qs = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1]
    n_variants_in_vocab = sum(1 for w in model.wv.index_to_key if "~" in w)
    info = {
        "generator": "make_model.py: gensim Word2Vec on gensim's bundled text enlarged with rare variants",
        "params": {k: v for k, v in vars(args).items()},
        "seed": args.seed,
        "vocab_size": len(model.wv),
        "dim": args.dim,
        "base_words_kept": pl["n_base"], "base_words_total": pl["n_base_all"],
        "variants": n_var, "variants_in_vocab": n_variants_in_vocab,
        "passes": pl["P"], "base_tokens": pl["T"], "corpus_tokens": total,
        "variant_token_share": float(counts[pl["n_base"]:].sum() / max(total, 1)),
        "count_quantiles": {str(q): float(np.quantile(vc, q)) for q in qs},
        "count_median": float(np.median(vc)),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "gensim_version": __import__("gensim").__version__,
    }
    (out / "make_model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}/model.model ({len(model.wv):,} x {args.dim}); count quantiles "
        + ", ".join(f"{k}:{v:g}" for k, v in info["count_quantiles"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
