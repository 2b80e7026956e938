"""`dualvec evaluate`: judge a bundle's two spaces on the standard test sets that ship inside gensim's wheel.

- word similarity: Spearman correlation of cosine with human judgments on WordSim-353 and SimLex-999, for IN-IN,
  IN-OUT and OUT-OUT cosine (IN-OUT is symmetrized: the mean of cos(a_IN, b_OUT) and cos(b_IN, a_OUT), since the
  pairs are unordered), with the share of pairs whose words are both known. Words are looked up case-insensitively,
  the most frequent spelling winning, as gensim's ``evaluate_word_pairs`` does.
- analogies: accuracy on ``questions-words.txt`` with 3CosAdd (gensim ``most_similar``) and 3CosMul (gensim
  ``most_similar_cosmul``, Levy & Goldberg 2014), answers and questions restricted to the 30,000 most frequent
  words as word2vec's compute-accuracy does (gensim 4's ``evaluate_word_analogies`` defaults to 300,000), questions
  with an unknown word skipped and counted; exact search, and 3CosAdd through the bundle's IN index with the IN->IN
  pair's tuned parameters (the top 20 of the whole index, then restricted the same way).
- documents: Pearson and Spearman correlation with the human judgments of the Lee corpus (``lee.cor``: 50 news
  documents; ``similarities0-1.txt``: a 50 x 50 upper-triangular matrix of mean judgments, 1,225 pairs) of DESM
  IN-OUT, DESM IN-IN and BM25, each made symmetric (the mean of score(a, b) and score(b, a)), tokenized with the
  bundle's tokenizer. DESM is computed by the very function the server answers ScoreDocuments with.
- recall@10 of each pair's index against exact search on 200 query words drawn uniformly from the vocabulary
  (query word excluded, ann-benchmarks tie rule: dualvec.kernel.truth), next to the recall the bundle recorded
  when it was built.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from dualvec.kernel.bundle import Bundle, read_bundle
from dualvec.kernel.errors import DualvecError, UnknownWords
from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name
from dualvec.kernel.tokenizer import Tokenizer

log = logging.getLogger(__name__)

WORD_SETS = (("wordsim353", "WordSim-353", "wordsim353.tsv"), ("simlex999", "SimLex-999", "simlex999.txt"))
SIMILARITY_PAIRS = (("in-in", Space.IN, Space.IN), ("in-out", Space.IN, Space.OUT), ("out-out", Space.OUT, Space.OUT))
ANALOGIES = "questions-words.txt"
LEE_DOCUMENTS = "lee.cor"
LEE_JUDGMENTS = "similarities0-1.txt"
DOCUMENT_SCORES = (("desm-in-out", "DESM IN-OUT"), ("desm-in-in", "DESM IN-IN"), ("bm25", "BM25"))


@dataclass(frozen=True)
class EvaluateConfig:
    """What `dualvec evaluate` runs. analogy_limit: at most that many analogy questions, spread evenly over the
    file (0 = all)."""

    bundles: tuple[str, ...]
    as_json: bool = False
    analogy_limit: int = 0
    quiet: bool = False
    analogy_restrict: int = 30_000
    ann_candidates: int = 20
    recall_queries: int = 200
    k: int = 10
    batch: int = 256
    seed: int = 11


def data_path(name: str) -> Path:
    """A test file that ships inside gensim's wheel (gensim/test/test_data)."""
    from gensim.test.utils import datapath

    path = Path(datapath(name))
    if not path.exists():
        raise DualvecError(f"{path} is missing: this gensim installation lacks its test data")
    return path


def run_evaluate(args: argparse.Namespace) -> int:
    """The `evaluate` subcommand: evaluate every bundle and print one table (or JSON) with a column each."""
    cfg = EvaluateConfig(bundles=tuple(args.bundles), as_json=bool(getattr(args, "json", False)),
                         analogy_limit=int(getattr(args, "analogy_limit", 0) or 0),
                         quiet=bool(getattr(args, "quiet", False)))
    if cfg.analogy_limit < 0:
        raise DualvecError(f"--analogy-limit must be 0 (all) or positive, got {cfg.analogy_limit}")
    results = [evaluate_bundle(read_bundle(path), cfg) for path in cfg.bundles]
    print(json.dumps({"bundles": results}, indent=2) if cfg.as_json else format_table(results))
    return 0


def evaluate_bundle(bundle: Bundle, cfg: EvaluateConfig) -> dict:
    """Every evaluation of one bundle, as a JSON-able dict."""
    stages = tqdm(total=4, desc=bundle.path.name, unit="stage", disable=cfg.quiet, file=sys.stderr)
    out: dict = {"bundle": str(bundle.path), "name": bundle.path.name, "vocab_size": bundle.vocab_size,
                 "dim": bundle.dim, "spaces": list(bundle.manifest.spaces)}
    lower = casefold_index(bundle.vocab.words)
    stages.set_postfix_str("word similarity")
    out["word_similarity"] = {key: word_similarity(bundle, data_path(fname), lower) for key, _, fname in WORD_SETS}
    stages.update()
    stages.set_postfix_str("analogies")
    out["analogies"] = analogies(bundle, data_path(ANALOGIES), cfg)
    stages.update()
    stages.set_postfix_str("Lee documents")
    out["documents"] = document_similarity(bundle, data_path(LEE_DOCUMENTS), data_path(LEE_JUDGMENTS))
    stages.update()
    stages.set_postfix_str("recall")
    out["recall"] = ann_recall(bundle, cfg)
    stages.update()
    stages.close()
    return out


# ------------------------------------------------------------------------------------------------- word similarity

def casefold_index(words: list[str], limit: int | None = None) -> dict[str, int]:
    """lowercased word -> row of its most frequent spelling, over the first ``limit`` rows (rows are most
    frequent first)."""
    rows = words[:limit] if limit else words
    index: dict[str, int] = {}
    for row, word in enumerate(rows):
        index.setdefault(word.lower(), row)
    return index


def read_word_pairs(path: Path) -> list[tuple[str, str, float]]:
    """(word, word, human score) lines of a tab-separated file; '#' lines are comments."""
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        try:
            pairs.append((parts[0], parts[1], float(parts[2])))
        except ValueError:
            continue
    return pairs


def word_similarity(bundle: Bundle, path: Path, lower: dict[str, int]) -> dict:
    """Spearman correlation of IN-IN, IN-OUT (symmetrized) and OUT-OUT cosine with the human scores of one set."""
    pairs = read_word_pairs(path)
    known = [(lower[a.lower()], lower[b.lower()], s) for a, b, s in pairs
             if a.lower() in lower and b.lower() in lower]
    result = {"pairs": len(pairs), "covered": len(known), "coverage": len(known) / len(pairs) if pairs else 0.0,
              "spearman": {}}
    if not known:
        result["spearman"] = {name: None for name, _, _ in SIMILARITY_PAIRS}
        return result
    ia = np.array([k[0] for k in known])
    ib = np.array([k[1] for k in known])
    gold = np.array([k[2] for k in known])
    for name, sa, sb in SIMILARITY_PAIRS:
        if not (bundle.has_space(sa) and bundle.has_space(sb)):
            result["spearman"][name] = None
            continue
        cos = _rowwise_cos(bundle.vectors[sa], ia, bundle.vectors[sb], ib)
        if sa != sb:
            cos = (cos + _rowwise_cos(bundle.vectors[sa], ib, bundle.vectors[sb], ia)) / 2
        result["spearman"][name] = _spearman(gold, cos)
    return result


def _rowwise_cos(va: np.ndarray, ia: np.ndarray, vb: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """(m,) cosines of unit rows va[ia] and vb[ib]."""
    return np.einsum("md,md->m", np.asarray(va[ia], dtype=np.float64), np.asarray(vb[ib], dtype=np.float64))


def _correlation(test, x, y) -> float | None:
    """scipy correlation statistic of x and y; None with fewer than 3 points or when undefined (constant input)."""
    if len(x) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(test(x, y).statistic)
    return None if math.isnan(value) else value


def _spearman(x, y) -> float | None:
    return _correlation(stats.spearmanr, x, y)


def _pearson(x, y) -> float | None:
    return _correlation(stats.pearsonr, x, y)


# ------------------------------------------------------------------------------------------------------- analogies

def read_analogies(path: Path) -> list[tuple[str, str, str, str, str]]:
    """(section, a, b, c, expected) questions "a is to b as c is to expected", in file order."""
    questions, section = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(": "):
            section = line[2:].strip()
            continue
        parts = line.split()
        if len(parts) == 4:
            questions.append((section, *parts))
    return questions


def analogies(bundle: Bundle, path: Path, cfg: EvaluateConfig) -> dict:
    """Accuracy of 3CosAdd (exact and through the IN index) and 3CosMul (exact) in the IN space.

    Questions and answers are restricted to the ``cfg.analogy_restrict`` most frequent words; the answer is the
    best word other than the three question words (case variants of them included), as in gensim."""
    questions = read_analogies(path)
    if cfg.analogy_limit and cfg.analogy_limit < len(questions):
        pick = np.unique(np.linspace(0, len(questions) - 1, cfg.analogy_limit).round().astype(int))
        questions = [questions[i] for i in pick]
    restrict = min(cfg.analogy_restrict, bundle.vocab_size)
    words = bundle.vocab.words[:restrict]
    lower = casefold_index(words)
    canon = np.fromiter((lower[w.lower()] for w in words), dtype=np.int64, count=len(words))  # row -> its spelling
    known, kinds = [], []
    for section, *quad in questions:
        rows = [lower.get(w.lower()) for w in quad]
        if None not in rows:
            known.append(rows)
            kinds.append("syntactic" if section.startswith("gram") else "semantic")
    result = {"questions": len(questions), "evaluated": len(known),
              "coverage": len(known) / len(questions) if questions else 0.0, "restrict_vocab": cfg.analogy_restrict,
              "ann_index": bundle.manifest.indexes["in"].description,
              "ann_params": bundle.tuning(Space.IN, Space.IN).params.to_dict()}
    methods = ("3cosadd", "3cosmul", "3cosadd_ann")
    if not known:
        result.update({m: None for m in methods})
        result["by_kind"] = {}
        return result
    quads = np.asarray(known, dtype=np.int64)                       # (m, 4): a, b, c, expected
    vectors = np.ascontiguousarray(bundle.vectors[Space.IN][:restrict], dtype=np.float32)  # (r, d)
    space = bundle.spaces[Space.IN]
    params = bundle.tuning(Space.IN, Space.IN).params
    correct = {m: np.zeros(len(quads), dtype=bool) for m in methods}
    batches = range(0, len(quads), cfg.batch)
    for start in tqdm(batches, desc="analogies", unit="batch", leave=False, disable=cfg.quiet, file=sys.stderr):
        q = quads[start:start + cfg.batch]
        a, b, c, expected = q.T
        sl = slice(start, start + len(q))
        query = vectors[b] - vectors[a] + vectors[c]
        query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        excluded = _question_words_mask(canon, a, b, c)           # (B, r)
        cos_add = query @ vectors.T
        cos_add[excluded] = -np.inf
        correct["3cosadd"][sl] = canon[cos_add.argmax(axis=1)] == expected
        # 3CosMul, cosines shifted to [0, 1] (gensim most_similar_cosmul)
        shifted_a = (1 + vectors[a] @ vectors.T) / 2
        shifted_b = (1 + vectors[b] @ vectors.T) / 2
        shifted_c = (1 + vectors[c] @ vectors.T) / 2
        cos_mul = shifted_b * shifted_c / (shifted_a + 1e-6)
        cos_mul[excluded] = -np.inf
        correct["3cosmul"][sl] = canon[cos_mul.argmax(axis=1)] == expected
        # 3CosAdd through the IN index, as the server searches it
        _, found = space.search(query, cfg.ann_candidates, params, pair_name(Space.IN, Space.IN))
        inside = (found >= 0) & (found < restrict)
        found_canon = canon[np.where(inside, found, 0)]
        usable = inside & (found_canon != a[:, None]) & (found_canon != b[:, None]) & (found_canon != c[:, None])
        first = usable.argmax(axis=1)
        answer = np.where(usable.any(axis=1), found_canon[np.arange(len(q)), first], -1)
        correct["3cosadd_ann"][sl] = answer == expected
    for m in methods:
        result[m] = float(correct[m].mean())
    kinds_arr = np.asarray(kinds)
    result["by_kind"] = {kind: {"evaluated": int((kinds_arr == kind).sum()),
                                **{m: float(correct[m][kinds_arr == kind].mean()) for m in methods}}
                         for kind in ("semantic", "syntactic") if (kinds_arr == kind).any()}
    return result


def _question_words_mask(canon: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(B, r) True where a row is (a spelling of) one of the question's words."""
    row = canon[None, :]
    return (row == a[:, None]) | (row == b[:, None]) | (row == c[:, None])


# ------------------------------------------------------------------------------------------------------- documents

def read_lee(documents: Path, judgments: Path) -> tuple[list[str], np.ndarray]:
    """The 50 Lee documents (one a line) and their (50, 50) human similarity matrix (upper triangle filled)."""
    texts = [line for line in documents.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    gold = np.loadtxt(judgments)
    if gold.shape != (len(texts), len(texts)):
        raise DualvecError(f"{judgments} is {gold.shape[0]} x {gold.shape[1]}, expected {len(texts)} x "
                           f"{len(texts)} for the {len(texts)} documents of {documents}")
    return texts, gold


def document_similarity(bundle: Bundle, documents: Path, judgments: Path) -> dict:
    """Pearson and Spearman correlation of symmetric DESM IN-OUT, DESM IN-IN and BM25 with the Lee judgments."""
    from dualvec.kernel.bm25 import bm25_scores
    from dualvec.kernel.desm import DesmLimits, DocumentInput, score_documents

    texts, gold = read_lee(documents, judgments)
    tokenizer = Tokenizer.from_dict(bundle.manifest.tokenizer)
    docs = [DocumentInput(str(i), tuple(tokenizer(text))) for i, text in enumerate(texts)]
    n = len(docs)
    upper = np.triu_indices(n, 1)
    human = gold[upper]
    limits = DesmLimits(max_documents=n, max_document_tokens=10**9, max_query_tokens=10**9)
    matrices: dict[str, np.ndarray | None] = {}
    for key, doc_space in (("desm-in-out", Space.OUT), ("desm-in-in", Space.IN)):
        if not bundle.has_space(doc_space):
            matrices[key] = None
            continue
        m = np.zeros((n, n))
        for i, query in enumerate(docs):
            try:
                scores, _ = score_documents(bundle, query.tokens, docs, query_space=Space.IN,
                                            document_space=doc_space, limits=limits)
            except UnknownWords:
                continue  # a document with no known word: its row stays 0
            m[i] = [s.desm for s in scores]
        matrices[key] = m
    m = np.zeros((n, n))
    source = "request"
    for i, query in enumerate(docs):
        m[i], source = bm25_scores(query.tokens, [d.tokens for d in docs], docfreq=bundle.docfreq)
    matrices["bm25"] = m
    result = {"documents": n, "pairs": len(human), "bm25_document_frequencies": source,
              "pearson": {}, "spearman": {}}
    for key, m in matrices.items():
        if m is None:
            result["pearson"][key] = result["spearman"][key] = None
            continue
        sym = ((m + m.T) / 2)[upper]
        result["pearson"][key] = _pearson(human, sym)
        result["spearman"][key] = _spearman(human, sym)
    return result


# ---------------------------------------------------------------------------------------------------------- recall

def ann_recall(bundle: Bundle, cfg: EvaluateConfig) -> dict:
    """recall@k of each pair's index (its tuned parameters) against exact search, next to the recorded recall."""
    from dualvec.kernel.ann import search_sample
    from dualvec.kernel.truth import QuerySample, draw_ids, exact_truth, recall

    out = {}
    for position, (query_space, target_space) in enumerate(ALL_PAIRS):
        if not (bundle.has_space(query_space) and bundle.has_space(target_space)):
            continue
        pair = pair_name(query_space, target_space)
        rng = np.random.default_rng([cfg.seed, position])
        ids = draw_ids(bundle.vocab_size, min(cfg.recall_queries, bundle.vocab_size), rng)
        sample = QuerySample(ids, np.ascontiguousarray(bundle.vectors[query_space][ids], dtype=np.float32))
        target = bundle.spaces[target_space]
        k = min(cfg.k, bundle.vocab_size - 1)
        tuning = bundle.tuning(query_space, target_space)
        truth = exact_truth(target.vectors, sample, k)
        found = search_sample(target, sample, k, tuning.params, pair)
        out[pair] = {"queries": len(ids), "k": k, "recall": recall(target.vectors, sample, truth, found),
                     "exact": target.exact_only, "params": tuning.params.to_dict(),
                     "manifest_recall_uniform": tuning.recall_uniform,
                     "manifest_recall_frequency": tuning.recall_frequency}
    return out


# ----------------------------------------------------------------------------------------------------------- table

def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table_rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, one cell per bundle) rows of the table; a label without cells is a section heading."""
    rows: list[tuple[str, list[str]]] = []
    add = rows.append
    add(("vocabulary x dimension", [f"{r['vocab_size']:,} x {r['dim']}" for r in results]))
    add(("spaces", [", ".join(s.upper() for s in r["spaces"]) for r in results]))
    add(("Word similarity: Spearman rho (pairs covered)", []))
    for key, title, _ in WORD_SETS:
        add((f"  {title} coverage", [f"{_pct(r['word_similarity'][key]['coverage'])} "
                                     f"({r['word_similarity'][key]['covered']}/{r['word_similarity'][key]['pairs']})"
                                     for r in results]))
        for name, _, _ in SIMILARITY_PAIRS:
            add((f"  {title} {name.upper()}", [_num(r["word_similarity"][key]["spearman"][name]) for r in results]))
    first = results[0]["analogies"]
    add((f"Analogies: accuracy on questions-words.txt ({first['restrict_vocab']:,} most frequent words)", []))
    add(("  questions covered", [f"{_pct(r['analogies']['coverage'])} ({r['analogies']['evaluated']:,}/"
                                 f"{r['analogies']['questions']:,})" for r in results]))
    add(("  3CosAdd, exact", [_pct(r["analogies"]["3cosadd"]) for r in results]))
    add(("  3CosMul, exact", [_pct(r["analogies"]["3cosmul"]) for r in results]))
    add(("  3CosAdd, IN index", [_pct(r["analogies"]["3cosadd_ann"]) for r in results]))
    for kind in ("semantic", "syntactic"):
        add((f"    {kind} 3CosAdd / 3CosMul", [
            f"{_pct(r['analogies']['by_kind'][kind]['3cosadd'])} / {_pct(r['analogies']['by_kind'][kind]['3cosmul'])}"
            f" ({r['analogies']['by_kind'][kind]['evaluated']:,})" if kind in r["analogies"].get("by_kind", {})
            else "-" for r in results]))
    docs = results[0]["documents"]
    add((f"Lee documents: Pearson / Spearman with human judgments ({docs['pairs']:,} pairs)", []))
    for key, title in DOCUMENT_SCORES:
        label = f"  {title}" + (" (df: " + "/".join(sorted({r['documents']['bm25_document_frequencies']
                                                             for r in results})) + ")" if key == "bm25" else "")
        add((label, [f"{_num(r['documents']['pearson'][key])} / {_num(r['documents']['spearman'][key])}"
                     for r in results]))
    add(("Recall@10 of the index vs exact search: measured (recorded uniform / by frequency)", []))
    for q, t in ALL_PAIRS:
        pair = pair_name(q, t)
        cells = []
        for r in results:
            entry = r["recall"].get(pair)
            if entry is None:
                cells.append("-")
            else:
                cells.append(f"{_num(entry['recall'])} ({_num(entry['manifest_recall_uniform'])} / "
                             f"{_num(entry['manifest_recall_frequency'])})" + (" exact" if entry["exact"] else ""))
        add((f"  {q.value.upper()}->{t.value.upper()}", cells))
    return rows


def format_table(results: list[dict]) -> str:
    """The evaluation of one or more bundles as a text table, a column per bundle."""
    rows = table_rows(results)
    headers = [r["name"] for r in results]
    label_width = max(len(label) for label, cells in rows if cells)
    widths = [max([len(h)] + [len(cells[i]) for _, cells in rows if cells]) for i, h in enumerate(headers)]
    lines = [" " * label_width + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    for label, cells in rows:
        if not cells:
            lines.append(label)
            continue
        lines.append(label.ljust(label_width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)
