"""`dualvec loadtest ADDR`: a load generator for a dualvec server that tells the truth.

Two ways to drive load:

- closed loop (``--concurrency N``): N clients, each sending its next call as soon as the previous answer is back.
  Latency is measured from the send. This finds the throughput at a given concurrency, but a stalled server also
  stalls its clients, so it under-reports what a stream of independent users would see.
- open loop (``--rate QPS``): calls go out on a fixed schedule (evenly spaced, or ``--arrivals poisson``) whether or
  not earlier ones have been answered, and each latency is measured from the call's *intended* send time, so time
  spent queued behind a stalled server, or behind a late generator, is counted (no coordinated omission).
  ``--sweep`` steps the rate up and draws the capacity curve with the saturation point marked.

Latencies go into log-linear histograms (the HdrHistogram layout: values in microseconds, known within 0.1%),
which worker processes (``--processes``) fill independently and the parent merges by adding counts; percentiles
are read from the merged histogram, never from a sorted sample.

Requests come from a pool built once before the run (``--pool`` of them, in the proportions of ``--mix``), with
words drawn by a Zipf law over the vocabulary's frequency ranks (``--zipf``, 0 = uniform). The vocabulary is read
from ``--words FILE`` or ``--bundle DIR`` when given; otherwise it is discovered through the API: an exact search
restricted to the ``max_k`` most frequent words returns all of them, and searches of random directions in each
space find words further down the ranks; a drawn rank then maps to the found word of nearest rank.
With ``--check`` every answer is compared with the idle answer to the same request, fetched before the load.

Layout of this module: the histogram; the request pool; one process's run of a phase (``run_phase``); the
processes and phases (``Runner``); summaries, the text report, plots; the sweep; ``main``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import queue
import shlex
import textwrap
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil

log = logging.getLogger("dualvec.loadtest")

SERVICE = "/dualvec.v1.DualVec/"
SEARCH, BATCH, SCORE = SERVICE + "Search", SERVICE + "BatchSearch", SERVICE + "ScoreDocuments"
PAIR_OPS = ("in-in", "in-out", "out-in", "out-out")
OPS = PAIR_OPS + ("batch", "desm")
DEFAULT_MIX = "in-in=1,in-out=1,out-in=1,out-out=1"
EXIT_OK, EXIT_ERROR, EXIT_FAILED_CALLS = 0, 1, 3


class LoadtestError(Exception):
    """A problem that stops the load test before or during the run, described in one sentence."""


# ========================================================================================================= histogram

class Histogram:
    """Counts of non-negative integer values (microseconds here) in log-linear buckets, as HdrHistogram lays them
    out: values below ``2**bits`` are counted exactly; above, each power-of-two range is split into ``2**(bits-1)``
    equal buckets, so every value is known within one part in ``2**(bits-1)`` (bits=11: 0.1%). Histograms of the
    same layout merge exactly by adding counts. Values above ``max_value`` are counted in the last bucket (the
    exact maximum is kept apart)."""

    def __init__(self, bits: int = 11, max_value: int = 1 << 36):
        if not 2 <= bits <= 20:
            raise ValueError(f"bits must be in [2, 20], got {bits}")
        self.bits = bits
        self.half = 1 << (bits - 1)
        self.max_value = int(max_value)
        self.counts = np.zeros(self.index_of(self.max_value) + 1, dtype=np.int64)
        self.total = 0
        self.min = math.inf
        self.max = 0
        self.sum = 0

    # -------------------------------------------------------------------------------------------------- layout
    def index_of(self, value: int) -> int:
        """Bucket of one value (an int >= 0)."""
        e = value.bit_length() - self.bits
        return value if e <= 0 else e * self.half + (value >> e)

    def bucket_bounds(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest value of buckets ``index`` (arrays of int64)."""
        idx = np.asarray(index, dtype=np.int64)
        e = np.maximum(idx // self.half - 1, 0)
        m = np.where(idx < 2 * self.half, idx, idx - e * self.half)
        low = m << e
        high = ((m + 1) << e) - 1
        return low, high

    # ----------------------------------------------------------------------------------------------- recording
    def record(self, value: float, count: int = 1) -> None:
        v = min(max(int(value), 0), self.max_value)
        self.counts[self.index_of(v)] += count
        self.total += count
        self.sum += v * count
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def record_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Record each of a (n,) array of values."""
        for v in np.asarray(values).ravel().tolist():
            self.record(v)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s counts into this histogram (same layout required); returns self."""
        if (other.bits, other.max_value) != (self.bits, self.max_value):
            raise ValueError("histograms of different layouts cannot be merged")
        self.counts += other.counts
        self.total += other.total
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def merged(cls, hists: Sequence["Histogram"], bits: int = 11, max_value: int = 1 << 36) -> "Histogram":
        out = cls(bits, max_value)
        for h in hists:
            out.merge(h)
        return out

    # ----------------------------------------------------------------------------------------------- reading
    def percentile(self, q: float) -> float:
        """The smallest recorded value v such that at least q% of the values are <= v, given as the highest
        value of its bucket (capped at the exact maximum): never below the true percentile, above it by at most
        the bucket's width. NaN when empty."""
        if self.total == 0:
            return math.nan
        if q <= 0:
            return float(self.min)
        rank = max(1, math.ceil(q / 100.0 * self.total))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        _, high = self.bucket_bounds(i)
        return float(min(int(high), self.max))

    def mean(self) -> float:
        return self.sum / self.total if self.total else math.nan

    def percentile_curve(self, points: int = 200, max_nines: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """(percentiles, values): the distribution as HdrHistogram plots it, up to ``max_nines`` nines."""
        nines = np.linspace(0.0, max_nines, points)
        qs = 100.0 * (1.0 - 10.0 ** -nines)
        return qs, np.array([self.percentile(q) for q in qs])

    # ------------------------------------------------------------------------------------------ serialization
    def to_state(self) -> dict:
        nz = np.flatnonzero(self.counts)
        return {"bits": self.bits, "max_value": self.max_value, "index": nz.tolist(),
                "counts": self.counts[nz].tolist(), "total": self.total, "sum": self.sum,
                "min": None if self.total == 0 else self.min, "max": self.max}

    @classmethod
    def from_state(cls, state: dict) -> "Histogram":
        h = cls(state["bits"], state["max_value"])
        h.counts[np.asarray(state["index"], dtype=np.int64)] = np.asarray(state["counts"], dtype=np.int64)
        h.total, h.sum, h.max = state["total"], state["sum"], state["max"]
        h.min = math.inf if state["min"] is None else state["min"]
        return h


def latency_ms(h: Histogram) -> dict:
    """Percentiles of a histogram of microseconds, in milliseconds."""
    def ms(v: float) -> float | None:
        return None if math.isnan(v) else round(v / 1000.0, 4)
    return {"count": h.total, "p50": ms(h.percentile(50)), "p90": ms(h.percentile(90)),
            "p99": ms(h.percentile(99)), "p99.9": ms(h.percentile(99.9)),
            "max": ms(float(h.max)) if h.total else None, "mean": ms(h.mean()),
            "min": ms(float(h.min)) if h.total else None}


# ============================================================================================== the request pool

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

    rng = np.random.default_rng(seed)
    k = int(min(info.max_k or 1000, info.vocab_size))
    found: dict[int, str] = {}

    def probe(space: int, **extra) -> None:
        vec = rng.standard_normal(info.dim).astype(np.float32)
        resp = stub.Search(pb.SearchRequest(vector=vec.tolist(), target_space=space, k=k, model=model, **extra),
                           timeout=timeout)
        for n in resp.neighbors:
            found[n.id] = n.word

    probe(pb.IN, restrict_vocab=k, exact=True)
    spaces = list(info.spaces) or [pb.IN]
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

    space_pb = {"in": pb.IN, "out": pb.OUT}
    rng = np.random.default_rng(cfg.seed)
    pairs = [p for p in PAIR_OPS if set(p.split("-")) <= spaces]
    mix = {}
    for op, w in cfg.mix.items():
        needs = set(op.split("-")) if op in PAIR_OPS else ({"in", "out"} if op == "desm" else {"in"})
        if needs <= spaces:
            mix[op] = w
        else:
            log.warning("--mix: %s left out: the served bundle has no %s space", op,
                        "/".join(s.upper() for s in needs - spaces))
    if not mix:
        raise LoadtestError("no operation of --mix can run on this bundle")
    total = sum(mix.values())

    def search(word: str, op: str) -> pb.SearchRequest:
        q, t = op.split("-")
        return pb.SearchRequest(positive=[word], query_space=space_pb[q], target_space=space_pb[t], k=cfg.k,
                                model=cfg.model)

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
                req = pb.ScoreDocumentsRequest(query_tokens=query, documents=docs, query_space=pb.IN,
                                               document_space=pb.OUT, model=cfg.model)
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


# ============================================================================================ one process's run

@dataclass(frozen=True)
class Phase:
    """One measured run of one process. Times: ``start_wall`` is time.time() at which the warm-up begins (shared
    by every process); the measured window is [start + warmup, start + warmup + duration)."""

    mode: str                  # "open" | "closed"
    start_wall: float
    warmup: float
    duration: float
    deadline: float
    interval: float            # time-series resolution, seconds
    concurrency: int = 0       # closed loop: this process's clients
    rate: float = 0.0          # open loop: this process's calls per second
    offset: float = 0.0        # open loop: delay of this process's first call (processes interleave)
    arrivals: str = "uniform"  # open loop: "uniform" | "poisson"
    seed: int = 0
    check: bool = False


SERIES_BITS = 7  # per-interval histograms: values within 1.6%
_EPS = 1e-7      # seconds: the window's edges, robust to float error in scheduled times


@dataclass
class PhaseResult:
    """What one or more processes measured in a phase; ``merge`` adds results of the same phase."""

    ok: Histogram = field(default_factory=Histogram)       # latency of successful calls, microseconds
    all: Histogram = field(default_factory=Histogram)      # latency of every call, whatever its status
    lag: Histogram = field(default_factory=Histogram)      # open loop: how late calls were sent
    per_op: dict[str, Histogram] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)       # status code name -> calls (measured window)
    errors_by_op: Counter = field(default_factory=Counter)  # "op code" -> calls
    messages: dict[str, str] = field(default_factory=dict)  # status code name -> first message seen
    sent: int = 0               # calls whose (intended) send time is in the window
    completed_ok: int = 0       # successful calls answered inside the window
    checked: int = 0
    wrong: int = 0              # answers that differ from the idle answer
    wrong_examples: list[str] = field(default_factory=list)
    unfinished: int = 0         # calls still unanswered when the run gave up waiting
    series_ok: np.ndarray | None = None      # (intervals,) successful calls answered per interval
    series_err: np.ndarray | None = None     # (intervals,) failed calls per interval
    series_hist: np.ndarray | None = None    # (intervals, buckets) latency histograms of answers per interval
    cpu: list[float] = field(default_factory=list)          # CPU seconds of each generator process
    wall: float = 0.0

    def merge(self, other: "PhaseResult") -> "PhaseResult":
        self.ok.merge(other.ok)
        self.all.merge(other.all)
        self.lag.merge(other.lag)
        for op, h in other.per_op.items():
            self.per_op.setdefault(op, Histogram()).merge(h)
        self.errors.update(other.errors)
        self.errors_by_op.update(other.errors_by_op)
        for code, msg in other.messages.items():
            self.messages.setdefault(code, msg)
        self.sent += other.sent
        self.completed_ok += other.completed_ok
        self.checked += other.checked
        self.wrong += other.wrong
        self.wrong_examples = (self.wrong_examples + other.wrong_examples)[:5]
        self.unfinished += other.unfinished
        for name in ("series_ok", "series_err", "series_hist"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.copy() if mine is None else mine + theirs)
        self.cpu += other.cpu
        self.wall = max(self.wall, other.wall)
        return self

    def to_state(self) -> dict:
        d = dict(self.__dict__)
        for name in ("ok", "all", "lag"):
            d[name] = getattr(self, name).to_state()
        d["per_op"] = {op: h.to_state() for op, h in self.per_op.items()}
        d["errors"], d["errors_by_op"] = dict(self.errors), dict(self.errors_by_op)
        return d

    @classmethod
    def from_state(cls, d: dict) -> "PhaseResult":
        d = dict(d)
        for name in ("ok", "all", "lag"):
            d[name] = Histogram.from_state(d[name])
        d["per_op"] = {op: Histogram.from_state(h) for op, h in d["per_op"].items()}
        d["errors"], d["errors_by_op"] = Counter(d["errors"]), Counter(d["errors_by_op"])
        return cls(**d)


class _Recorder:
    """Records finished calls (called on gRPC's threads, hence the lock)."""

    def __init__(self, pool: RequestPool, expected: list[bytes] | None, t0: float, phase: Phase):
        self.pool, self.expected = pool, expected
        self.t0 = t0
        self.measure_from = t0 + phase.warmup - _EPS  # a call scheduled at the boundary counts in the window
        self.end = t0 + phase.warmup + phase.duration - _EPS
        self.interval = phase.interval
        n = int(math.ceil((phase.warmup + phase.duration + phase.deadline + 2.0) / phase.interval)) + 1
        self.series_hist_proto = Histogram(SERIES_BITS)
        self.result = PhaseResult(series_ok=np.zeros(n, np.int64), series_err=np.zeros(n, np.int64),
                                  series_hist=np.zeros((n, len(self.series_hist_proto.counts)), np.int64))
        self.result.per_op = {op: Histogram() for op in pool.ops}
        self.lock = threading.Lock()
        self.outstanding = 0
        self.idle = threading.Condition(self.lock)

    def issued(self) -> None:
        with self.lock:
            self.outstanding += 1

    def done(self, index: int, t_intended: float, t_sent: float, fut, notify=None) -> None:
        t_done = time.perf_counter()
        code = fut.code()
        op, method, _ = self.pool.entries[index]
        wrong = None
        if self.expected is not None and code is not None and code.name == "OK":
            try:
                answer = fut.result()
                wrong = not same_answer(method, answer, self.expected[index])
            except Exception as exc:  # a response that does not parse is a wrong answer too
                wrong = True
                log.debug("check failed: %s", exc)
        name = code.name if code is not None else "UNKNOWN"
        us = max(0.0, (t_done - t_intended) * 1e6)
        r = self.result
        with self.lock:
            self.outstanding -= 1
            slot = min(max(int((t_done - self.t0) / self.interval), 0), len(r.series_ok) - 1)
            ok = name == "OK"
            if ok:
                r.series_ok[slot] += 1
                if self.measure_from <= t_done < self.end:
                    r.completed_ok += 1
            else:
                r.series_err[slot] += 1
            r.series_hist[slot, self.series_hist_proto.index_of(min(int(us), self.series_hist_proto.max_value))] += 1
            if self.measure_from <= t_intended < self.end:
                r.sent += 1
                r.all.record(us)
                r.lag.record((t_sent - t_intended) * 1e6)
                if ok:
                    r.ok.record(us)
                    r.per_op[op].record(us)
                else:
                    r.errors[name] += 1
                    r.errors_by_op[f"{op} {name}"] += 1
                    if name not in r.messages:
                        try:
                            r.messages[name] = fut.details() or ""
                        except Exception:
                            r.messages[name] = ""
                if wrong is not None:
                    r.checked += 1
                    if wrong:
                        r.wrong += 1
                        if len(r.wrong_examples) < 5:
                            r.wrong_examples.append(f"{op} request #{index}")
            if self.outstanding == 0:
                self.idle.notify_all()
        if notify is not None:
            notify.put(None)

    def wait_idle(self, timeout: float) -> int:
        """Wait until every issued call has finished; the number still unfinished after ``timeout``."""
        with self.lock:
            self.idle.wait_for(lambda: self.outstanding == 0, timeout)
            return self.outstanding


class Target:
    """One process's connection(s) to the server: multi-callables that send serialized requests as they are."""

    def __init__(self, address: str, channels: int = 1):
        import grpc

        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        # distinct channel args keep gRPC from sharing one connection between the channels
        self.channels = [grpc.insecure_channel(address, options=opts + [("dualvec.loadtest.channel", i)])
                         for i in range(max(1, channels))]
        self.callables = [{m: ch.unary_unary(m, request_serializer=None, response_deserializer=None)
                           for m in (SEARCH, BATCH, SCORE)} for ch in self.channels]

    def wait_ready(self, timeout: float, address: str) -> None:
        import grpc

        for ch in self.channels:
            try:
                grpc.channel_ready_future(ch).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                raise LoadtestError(f"no server answered at {address} within {timeout:g} s") from None

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def run_phase(target: Target, pool: RequestPool, expected: list[bytes] | None, phase: Phase) -> PhaseResult:
    """Run one phase in this process and return what it measured."""
    t0 = time.perf_counter() + (phase.start_wall - time.time())
    rec = _Recorder(pool, expected if phase.check else None, t0, phase)
    rng = np.random.default_rng(phase.seed)
    indices = iter(())
    sent = 0
    callables = target.callables

    def next_index() -> int:
        nonlocal indices
        try:
            return next(indices)
        except StopIteration:
            indices = iter(pool.draw(rng, 4096).tolist())
            return next(indices)

    def issue(t_intended: float, notify=None) -> None:
        nonlocal sent
        i = next_index()
        _, method, payload = pool.entries[i]
        call = callables[sent % len(callables)][method]
        sent += 1
        rec.issued()
        t_sent = time.perf_counter()
        fut = call.future(payload, timeout=phase.deadline)
        fut.add_done_callback(lambda f, i=i, ti=t_intended, ts=t_sent: rec.done(i, ti, ts, f, notify))

    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # hand the GIL over quickly: the sender's wake-ups are latency-critical
    cpu0 = time.process_time()
    try:
        _sleep_until(t0)
        end = rec.end
        if phase.mode == "closed":
            finished: queue.SimpleQueue = queue.SimpleQueue()
            running = 0
            for _ in range(phase.concurrency):
                issue(time.perf_counter(), finished)
                running += 1
            while running:
                try:
                    finished.get(timeout=phase.deadline + 5.0)
                except queue.Empty:
                    break
                running -= 1
                now = time.perf_counter()
                if now < end:
                    issue(now, finished)
                    running += 1
        else:
            gap = 1.0 / phase.rate
            poisson = phase.arrivals == "poisson"
            j, t = 0, t0 + phase.offset
            while t < end - _EPS:
                delay = t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                issue(t)
                j += 1
                # evenly spaced times are computed, not summed, so that float error cannot add a call
                t = t + rng.exponential(gap) if poisson else t0 + phase.offset + j * gap
        rec.result.unfinished = rec.wait_idle(phase.deadline + 5.0)
    finally:
        sys.setswitchinterval(old_switch)
    result = rec.result
    result.cpu = [time.process_time() - cpu0]
    result.wall = time.perf_counter() - t0
    return result


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


# =================================================================================== processes and their phases

def _worker_main(conn, address: str, channels: int, pool: RequestPool, expected, connect_timeout: float) -> None:
    """A spawned generator process: connect, say ready, run each phase it is sent, until told to stop."""
    logging.basicConfig(level=logging.WARNING)
    try:
        target = Target(address, channels)
        target.wait_ready(connect_timeout, address)
        conn.send(("ready", None))
        while True:
            phase = conn.recv()
            if phase is None:
                break
            conn.send(("result", run_phase(target, pool, expected, phase).to_state()))
        target.close()
    except Exception as exc:  # report to the parent, which stops the run with the message
        conn.send(("error", f"{exc}\n{traceback.format_exc()}"))


class Runner:
    """Runs phases on ``processes`` generator processes (spawned once, reused for every phase), or in this process
    when ``processes`` is 1, and merges their results."""

    def __init__(self, address: str, pool: RequestPool, expected: list[bytes] | None, processes: int = 1,
                 channels: int = 1, connect_timeout: float = 10.0):
        self.address, self.pool, self.expected = address, pool, expected
        self.processes = max(1, processes)
        self.target: Target | None = None
        self.workers: list = []
        self.conns: list = []
        if self.processes == 1:
            self.target = Target(address, channels)
            self.target.wait_ready(connect_timeout, address)
            return
        ctx = mp.get_context("spawn")  # gRPC's threads do not survive fork
        for _ in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, address, channels, pool, expected, connect_timeout),
                               daemon=True, name="dualvec-loadtest")
            proc.start()
            self.workers.append(proc)
            self.conns.append(parent)
        for conn in self.conns:
            self._receive(conn, "ready", timeout=connect_timeout + 60.0)

    def _receive(self, conn, expect: str, timeout: float):
        if not conn.poll(timeout):
            raise LoadtestError(f"a generator process did not answer within {timeout:g} s")
        kind, payload = conn.recv()
        if kind == "error":
            raise LoadtestError(f"a generator process failed: {payload.strip().splitlines()[0]}")
        if kind != expect:
            raise LoadtestError(f"a generator process sent {kind!r}, expected {expect!r}")
        return payload

    def run(self, mode: str, *, duration: float, warmup: float, deadline: float, concurrency: int = 0,
            rate: float = 0.0, arrivals: str = "uniform", interval: float | None = None, seed: int = 0,
            check: bool = False) -> PhaseResult:
        """One phase on every process: the closed loop's clients or the open loop's rate are split across them."""
        p = self.processes
        if interval is None:
            interval = auto_interval(warmup + duration)
        start = time.time() + (0.05 if p == 1 else 0.3)
        phases = []
        for i in range(p):
            conc = concurrency // p + (1 if i < concurrency % p else 0)
            phases.append(Phase(mode=mode, start_wall=start, warmup=warmup, duration=duration, deadline=deadline,
                                interval=interval, concurrency=conc, rate=rate / p, offset=i / rate if rate else 0.0,
                                arrivals=arrivals, seed=seed * 1000 + i, check=check))
        if mode == "closed":
            phases = [ph for ph in phases if ph.concurrency > 0]
        if p == 1:
            results = [run_phase(self.target, self.pool, self.expected, phases[0])]
        else:
            for conn, ph in zip(self.conns, phases):
                conn.send(ph)
            timeout = warmup + duration + 2 * deadline + 60.0
            results = [PhaseResult.from_state(self._receive(conn, "result", timeout))
                       for conn in self.conns[:len(phases)]]
        merged = PhaseResult()
        for r in results:
            merged.merge(r)
        return merged

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in self.workers:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()


def auto_interval(seconds: float) -> float:
    """A time-series resolution giving about 100 points: 0.1, 0.2, 0.5, 1, 2, 5 ... seconds."""
    for step in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0):
        if seconds / step <= 120:
            return step
    return 60.0


class RssSampler:
    """Samples the resident memory of a process (the server) every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 1.0):
        try:
            self.proc = psutil.Process(pid)
            self.proc.memory_info()
        except psutil.Error as exc:
            raise LoadtestError(f"--server-pid {pid}: {exc}") from None
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        try:
            self.samples.append((time.perf_counter() - self._t0, self.proc.memory_info().rss))
        except psutil.Error:  # the server went away: keep what was sampled
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        mib = np.array([s[1] for s in self.samples]) / 2**20
        # growth: the last tenth of the run against the first tenth after warm-up settled (robust to one spike)
        tenth = max(1, len(mib) // 10)
        return {"start_mib": round(float(mib[0]), 1), "end_mib": round(float(mib[-1]), 1),
                "max_mib": round(float(mib.max()), 1),
                "growth_mib": round(float(np.median(mib[-tenth:]) - np.median(mib[tenth:2 * tenth] if len(mib) >= 3
                                                                                 else mib[:tenth])), 1),
                "samples": len(mib), "t_s": [round(s[0], 2) for s in self.samples],
                "rss_mib": [round(float(v), 1) for v in mib]}


# ============================================================================================ summaries, reports

def summarize(res: PhaseResult, *, mode: str, duration: float, warmup: float, concurrency: int = 0,
              rate: float = 0.0, interval: float = 1.0, series: bool = True) -> dict:
    """The numbers of a phase as a JSON-ready dict."""
    failed = sum(res.errors.values())
    out: dict = {
        "mode": mode, "concurrency": concurrency if mode == "closed" else None,
        "offered_rate": round(rate, 2) if mode == "open" else None,
        "duration_s": duration, "warmup_s": warmup,
        "send_rate": round(res.sent / duration, 2),
        "achieved_rate": round(res.completed_ok / duration, 2),
        "calls": {"sent": res.sent, "ok": res.ok.total, "failed": failed, "unfinished": res.unfinished,
                  "checked": res.checked, "wrong_answers": res.wrong},
        "error_rate": round(failed / res.sent, 6) if res.sent else 0.0,
        "latency_ms": latency_ms(res.ok),
        "latency_all_ms": latency_ms(res.all),
        "errors": dict(res.errors.most_common()),
        "error_messages": dict(res.messages),
        "per_op": {op: dict(latency_ms(h), errors={k.split(" ", 1)[1]: v for k, v in res.errors_by_op.items()
                                                   if k.split(" ", 1)[0] == op})
                   for op, h in res.per_op.items()},
        "generator_cpu": [round(c / res.wall, 3) for c in res.cpu] if res.wall else [],
    }
    if mode == "open":
        out["send_lag_ms"] = {k: latency_ms(res.lag)[k] for k in ("p50", "p99", "max")}
    if res.wrong_examples:
        out["wrong_answer_examples"] = res.wrong_examples
    warnings = []
    if mode == "open" and rate and res.sent < 0.98 * rate * duration:
        warnings.append(f"the generator sent {res.sent / duration:.0f}/s of the {rate:.0f}/s asked: it is the "
                        f"bottleneck (add --processes)")
    elif mode == "open" and res.lag.total and res.lag.percentile(99) > 5000:
        warnings.append(f"calls left up to {res.lag.percentile(99) / 1000:.1f} ms late (p99): the generator is "
                        f"falling behind its schedule (add --processes); its lateness counts in the latency")
    busy = [c / res.wall for c in res.cpu if res.wall]
    if busy and max(busy) > 0.9:
        warnings.append(f"a generator process used {max(busy):.0%} of a core: the numbers may measure the "
                        f"generator (add --processes, or run it on another machine)")
    if res.unfinished:
        warnings.append(f"{res.unfinished} calls were still unanswered when the run stopped waiting")
    out["warnings"] = warnings
    if series and res.series_ok is not None:
        out["series"] = _series(res, interval)
    return out


def _series(res: PhaseResult, interval: float) -> dict:
    proto = Histogram(SERIES_BITS)
    n = len(res.series_ok)
    used = np.flatnonzero(res.series_ok + res.series_err)
    n = int(used[-1]) + 1 if len(used) else 0
    p50, p99, mx = [], [], []
    for i in range(n):
        proto.counts[:] = res.series_hist[i]
        proto.total = int(res.series_hist[i].sum())
        nz = np.flatnonzero(proto.counts)
        if proto.total:
            proto.max = int(proto.bucket_bounds(int(nz[-1]))[1])
            proto.min = int(proto.bucket_bounds(int(nz[0]))[0])
        p50.append(None if not proto.total else round(proto.percentile(50) / 1000, 3))
        p99.append(None if not proto.total else round(proto.percentile(99) / 1000, 3))
        mx.append(None if not proto.total else round(proto.max / 1000, 3))
    return {"interval_s": interval, "t_s": [round((i + 0.5) * interval, 3) for i in range(n)],
            "ok_per_s": [round(float(v) / interval, 1) for v in res.series_ok[:n]],
            "errors_per_s": [round(float(v) / interval, 1) for v in res.series_err[:n]],
            "p50_ms": p50, "p99_ms": p99, "max_ms": mx}


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _lat_line(lat: dict) -> str:
    return "  ".join(f"{k} {_fmt_ms(lat[k])}" for k in ("p50", "p90", "p99", "p99.9", "max"))


def format_report(s: dict, header: str) -> str:
    lines = [header]
    if s["mode"] == "open":
        lines.append(f"  offered {s['offered_rate']:.1f}/s   sent {s['send_rate']:.1f}/s   achieved "
                     f"{s['achieved_rate']:.1f}/s (answered, ok)")
    else:
        lines.append(f"  {s['concurrency']} clients   achieved {s['achieved_rate']:.1f}/s (answered, ok)")
    c = s["calls"]
    lines.append(f"  calls: {c['sent']:,} in the window, {c['ok']:,} ok, {c['failed']:,} failed"
                 + (f", {c['unfinished']} unfinished" if c["unfinished"] else "")
                 + (f"; answers checked against idle answers: {c['checked']:,}, wrong: {c['wrong_answers']}"
                    if c["checked"] else ""))
    lines.append(f"  latency ms (ok calls, n={s['latency_ms']['count']:,}):  {_lat_line(s['latency_ms'])}")
    if c["failed"]:
        lines.append(f"  latency ms (all calls):            {_lat_line(s['latency_all_ms'])}")
        for code, n in s["errors"].items():
            msg = s["error_messages"].get(code, "")
            lines.append(f"  errors {code}: {n:,}" + (f"  ({msg[:100]})" if msg else ""))
    else:
        lines.append("  errors: none")
    if len(s["per_op"]) > 1:
        for op, lat in s["per_op"].items():
            errs = sum(lat["errors"].values())
            lines.append(f"    {op:8s} n={lat['count']:<8,} p50 {_fmt_ms(lat['p50'])}  p99 {_fmt_ms(lat['p99'])}  "
                         f"max {_fmt_ms(lat['max'])}" + (f"  errors {errs}" if errs else ""))
    extra = []
    if "send_lag_ms" in s:
        extra.append(f"send lag p50 {_fmt_ms(s['send_lag_ms']['p50'])} ms, p99 {_fmt_ms(s['send_lag_ms']['p99'])} ms")
    if s["generator_cpu"]:
        extra.append("generator CPU " + ", ".join(f"{c:.0%}" for c in s["generator_cpu"]) + " of a core")
    if extra:
        lines.append("  " + "; ".join(extra))
    if s.get("server_rss"):
        r = s["server_rss"]
        lines.append(f"  server RSS: start {r['start_mib']} MiB, end {r['end_mib']} MiB, max {r['max_mib']} MiB, "
                     f"growth {r['growth_mib']:+} MiB ({r['samples']} samples)")
    for w in s["warnings"]:
        lines.append(f"  warning: {w}")
    if s.get("command"):
        lines.append(f"  reproduce: {s['command']}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(res: PhaseResult, summary: dict, path: str, title: str) -> None:
    """Latency over time (p50, p99, max per interval, answers per second) and the latency distribution."""
    plt = _pyplot()
    rss = summary.get("server_rss")
    rows = 3 if rss else 2
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.0 * rows), dpi=80)
    ser = summary.get("series") or _series(res, 1.0)
    t = np.array(ser["t_s"])
    ax = axes[0]
    for key, style in (("max_ms", ":"), ("p99_ms", "-"), ("p50_ms", "-")):
        vals = np.array([np.nan if v is None else v for v in ser[key]], dtype=float)
        ax.plot(t, vals, style, label=key.replace("_ms", ""))
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("time since start (s)")
    if summary["warmup_s"]:
        ax.axvspan(0, summary["warmup_s"], color="0.9", label="warm-up")
    ax2 = ax.twinx()
    ax2.plot(t, ser["ok_per_s"], color="tab:green", alpha=0.5, label="ok/s")
    if any(ser["errors_per_s"]):
        ax2.plot(t, ser["errors_per_s"], color="tab:red", alpha=0.5, label="errors/s")
    ax2.set_ylabel("calls/s")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", ncol=3)
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    ax = axes[1]
    if res.ok.total:
        qs, vals = res.ok.percentile_curve()
        x = 1.0 / (1.0 - qs / 100.0)
        ax.plot(x, vals / 1000.0)
        ax.set_xscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000, 100000]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
        ax.set_xlim(1, max(2, min(1e5, res.ok.total)))
        for q, lab in ((50, "p50"), (99, "p99")):
            v = res.ok.percentile(q) / 1000
            ax.annotate(f"{lab} {_fmt_ms(v)} ms", (1 / (1 - q / 100), v), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("percentile (ok calls, measured window)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    if rss:
        ax = axes[2]
        ax.plot(rss["t_s"], rss["rss_mib"])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("server RSS (MiB)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ======================================================================================================== sweep

def parse_sweep(spec: str) -> list[float] | None:
    """'auto' -> None (rates chosen after a probe); 'START:STOP:STEP' -> the rates; 'A,B,C' -> those."""
    if spec == "auto":
        return None
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if start <= 0 or step <= 0 or stop < start:
                raise ValueError
            return [round(start + i * step, 3) for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]
        rates = [float(x) for x in spec.split(",")]
        if not rates or min(rates) <= 0:
            raise ValueError
        return sorted(rates)
    except ValueError:
        raise LoadtestError(f"--sweep {spec!r}: expected 'auto', START:STOP:STEP (e.g. 200:3000:200) or a list of "
                            f"rates (e.g. 100,500,1000)") from None


def _nice(x: float) -> float:
    if x <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(x))
    return round(x / mag * 4) / 4 * mag if x >= 10 else round(x, 1)


def judge_steps(steps: list[dict], slo_ms: float | None) -> str:
    """Mark each sweep step saturated or not (in place) and return the latency rule used. A step is saturated
    when achieved < 95% of offered, more than 1% of calls failed, or its latency broke the rule: p99 above
    ``slo_ms`` when given, otherwise p50 above 5x the lowest p50 of the sweep (and above 5 ms). The automatic rule
    reads the median because queueing past capacity lifts it by orders of magnitude, while a p99 on a shared
    machine also jumps whenever another process takes the cores."""
    p50s = [s["latency_ms"]["p50"] for s in steps if s["latency_ms"]["p50"] is not None]
    if slo_ms is not None:
        rule, key, bound = f"p99 above {slo_ms:g} ms", "p99", slo_ms
    else:
        bound = round(max(5.0 * min(p50s), 5.0), 3) if p50s else 5.0
        rule, key = f"p50 above {bound:g} ms (5x the lowest p50, at least 5 ms)", "p50"
    for s in steps:
        reasons = []
        if s["achieved_rate"] < 0.95 * s["offered_rate"]:
            reasons.append("achieved < 95% of offered")
        if s["error_rate"] > 0.01:
            reasons.append(f"{s['error_rate']:.1%} of calls failed")
        value = s["latency_ms"][key]
        if value is None or value > bound:
            reasons.append(f"{key} above {bound:g} ms")
        s["saturated"] = bool(reasons)
        s["saturated_because"] = reasons
    return rule


def saturation_of(steps: list[dict], rule: str) -> dict:
    """The saturation point: the first step of the saturated run that ends the sweep, and the last step before
    it. Saturated steps below that run were transient (typically the machine stalled: their send lag says whether
    the generator was held up too) and are listed apart, not taken for the knee."""
    first = None
    for i in range(len(steps) - 1, -1, -1):
        if not steps[i]["saturated"]:
            break
        first = i
    below_steps = steps[:first] if first is not None else steps
    unsaturated = [s for s in below_steps if not s["saturated"]]
    below = unsaturated[-1] if unsaturated else None
    return {
        "rule": rule,
        "first_saturated_rate": steps[first]["offered_rate"] if first is not None else None,
        "sustainable_rate": below["offered_rate"] if below else None,
        "sustainable_achieved": below["achieved_rate"] if below else None,
        "latency_below_ms": {k: below["latency_ms"][k] for k in ("p50", "p90", "p99", "p99.9")} if below else None,
        "peak_achieved_rate": max((s["achieved_rate"] for s in steps), default=None),
        "transient_saturation_rates": [s["offered_rate"] for s in below_steps if s["saturated"]],
        "reached": first is not None,
    }


def run_sweep(runner: Runner, args, interval: float | None) -> dict:
    rates = parse_sweep(args.sweep)
    probe = None
    if rates is None:
        conc = max(16, 8 * runner.processes)
        log.info("sweep: probing the capacity with %d closed-loop clients for 3 s", conc)
        res = runner.run("closed", duration=3.0, warmup=1.0, deadline=args.deadline, concurrency=conc,
                         seed=args.seed)
        cap = res.completed_ok / 3.0
        probe = {"concurrency": conc, "achieved_rate": round(cap, 1),
                 "latency_ms": latency_ms(res.ok)}
        if cap <= 0:
            raise LoadtestError("sweep: the probe got no answer; is the server overloaded or failing?")
        rates = sorted({_nice(cap * f) for f in (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)})
        log.info("sweep: closed-loop capacity about %.0f/s; offering %s", cap, ", ".join(f"{r:g}" for r in rates))
    steps: list[dict] = []
    consecutive = 0
    for n, rate in enumerate(rates, 1):
        res = runner.run("open", duration=args.duration, warmup=args.warmup, deadline=args.deadline, rate=rate,
                         arrivals=args.arrivals, interval=interval, seed=args.seed + n, check=args.check)
        s = summarize(res, mode="open", duration=args.duration, warmup=args.warmup, rate=rate, series=False)
        s["generator_bound"] = s["send_rate"] < 0.98 * rate
        steps.append(s)
        judge_steps(steps, args.slo_ms)  # with what is known so far: to decide when to stop
        reasons = s["saturated_because"]
        log.info("sweep %d/%d: offered %g/s achieved %.0f/s p50 %s p99 %s ms, %d failed%s", n, len(rates), rate,
                 s["achieved_rate"], _fmt_ms(s["latency_ms"]["p50"]), _fmt_ms(s["latency_ms"]["p99"]),
                 s["calls"]["failed"], f"  SATURATED ({'; '.join(reasons)})" if reasons else "")
        consecutive = consecutive + 1 if reasons else 0
        if consecutive >= 2:
            break
    rule = judge_steps(steps, args.slo_ms)  # again with the whole sweep's lowest p50
    return {"probe": probe, "steps": steps, "saturation": saturation_of(steps, rule)}


def format_sweep(sweep: dict, header: str) -> str:
    lines = [header, "  offered/s  achieved/s    p50 ms    p90 ms    p99 ms  p99.9 ms   failed  note"]
    for s in sweep["steps"]:
        lat = s["latency_ms"]
        note = "saturated: " + "; ".join(s["saturated_because"]) if s["saturated"] else ""
        if s["generator_bound"]:
            note += " (generator-bound)"
        lag = (s.get("send_lag_ms") or {}).get("p99")
        if lag is not None and lag > 50:
            note += f" (the generator was held up too: send lag p99 {lag:.0f} ms)"
        lines.append(f"  {s['offered_rate']:9.0f}  {s['achieved_rate']:10.1f}  {_fmt_ms(lat['p50']):>8}  "
                     f"{_fmt_ms(lat['p90']):>8}  {_fmt_ms(lat['p99']):>8}  {_fmt_ms(lat['p99.9']):>8}  "
                     f"{s['calls']['failed']:7d}  {note}")
    sat = sweep["saturation"]
    if sat["sustainable_rate"] is not None:
        lb = sat["latency_below_ms"]
        lines.append(f"  saturation: the server kept up with {sat['sustainable_rate']:g}/s (achieved "
                     f"{sat['sustainable_achieved']:.0f}/s; p50 {_fmt_ms(lb['p50'])} ms, p99 {_fmt_ms(lb['p99'])} ms)"
                     + (f" and not with {sat['first_saturated_rate']:g}/s" if sat["reached"] else
                        " and with every rate offered: the saturation point was not reached")
                     + f"; peak achieved {sat['peak_achieved_rate']:.0f}/s; saturated: {sat['rule']}")
    else:
        lines.append("  saturation: already saturated at the lowest rate offered")
    if sat["transient_saturation_rates"]:
        lines.append("  transient saturation below the knee at " + ", ".join(
            f"{r:g}/s" for r in sat["transient_saturation_rates"]) + " (not taken for the knee)")
    return "\n".join(lines)


def plot_sweep(sweep: dict, path: str, title: str) -> None:
    """The capacity curve: latency p50/p99 and achieved rate against offered load, saturation point marked."""
    plt = _pyplot()
    steps = sweep["steps"]
    x = np.array([s["offered_rate"] for s in steps])
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=80, sharex=True)
    for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p99.9", "v:")):
        y = np.array([np.nan if s["latency_ms"][key] is None else s["latency_ms"][key] for s in steps])
        ax.plot(x, y, style, label=key, markersize=4)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, from intended send)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(textwrap.fill(title, 95), fontsize=8)
    bx.plot(x, [s["achieved_rate"] for s in steps], "o-", label="achieved (ok answers/s)", markersize=4)
    bx.plot(x, x, "--", color="0.6", label="offered")
    failed = [s["error_rate"] * s["send_rate"] for s in steps]
    if any(failed):
        bx.plot(x, failed, "x-", color="tab:red", label="failed calls/s", markersize=4)
    bx.set_xlabel("offered load (calls/s, open loop)")
    bx.set_ylabel("calls/s")
    bx.grid(True, alpha=0.3)
    sat = sweep["saturation"]
    if sat["sustainable_rate"] is not None:
        for a in (ax, bx):
            a.axvline(sat["sustainable_rate"], color="tab:green", alpha=0.6)
            if sat["reached"]:
                a.axvline(sat["first_saturated_rate"], color="tab:red", alpha=0.6)
        lb = sat["latency_below_ms"]
        bx.annotate(f"keeps up to {sat['sustainable_rate']:g}/s\n(p50 {_fmt_ms(lb['p50'])} ms, "
                    f"p99 {_fmt_ms(lb['p99'])} ms)", (sat["sustainable_rate"], sat["sustainable_achieved"]),
                    xytext=(-10, 10), textcoords="offset points", fontsize=8, ha="right")
        if sat["reached"]:
            ax.annotate("saturated", (sat["first_saturated_rate"], ax.get_ylim()[1]), fontsize=8, color="tab:red",
                        xytext=(3, -12), textcoords="offset points")
    for rate in sat.get("transient_saturation_rates", []):
        step = next(s for s in steps if s["offered_rate"] == rate)
        ax.annotate("transient", (rate, step["latency_ms"]["p99"] or 1.0), fontsize=7, color="0.4",
                    xytext=(4, 0), textcoords="offset points")
    ax.legend(fontsize=8, loc="upper left")
    bx.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ======================================================================================================= command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualvec loadtest",
        description="Load-test a running dualvec server. Closed loop (--concurrency N: N clients, each sending its "
        "next call when the last is answered) or open loop (--rate QPS: calls on a fixed schedule, latency from each "
        "call's intended send time, so queueing is never hidden). --sweep steps the rate up and draws the capacity "
        "curve. Percentiles come from mergeable log-linear histograms (0.1%% resolution).",
        epilog="examples:  dualvec loadtest 127.0.0.1:50051 --concurrency 8 --duration 5\n"
        "           dualvec loadtest 127.0.0.1:50051 --rate 1000 --duration 20 --plot run.png\n"
        "           dualvec loadtest 127.0.0.1:50051 --sweep auto --processes 2 --plot capacity.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", metavar="ADDR", help="server address, HOST:PORT")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-c", "--concurrency", type=int, help="closed loop with N clients (default: 8, unless --rate "
                     "or --sweep is given)")
    how.add_argument("-r", "--rate", type=float, help="open loop at a fixed rate of QPS calls per second")
    how.add_argument("--sweep", metavar="SPEC", help="open-loop steps of rising rate: 'auto' (after a short "
                     "closed-loop probe), START:STOP:STEP (200:3000:200) or a list (100,500,1000); stops after two "
                     "saturated steps")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds (per step with --sweep; 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (per step; 2)")
    p.add_argument("-p", "--processes", type=int, default=1, help="generator processes; their histograms are "
                   "merged (1)")
    p.add_argument("--channels", type=int, default=1, help="gRPC connections per process (1)")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform",
                   help="open loop: evenly spaced calls, or a Poisson process (uniform)")
    p.add_argument("--mix", default=DEFAULT_MIX, help="operations and their weights: in-in, in-out, out-in, out-out "
                   "(Search), batch (BatchSearch), desm (ScoreDocuments); e.g. "
                   "'in-in=1,in-out=1,out-in=1,out-out=1,batch=0.1,desm=0.1' (default: the four pairs alike)")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per search (10)")
    p.add_argument("--deadline", type=float, default=5.0, help="seconds each call may take (5)")
    p.add_argument("--batch-size", type=int, default=8, help="searches per BatchSearch (8)")
    p.add_argument("--docs", type=int, default=10, help="documents per ScoreDocuments (10)")
    p.add_argument("--doc-length", type=int, default=30, help="tokens per document (30)")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--words", metavar="FILE", help="vocabulary to draw from: a word per line, most frequent "
                       "first (default: discovered through the API)")
    words.add_argument("--bundle", metavar="DIR", help="draw words from this bundle's vocabulary")
    p.add_argument("--zipf", type=float, default=1.0, help="skew of word ranks, P(r) ~ 1/(r+1)^s; 0 = uniform (1)")
    p.add_argument("--pool", type=int, default=2000, help="distinct requests prepared (2000)")
    p.add_argument("--discover", type=int, default=16, help="random-direction searches used to find words below "
                   "the top max_k when the vocabulary is discovered (16)")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--check", action="store_true", help="compare every answer with the idle answer to the same "
                   "request (fetched before the load); a difference counts as a wrong answer")
    p.add_argument("--slo-ms", type=float, help="sweep: a step whose p99 is above this is saturated (default: one "
                   "whose p50 is above 5x the sweep's lowest p50, at least 5 ms)")
    p.add_argument("--server-pid", type=int, help="sample this process's resident memory (the server's) during "
                   "the run and report its growth")
    p.add_argument("--interval", type=float, help="time-series resolution in seconds (automatic)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--plot", metavar="PNG", help="write latency over time and its distribution (with --sweep: the "
                   "capacity curve)")
    p.add_argument("--fail-on-errors", action="store_true", help=f"exit {EXIT_FAILED_CALLS} when any call failed "
                   "or any answer was wrong")
    p.add_argument("--seed", type=int, default=0, help="random seed of words and schedules (0)")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the server (10)")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    return p


def _validate(args) -> None:
    for name in ("duration", "deadline"):
        if getattr(args, name) <= 0:
            raise LoadtestError(f"--{name} must be > 0")
    if args.warmup < 0:
        raise LoadtestError("--warmup must be >= 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise LoadtestError("--concurrency must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise LoadtestError("--rate must be > 0")
    for name in ("processes", "channels", "k", "batch_size", "docs", "doc_length", "pool"):
        if getattr(args, name) < 1:
            raise LoadtestError(f"--{name.replace('_', '-')} must be >= 1")
    if args.concurrency is not None and args.processes > args.concurrency:
        raise LoadtestError(f"--processes {args.processes} is more than --concurrency {args.concurrency}")


def prepare(args, stub, info) -> tuple[RankedWords, RequestPool]:
    from dualvec.v1 import dualvec_pb2 as pb

    if args.words:
        words = words_from_file(args.words)
    elif args.bundle:
        words = words_from_bundle(args.bundle)
    else:
        words = discover_words(stub, info, args.model, args.discover, args.seed, args.deadline)
    if args.k > info.max_k > 0:
        raise LoadtestError(f"--k {args.k} is above the server's limit of {info.max_k}")
    spaces = {"in" if s == pb.IN else "out" for s in info.spaces} or {"in"}
    cfg = WorkloadConfig(mix=parse_mix(args.mix), k=args.k, pool=args.pool, zipf=args.zipf,
                         batch_size=min(args.batch_size, info.max_batch or args.batch_size), docs=args.docs,
                         doc_length=args.doc_length, model=args.model, seed=args.seed)
    return words, build_pool(words, cfg, spaces)


def idle_answers(target: Target, pool: RequestPool, deadline: float) -> list[bytes]:
    """The answer to every request of the pool, one call at a time (before any load)."""
    import grpc

    out = []
    calls = target.callables[0]
    for i, (op, method, payload) in enumerate(pool.entries):
        try:
            out.append(calls[method](payload, timeout=max(deadline, 10.0)))
        except grpc.RpcError as exc:
            raise LoadtestError(f"--check: the idle answer to {op} request #{i} failed: {exc.code().name}: "
                                f"{exc.details()}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    """`dualvec loadtest`; returns the exit code (0; 1 on an error that stopped the run; 3 with --fail-on-errors
    when a call failed or an answer was wrong)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `dualvec loadtest -- --help` passes the separator on
        argv = argv[1:]
    args = parser.parse_args(argv)
    args.command_line = "dualvec loadtest " + " ".join(shlex.quote(a) for a in argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except LoadtestError as exc:
        if args.debug:
            raise
        print(f"dualvec loadtest: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("dualvec loadtest: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    import grpc

    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

    _validate(args)
    if args.concurrency is None and args.rate is None and args.sweep is None:
        args.concurrency = 8
    if args.sweep is not None:
        parse_sweep(args.sweep)  # fail early on a bad spec
    # set-up on a connection of its own: server info, the vocabulary, the request pool, idle answers
    setup = Target(args.address)
    try:
        setup.wait_ready(args.connect_timeout, args.address)
        stub = pb_grpc.DualVecStub(setup.channels[0])
        try:
            info = stub.GetInfo(pb.GetInfoRequest(model=args.model), timeout=args.connect_timeout)
        except grpc.RpcError as exc:
            raise LoadtestError(f"GetInfo failed: {exc.code().name}: {exc.details()}") from None
        words, pool = prepare(args, stub, info)
        log.info("server %s: %r, %s words x %d dims; %d requests prepared (%s), words from %s", args.address,
                 info.model, f"{info.vocab_size:,}", info.dim, len(pool.entries),
                 ", ".join(f"{op} {w:.0%}" for op, w in zip(pool.ops, pool.weights)), words.source)
        expected = None
        if args.check:
            log.info("--check: fetching the idle answers of the %d requests", len(pool.entries))
            expected = idle_answers(setup, pool, args.deadline)
    finally:
        setup.close()

    runner = Runner(args.address, pool, expected, args.processes, args.channels, args.connect_timeout)
    sampler = RssSampler(args.server_pid, every=max(0.5, args.interval or 1.0)) if args.server_pid else None
    context = {"target": args.address, "model": info.model, "vocab_size": int(info.vocab_size), "dim": int(info.dim),
               "processes": runner.processes, "mix": args.mix, "k": args.k, "deadline_s": args.deadline,
               "arrivals": args.arrivals, "words": words.source, "command": args.command_line}
    try:
        if sampler:
            sampler.__enter__()
        try:
            if args.sweep is not None:
                sweep = run_sweep(runner, args, args.interval)
            else:
                mode = "closed" if args.concurrency else "open"
                interval = args.interval or auto_interval(args.warmup + args.duration)
                log.info("%s for %g s (+%g s warm-up) with %d process(es)", f"{args.concurrency} closed-loop "
                         f"clients" if mode == "closed" else f"open loop at {args.rate:g}/s ({args.arrivals})",
                         args.duration, args.warmup, runner.processes)
                res = runner.run(mode, duration=args.duration, warmup=args.warmup, deadline=args.deadline,
                                 concurrency=args.concurrency or 0, rate=args.rate or 0.0, arrivals=args.arrivals,
                                 interval=interval, seed=args.seed, check=args.check)
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
    finally:
        runner.close()
    rss = sampler.summary() if sampler else None
    if args.sweep is not None:
        return _report_sweep(sweep, args, context, rss)
    summary = summarize(res, mode=mode, duration=args.duration, warmup=args.warmup, concurrency=args.concurrency or 0,
                        rate=args.rate or 0.0, interval=interval)
    summary.update(context)
    if rss:
        summary["server_rss"] = rss
    title = ((f"{args.concurrency} clients (closed loop)" if mode == "closed" else
              f"open loop at {args.rate:g}/s ({args.arrivals})")
             + f", {args.duration:g} s after {args.warmup:g} s warm-up, {runner.processes} process(es), mix {args.mix}")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_report(summary, f"dualvec loadtest {args.address} ({info.model}): {title}"))
    if args.plot:
        plot_run(res, summary, args.plot, f"{info.model}: {title}")
        log.info("wrote %s", args.plot)
    failed = summary["calls"]["failed"] + summary["calls"]["wrong_answers"] + summary["calls"]["unfinished"]
    return EXIT_FAILED_CALLS if args.fail_on_errors and failed else EXIT_OK


def _report_sweep(sweep: dict, args, context: dict, rss: dict | None) -> int:
    out = {"sweep": sweep, **context, "duration_s": args.duration, "warmup_s": args.warmup}
    if rss:
        out["server_rss"] = rss
    title = (f"sweep of open-loop rates, {args.duration:g} s per step after {args.warmup:g} s warm-up, "
             f"{args.processes} process(es), mix {args.mix}")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(format_sweep(sweep, f"dualvec loadtest {args.address} ({context['model']}): {title}"))
        if rss:
            print(f"  server RSS: start {rss['start_mib']} MiB, end {rss['end_mib']} MiB, max {rss['max_mib']} MiB")
        print(f"  reproduce: {context['command']}")
    if args.plot:
        plot_sweep(sweep, args.plot, f"{context['model']}: {title}")
        log.info("wrote %s", args.plot)
    failed = sum(s["calls"]["failed"] + s["calls"]["wrong_answers"] for s in sweep["steps"] if not s["saturated"])
    return EXIT_FAILED_CALLS if args.fail_on_errors and failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
