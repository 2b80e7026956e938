"""The workload: the vocabulary words are drawn from (a file, a bundle, or discovered through the API), the
``--mix`` of operations, and the pool of serialized requests built once before the run (words drawn by a Zipf law
over frequency ranks); ``same_answer`` compares two serialized responses for ``--check``."""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualvec.kernel.spaces import ALL_PAIRS, Space, pair_name, parse_pair
from dualvec.loadtest.errors import LoadtestError

log = logging.getLogger("dualvec.loadtest")

SERVICE = "/dualvec.v1.DualVec/"
SEARCH, BATCH, SCORE = SERVICE + "Search", SERVICE + "BatchSearch", SERVICE + "ScoreDocuments"
STREAM = SERVICE + "SearchStream"
PAIR_OPS = tuple(pair_name(q, t) for q, t in ALL_PAIRS)  # in-in, in-out, out-in, out-out
OPS = PAIR_OPS + ("batch", "desm")
DEFAULT_MIX = "in-in=1,in-out=1,out-in=1,out-out=1"


@dataclass(frozen=True)
class RankedWords:
    """Words with their frequency ranks (0 = most frequent): all of the vocabulary, or a sample of it."""

    ranks: np.ndarray          # (m,) int64, sorted
    words: list[str]           # (m,) in rank order
    vocab_size: int
    source: str

    def draw(self, rng: np.random.Generator, n: int, zipf: float) -> list[str]:
        """n words whose ranks follow P(r) ~ 1 / (r + 1) ** zipf over the whole vocabulary (0 = uniform); a rank
        outside the sample maps to the sampled word of nearest rank."""
        v = self.vocab_size
        if zipf <= 0:
            r = rng.integers(0, v, size=n)
        else:
            cdf = np.cumsum(1.0 / np.arange(1, v + 1, dtype=np.float64) ** zipf)
            r = np.searchsorted(cdf, rng.random(n) * cdf[-1])
        pos = np.clip(np.searchsorted(self.ranks, r), 0, len(self.ranks) - 1)
        prev = np.clip(pos - 1, 0, len(self.ranks) - 1)
        pick = np.where(np.abs(self.ranks[prev] - r) < np.abs(self.ranks[pos] - r), prev, pos)
        return [self.words[i] for i in pick.tolist()]


def words_from_file(path: str) -> RankedWords:
    """One word per line, most frequent first (a tab and anything after it, such as a count, is ignored)."""
    words = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            w = line.rstrip("\n").split("\t")[0]
            if w.strip():
                words.append(w)
    if not words:
        raise LoadtestError(f"{path} holds no words")
    return RankedWords(np.arange(len(words)), words, len(words), f"file {path}")


def words_from_bundle(path: str) -> RankedWords:
    from dualvec.kernel.bundle import VOCAB, read_manifest, read_vocab
    from dualvec.kernel.errors import DualvecError

    try:
        read_manifest(path)
        vocab = read_vocab(Path(path) / VOCAB)
    except DualvecError as exc:
        raise LoadtestError(str(exc)) from None
    return RankedWords(np.arange(len(vocab.words)), list(vocab.words), len(vocab.words), f"bundle {path}")


def discover_words(stub, info, model: str, probes: int, seed: int, timeout: float) -> RankedWords:
    """Words of the served vocabulary found through the API: all of the ``max_k`` most frequent (an exact search
    restricted to them), and those nearest to ``probes`` random directions in each space."""
    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.wire import space_to_pb

    rng = np.random.default_rng(seed)
    k = int(min(info.max_k or 1000, info.vocab_size))
    found: dict[int, str] = {}

    def probe(space: int, **extra) -> None:
        vec = rng.standard_normal(info.dim).astype(np.float32)
        resp = stub.Search(pb.SearchRequest(vector=vec.tolist(), target_space=space, k=k, model=model, **extra),
                           timeout=timeout)
        for n in resp.neighbors:
            found[n.id] = n.word

    probe(space_to_pb(Space.IN), restrict_vocab=k, exact=True)
    spaces = list(info.spaces) or [space_to_pb(Space.IN)]
    if info.vocab_size > k:
        for i in range(probes):
            probe(spaces[i % len(spaces)])
    ranks = np.array(sorted(found), dtype=np.int64)
    return RankedWords(ranks, [found[int(r)] for r in ranks], int(info.vocab_size),
                       f"discovered through the API ({len(ranks):,} of {info.vocab_size:,} words)")


def parse_mix(spec: str) -> dict[str, float]:
    """'in-in=1,in-out=1,batch=0.1' -> {op: weight}; ops: the four space pairs, batch (BatchSearch), desm
    (ScoreDocuments)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, weight = part.partition("=")
        name = name.strip().lower()
        if name not in OPS:
            raise LoadtestError(f"--mix: unknown operation {name!r}; expected some of {', '.join(OPS)}")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise LoadtestError(f"--mix: weight of {name} is not a number: {weight!r}") from None
        if w < 0 or not math.isfinite(w):
            raise LoadtestError(f"--mix: weight of {name} must be >= 0, got {w}")
        mix[name] = w
    if not any(w > 0 for w in mix.values()):
        raise LoadtestError(f"--mix {spec!r} gives no operation a positive weight")
    return {k: v for k, v in mix.items() if v > 0}


@dataclass(frozen=True)
class WorkloadConfig:
    mix: dict[str, float]
    k: int = 10
    pool: int = 2000
    zipf: float = 1.0
    batch_size: int = 8
    docs: int = 10
    doc_length: int = 30
    model: str = ""
    seed: int = 0


@dataclass
class RequestPool:
    """Prebuilt serialized requests: ``entries[i] = (op, method, payload)``; ``by_op[op]`` lists the entries of
    each operation and ``weights`` the share of calls each operation gets."""

    entries: list[tuple[str, str, bytes]]
    ops: list[str]
    weights: np.ndarray
    by_op: list[np.ndarray]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n entry indices: an operation by the mix, then one of its requests uniformly."""
        op = rng.choice(len(self.ops), size=n, p=self.weights)
        out = np.empty(n, dtype=np.int64)
        for j, members in enumerate(self.by_op):
            sel = op == j
            out[sel] = members[rng.integers(0, len(members), size=int(sel.sum()))]
        return out


def build_pool(words: RankedWords, cfg: WorkloadConfig, spaces: set[str]) -> RequestPool:
    """The requests of the run, ``cfg.pool`` of them split across operations by the mix (at least 8 each)."""
    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.wire import search_request, space_to_pb

    rng = np.random.default_rng(cfg.seed)
    pairs = [p for p in PAIR_OPS if {s.value for s in parse_pair(p)} <= spaces]
    mix = {}
    for op, w in cfg.mix.items():
        needs = ({s.value for s in parse_pair(op)} if op in PAIR_OPS
                 else ({"in", "out"} if op == "desm" else {"in"}))
        if needs <= spaces:
            mix[op] = w
        else:
            log.warning("--mix: %s left out: the served bundle has no %s space", op,
                        "/".join(s.upper() for s in needs - spaces))
    if not mix:
        raise LoadtestError("no operation of --mix can run on this bundle")
    total = sum(mix.values())

    def search(word: str, op: str) -> pb.SearchRequest:
        q, t = parse_pair(op)
        return search_request(word, query_space=q, target_space=t, k=cfg.k, model=cfg.model)

    entries: list[tuple[str, str, bytes]] = []
    by_op: list[np.ndarray] = []
    for op, w in mix.items():
        n = max(8, round(cfg.pool * w / total))
        start = len(entries)
        if op in PAIR_OPS:
            for word in words.draw(rng, n, cfg.zipf):
                entries.append((op, SEARCH, search(word, op).SerializeToString()))
        elif op == "batch":
            for _ in range(n):
                ws = words.draw(rng, cfg.batch_size, cfg.zipf)
                reqs = [search(word, pairs[int(rng.integers(len(pairs)))]) for word in ws]
                entries.append((op, BATCH, pb.BatchSearchRequest(requests=reqs).SerializeToString()))
        else:  # desm
            for _ in range(n):
                query = words.draw(rng, int(rng.integers(1, 4)), cfg.zipf)
                docs = [pb.Document(id=f"d{j}", tokens=words.draw(rng, cfg.doc_length, cfg.zipf))
                        for j in range(cfg.docs)]
                req = pb.ScoreDocumentsRequest(query_tokens=query, documents=docs,
                                               query_space=space_to_pb(Space.IN),
                                               document_space=space_to_pb(Space.OUT), model=cfg.model)
                entries.append((op, SCORE, req.SerializeToString()))
        by_op.append(np.arange(start, len(entries)))
    weights = np.array([mix[op] for op in mix], dtype=np.float64)
    return RequestPool(entries, list(mix), weights / weights.sum(), by_op)


def same_answer(method: str, a: bytes, b: bytes, tol: float = 1e-5) -> bool:
    """Whether two serialized responses give the same answer: equal bytes, or the same words with scores within
    ``tol`` (words whose score ties the last one may trade places across the cut)."""
    if a == b:
        return True
    from dualvec.v1 import dualvec_pb2 as pb

    def same_search(x: pb.SearchResponse, y: pb.SearchResponse) -> bool:
        if len(x.neighbors) != len(y.neighbors):
            return False
        sx = np.array([n.score for n in x.neighbors])
        sy = np.array([n.score for n in y.neighbors])
        if len(sx) == 0:
            return True
        if not np.allclose(np.sort(sx), np.sort(sy), atol=tol, rtol=0):
            return False
        cut = min(sx.min(), sy.min()) + tol
        return (Counter(n.id for n in x.neighbors if n.score > cut)
                == Counter(n.id for n in y.neighbors if n.score > cut))

    if method == SEARCH:
        return same_search(pb.SearchResponse.FromString(a), pb.SearchResponse.FromString(b))
    if method == BATCH:
        x, y = pb.BatchSearchResponse.FromString(a), pb.BatchSearchResponse.FromString(b)
        return len(x.responses) == len(y.responses) and all(map(same_search, x.responses, y.responses))
    if method == SCORE:
        x, y = pb.ScoreDocumentsResponse.FromString(a), pb.ScoreDocumentsResponse.FromString(b)
        return len(x.scores) == len(y.scores) and all(
            p.id == q.id and abs(p.score - q.score) <= tol and p.query_words_found == q.query_words_found
            and p.document_words_found == q.document_words_found for p, q in zip(x.scores, y.scores))
    return False
