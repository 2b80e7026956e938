"""Measuring for scripts/bench.py: query samples, exact ground truth, recall as ann-benchmarks counts it,
single-query latency loops, in-process throughput of a FAISS index, the `dualvec serve` subprocess and its memory.

Nothing here prints a table or draws a plot (that is bench_report.py); nothing here knows a peer library (that is
bench_peers.py: every system is reached through the same small adapter, and this module only calls
``adapter.query(pair, word_id, k)``).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np
from tqdm.auto import tqdm

from dualvec.kernel.ann import SearchParams, SpaceIndex
from dualvec.kernel.bundle import Bundle
from dualvec.kernel.truth import QuerySample, draw_ids, frequency_weights
from dualvec.kernel.spaces import Space, parse_pair

log = logging.getLogger("bench")

DISTRIBUTIONS = ("uniform", "frequency")


# --------------------------------------------------------------------------------------------------- query samples

def draw_queries(bundle: Bundle, m: int, seed: int) -> dict[str, np.ndarray]:
    """Query word rows per distribution: "uniform" (m distinct rows drawn uniformly from the vocabulary) and
    "frequency" (m rows drawn with replacement, with probability proportional to the corpus count). (m,) int64."""
    rng = np.random.default_rng(seed)
    n = bundle.vocab_size
    return {"uniform": draw_ids(n, min(m, n), rng),
            "frequency": draw_ids(n, m, rng, weights=frequency_weights(bundle.vocab.counts))}


def query_vectors(bundle: Bundle, pair: str, ids: np.ndarray) -> np.ndarray:
    """(m, d) float32 unit query vectors of the pair's query space."""
    q, _ = parse_pair(pair)
    return np.ascontiguousarray(bundle.vectors[q][ids], dtype=np.float32)


def query_sample(bundle: Bundle, pair: str, ids: np.ndarray) -> QuerySample:
    """The (m,) query rows ids of a pair's query space with their (m, d) float32 unit vectors."""
    return QuerySample(ids, query_vectors(bundle, pair, ids))


def to_matrix(rows: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """(m, k) int64 from ragged lists of ids, -1 padded."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:k]
        out[i, :len(r)] = r
    return out


# -------------------------------------------------------------------------------------------- single-query loops

@dataclass
class QueryRun:
    """Answers and per-query wall times of one adapter on one query sample; failed calls answer nothing (their
    time is left out) and are counted in ``errors`` (first message kept in ``first_error``)."""

    found: np.ndarray      # (m, k) int64
    seconds: np.ndarray    # (m - errors,) float64
    errors: int = 0
    first_error: str = ""


def run_queries(query: Callable[[str, int, int], Sequence[int]], pair: str, qids: np.ndarray, k: int,
                desc: str = "", quiet: bool = False) -> QueryRun:
    """Call query(pair, word_id, k) once per query word, one at a time, timing each call."""
    return run_interleaved(query, [pair], qids, k, desc=desc, quiet=quiet)[0][pair]


def run_interleaved(query: Callable[[str, int, int], Sequence[int]], pairs: Sequence[str], qids: np.ndarray,
                    k: int, between: Callable[[], object] | None = None, desc: str = "",
                    quiet: bool = False) -> tuple[dict[str, QueryRun], np.ndarray]:
    """Each query word asked of every pair in turn (word 1 of each pair, then word 2, ...), one call at a time,
    timing each call; and, when given, ``between()`` once per round, timed too. Interleaved, every pair (and the
    ``between`` reference call) sees the same moments of a shared, noisy machine: a burst of other work or a
    warming cache cannot fall on one pair alone, as it could when each pair's sample ran in a block.

    Returns ({pair: QueryRun}, the seconds of each ``between`` call)."""
    answers: dict[str, list] = {p: [] for p in pairs}
    times: dict[str, list[float]] = {p: [] for p in pairs}
    errors = dict.fromkeys(pairs, 0)
    first = dict.fromkeys(pairs, "")
    reference: list[float] = []
    clock = time.perf_counter
    for wid in tqdm(qids.tolist(), desc=desc, leave=False, disable=quiet or not desc):
        for pair in pairs:
            t0 = clock()
            try:
                ids = query(pair, wid, k)
            except Exception as exc:  # counted and reported; one failure must not end the run
                errors[pair] += 1
                first[pair] = first[pair] or f"{type(exc).__name__}: {exc}"
                answers[pair].append(())
                continue
            times[pair].append(clock() - t0)
            answers[pair].append(ids)
        if between is not None:
            t0 = clock()
            between()
            reference.append(clock() - t0)
    runs = {p: QueryRun(to_matrix(answers[p], k), np.array(times[p]), errors[p], first[p]) for p in pairs}
    return runs, np.array(reference)


def percentiles_us(seconds: np.ndarray) -> dict:
    s = np.asarray(seconds) * 1e6
    if s.size == 0:
        return {"n": 0}
    return {"n": int(s.size), "p50": float(np.percentile(s, 50)), "p99": float(np.percentile(s, 99)),
            "mean": float(s.mean()), "max": float(s.max())}


def warm_up(query: Callable[[str, int, int], Sequence[int]], pairs: Sequence[str], qids: np.ndarray,
            k: int, count: int) -> None:
    for i, wid in enumerate(qids[:count].tolist()):
        query(pairs[i % len(pairs)], wid, k)


# ------------------------------------------------------------------------------------ in-process throughput (FAISS)

@dataclass(frozen=True)
class WorkItem:
    """One single query for the index-level throughput runs: its pair, unit vector (1, d) and word row."""

    pair: str
    vector: np.ndarray
    word_id: int


def work_items(bundle: Bundle, pairs: Sequence[str], qids: np.ndarray) -> list[WorkItem]:
    """Queries interleaved round-robin over the pairs (the mix the gRPC load generator sends)."""
    items = []
    for i, wid in enumerate(qids.tolist()):
        pair = pairs[i % len(pairs)]
        items.append(WorkItem(pair, query_vectors(bundle, pair, np.array([wid]))[0:1], wid))
    return items


def index_search(bundle: Bundle, pair: str, vectors: np.ndarray, k: int) -> np.ndarray:
    """The target space's FAISS index searched as the server does (the pair's tuned params, k + 1 fetched for
    the query word). Returns (m, k+1) ids."""
    q, t = parse_pair(pair)
    params = bundle.tuning(q, t).params
    _, ids = bundle.spaces[t].search(vectors, k + 1, params, pair)
    return ids


def inprocess_qps(bundle: Bundle, items: Sequence[WorkItem], k: int, threads: int, seconds: float) -> dict:
    """Queries per second of `threads` Python threads, each calling SpaceIndex.search with one query at a time
    (FAISS with one OpenMP thread, as the server runs it), for `seconds`."""
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    counts = [0] * threads
    stop_at = [0.0]
    start = threading.Barrier(threads + 1)

    def loop(j: int) -> None:
        i = j * 7919
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            item = items[i % len(items)]
            index_search(bundle, item.pair, item.vector, k)
            i += 1
            n += 1
        counts[j] = n

    workers = [threading.Thread(target=loop, args=(j,), daemon=True) for j in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    faiss.omp_set_num_threads(saved)
    return {"qps": sum(counts) / elapsed, "queries": sum(counts), "seconds": elapsed, "threads": threads}


def inprocess_batched_qps(bundle: Bundle, items: Sequence[WorkItem], k: int, batch: int, seconds: float,
                          omp_threads: int) -> dict:
    """Queries per second of one thread calling SpaceIndex.search with `batch` queries of one pair at a time
    (FAISS with `omp_threads` OpenMP threads), cycling over the pairs, for `seconds`."""
    by_pair: dict[str, list[np.ndarray]] = {}
    for it in items:
        by_pair.setdefault(it.pair, []).append(it.vector[0])
    per_pair: list[list[tuple[str, np.ndarray]]] = []
    for pair, vecs in by_pair.items():
        mat = np.stack(vecs)
        reps = int(np.ceil(batch / len(mat)))
        mat = np.tile(mat, (reps, 1)) if reps > 1 else mat
        per_pair.append([(pair, np.ascontiguousarray(mat[s:s + batch])) for s in range(0, len(mat) - batch + 1, batch)])
    batches = [b for group in zip(*per_pair) for b in group]  # pairs interleaved
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(omp_threads)
    done, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pair, mat = batches[i % len(batches)]
        index_search(bundle, pair, mat, k)
        done += len(mat)
        i += 1
    elapsed = time.perf_counter() - t0
    faiss.omp_set_num_threads(saved)
    return {"qps": done / elapsed, "queries": done, "seconds": elapsed, "batch": batch, "omp_threads": omp_threads}


# ------------------------------------------------------------------------------------------------- diagnostics

def index_diagnostics(bundle: Bundle, k: int = 10, probes: int = 50) -> list[str]:
    """Known slow paths in how the bundle's indexes were loaded, each with a measured before/after.

    FAISS's IO_FLAG_MMAP turns IVF inverted lists into OnDiskInvertedLists, whose prefetch_nthread (32 by
    default) starts threads on every search call: a fixed cost per call that dominates single-query latency."""
    notes = []
    for space, si in bundle.spaces.items():
        ivf = faiss.try_extract_index_ivf(si.index) if si.index is not None else None
        if ivf is None:
            continue
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if not isinstance(lists, faiss.OnDiskInvertedLists) or lists.prefetch_nthread <= 0:
            continue
        path = bundle.path / f"{space.value}.index.faiss"
        copy = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        rows = np.ascontiguousarray(bundle.vectors[space][:: max(1, bundle.vocab_size // probes)][:probes])
        params = faiss.SearchParametersIVF(nprobe=max(1, ivf.nlist // 16))
        saved = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            before = _median_single_us(copy, rows, k, params)
            faiss.downcast_InvertedLists(faiss.extract_index_ivf(copy).invlists).prefetch_nthread = 0
            after = _median_single_us(copy, rows, k, params)
        finally:
            faiss.omp_set_num_threads(saved)
        notes.append(f"{space.value.upper()} index: IVF lists loaded as OnDiskInvertedLists (faiss.IO_FLAG_MMAP) with "
                     f"prefetch_nthread={lists.prefetch_nthread}: one-query search (nprobe {params.nprobe}) takes "
                     f"{before:.0f} us median as loaded, {after:.0f} us with prefetch_nthread=0 (or load with "
                     f"faiss.IO_FLAG_MMAP_IFC)")
    return notes


def _median_single_us(index, rows: np.ndarray, k: int, params) -> float:
    index.search(rows[:1], k, params=params)
    times = []
    for row in rows:
        t0 = time.perf_counter()
        index.search(row[None, :], k, params=params)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


# ------------------------------------------------------------------------------------------------ the server process

def _option(args: Sequence[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` or ``--name=VALUE`` in args, else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


class ServerProcess:
    """`dualvec serve BUNDLE --port PORT --skip-checksums [extra]` as a subprocess (prefix: what stands for
    `dualvec`), on a port picked free here unless extra names one; it is up once its gRPC health answers SERVING
    (dualvec.client.wait_until_serving). Its stderr is drained by a thread (last lines kept)."""

    def __init__(self, bundle: str | os.PathLike, extra_args: Sequence[str] = (), start_timeout: float = 900.0,
                 prefix: Sequence[str] = ()):
        from dualvec.client.readiness import pick_free_port

        host = (_option(extra_args, "--host") or "127.0.0.1").strip("[]")
        port = _option(extra_args, "--port") or str(pick_free_port(host))
        self.command = [*(prefix or dualvec_command()), "serve", str(bundle), "--port", port, "--skip-checksums",
                        *extra_args]
        connect = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard is reached on loopback
        self.address = f"[{connect}]:{port}" if ":" in connect else f"{connect}:{port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_tail: deque[str] = deque(maxlen=200)
        self.errors: list[str] = []
        self.load_seconds = 0.0
        self._drain: threading.Thread | None = None

    def start(self) -> "ServerProcess":
        from dualvec.client.readiness import NotServingError, wait_until_serving

        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        try:
            wait_until_serving(self.address, self.start_timeout, process=self.proc)
        except NotServingError as exc:
            self.stop()
            raise RuntimeError(f"`{' '.join(self.command)}`: {exc}; last log lines:\n"
                               + "".join(self.log_tail)) from None
        self.load_seconds = time.perf_counter() - t0
        return self

    def _keep(self, line: str) -> None:
        self.log_tail.append(line)
        if " ERROR " in line or "Traceback" in line or " WARNING " in line:
            self.errors.append(line.rstrip())

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._keep(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory(self) -> dict:
        """Resident memory of the server, in bytes, via psutil: with `serve --processes N`, of the parent and its
        children together. RSS is the largest of them (they map the same pages), USS (memory unique to each) and
        PSS (shared pages split between the processes that map them) are summed: PSS is then the server's real
        total."""
        import psutil

        parent = psutil.Process(self.pid)
        procs = [parent, *parent.children(recursive=True)]
        infos = [p.memory_full_info() for p in procs]
        return {"rss_bytes": max(int(i.rss) for i in infos), "uss_bytes": sum(int(i.uss) for i in infos),
                "pss_bytes": sum(int(getattr(i, "pss", 0)) for i in infos),
                "threads": sum(p.num_threads() for p in procs), "processes": len(procs)}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far, parent and children together."""
        import psutil

        parent = psutil.Process(self.pid)
        total = 0.0
        for proc in (parent, *parent.children(recursive=True)):
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class OtherLoad:
    """Share of the machine's CPU used by processes outside this benchmark (this process, its children and the
    server) between start() and stop(): 0 = the benchmark had the machine alone, 1 = others kept every core busy.
    Time the hypervisor gave to other guests (steal: the CPU was wanted here but ran elsewhere) is counted apart,
    as ``steal_share``. Latency and throughput measured on a busy machine are pessimistic; the report says so."""

    def __init__(self, extra_pids: Callable[[], Sequence[int]] = lambda: ()):
        self.extra_pids = extra_pids
        self.steal_share = 0.0

    def _ours(self) -> float:
        import psutil

        me = psutil.Process()
        t = me.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        pids = {c.pid for c in me.children(recursive=True)} | set(self.extra_pids())
        for pid in pids:
            try:
                ct = psutil.Process(pid).cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                pass
        return total

    @staticmethod
    def _busy_and_steal() -> tuple[float, float]:
        """CPU seconds the guest's processes ran (all CPUs), and seconds the hypervisor stole."""
        import psutil

        t = psutil.cpu_times()
        steal = getattr(t, "steal", 0.0)
        busy = (sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                - getattr(t, "guest_nice", 0.0) - steal)
        return busy, steal

    def start(self) -> "OtherLoad":
        self.t0, (self.busy0, self.steal0), self.ours0 = time.perf_counter(), self._busy_and_steal(), self._ours()
        return self

    def stop(self) -> float:
        """The share other processes took; the hypervisor's is left in ``steal_share``."""
        wall = time.perf_counter() - self.t0
        busy, steal = self._busy_and_steal()
        capacity = max(1e-9, wall * (os.cpu_count() or 1))
        self.steal_share = max(0.0, (steal - self.steal0) / capacity)
        others = (busy - self.busy0) - (self._ours() - self.ours0)
        return max(0.0, others / capacity)


def dualvec_command() -> list[str]:
    """The `dualvec` console script beside this Python, else `python -m dualvec`."""
    script = Path(sys.executable).with_name("dualvec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dualvec"]


def directory_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def space_of(name: str) -> Space:
    return Space(name)


def sweep_values(tuned: int, upper: int, factors: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)) -> list[int]:
    """Query-time values around a tuned one (nprobe or efSearch), clipped to [1, upper], unique, rising."""
    tuned = max(1, tuned)
    return sorted({int(min(upper, max(1, round(tuned * f)))) for f in factors})


def sweep_params(bundle: Bundle, pair: str, factors: Sequence[float]) -> list[SearchParams]:
    """SearchParams around the pair's tuned ones: nprobe (IVF) or efSearch (HNSW) scaled, hubs as tuned."""
    q, t = parse_pair(pair)
    tuned = bundle.tuning(q, t).params
    space = bundle.spaces[t]
    if space.index is None:
        return [tuned]
    ivf = faiss.try_extract_index_ivf(space.index)
    if ivf is not None:
        return [SearchParams(nprobe=v, hubs=tuned.hubs) for v in sweep_values(tuned.nprobe or 1, ivf.nlist, factors)]
    if "HNSW" in type(faiss.downcast_index(space.index)).__name__:
        return [SearchParams(ef_search=v, hubs=tuned.hubs)
                for v in sweep_values(tuned.ef_search or 16, 8192, factors) if v >= 10]
    return [tuned]
