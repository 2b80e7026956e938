"""A soak run: mixed load at a running `dualvec serve` for a long while, with the bundle reloaded every few minutes
and the bearer token rotated once, and what the server's memory, latency and errors did meanwhile.

The load is dualvec.loadtest's: its request pool (Search of the four space pairs, BatchSearch, ScoreDocuments,
and here GetVectors too) sent by its driver (``run_phase``: open loop at a fixed rate, latency from each call's
intended send time, or closed loop at a fixed concurrency) into its histograms, and the memory is its sampler's
(the PSS of the server's whole process tree). Beside them:

- SearchStream calls of a few searches each, at a rate of their own, on the same connections;
- a reload every ``reload_every`` minutes: the served symlink flipped (one rename) between the two bundles given,
  SIGHUP to the server, and GetInfo asked on fresh connections (each one may land on another server process)
  until ``CONFIRM`` answers in a row give the new bundle's content_id;
- one token rotation: a new token added to the token file, SIGHUP, the new token accepted ``CONFIRM`` times in a
  row, every client switched to it, the old one removed, SIGHUP, and the old one refused ``CONFIRM`` times;
- every interval: each call's status (counted when it ends), the latency percentiles of the calls that ended in
  it, the server tree's PSS, and with ``metrics_url`` the server's own time per call (``dualvec_call_seconds``);
  also the server tree's CPU time, the time its threads waited for a CPU (``/proc/PID/task/TID/schedstat``), and
  the host's CPU pressure (``/proc/pressure/cpu``), to tell where the tail latency goes.

Calls go out once: the channels have no retry policy, so a call that fails is counted as failed. The summary says
whether memory was flat after the warm-up (a least-squares slope per minute, each served bundle at a level of its
own so that a reload's step is not taken for growth), whether any call failed, and whether every reload was seen
in GetInfo; a PNG draws memory, latency and errors over time, and JSON holds every number.

Entry point: scripts/soak.py; docs/operations.md ("Soak") has a run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shlex
import signal
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from dualvec.loadtest.driver import SERIES_BITS, Phase, PhaseResult, Target, run_phase
from dualvec.loadtest.errors import LoadtestError
from dualvec.loadtest.histogram import Histogram, latency_ms
from dualvec.loadtest.sampling import RssSampler, process_tree
from dualvec.loadtest.workload import (PAIR_OPS, SEARCH, SERVICE, RankedWords, RequestPool, WorkloadConfig,
                                       build_pool, parse_mix, words_from_bundle)

log = logging.getLogger("dualvec.soak")

VECTORS, STREAM, INFO = SERVICE + "GetVectors", SERVICE + "SearchStream", SERVICE + "GetInfo"
DEFAULT_MIX = "in-in=1,in-out=1,out-in=1,out-out=1,batch=0.1,desm=0.1,vectors=0.2"
CONFIRM = 8             # answers in a row (each on a fresh connection) that confirm a reload or a token change
PROBE_GAP = 0.05        # seconds between those probes
TOKEN_DRAIN = 2.0       # seconds between switching the clients to the new token and removing the old one
BOUNDS_MS = (5, 10, 25, 50, 100)  # the share of calls above these, client-seen and in the server (bucket bounds)
EXIT_OK, EXIT_ERROR, EXIT_FAILED = 0, 1, 3
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# memory is flat when its fitted drift over the run is within this share of its median (and FLAT_MIB at least): on
# a shared 2-core host the PSS of the same bundle served moved 3-6 MiB (2-4%) either way between periods of a run
FLAT_SHARE, FLAT_MIB = 0.05, 4.0


@dataclass
class SoakConfig:
    address: str
    minutes: float
    server_pid: int
    bundles: tuple[str, str] | None = None     # the two bundles the served link is flipped between
    served_link: str | None = None
    token_file: str | None = None              # the server's --auth-token-file; rewritten for the rotation
    rate: float | None = None                  # open loop: calls per second
    concurrency: int | None = None             # closed loop: clients
    warmup: float = 60.0                       # seconds not counted in the latency and memory verdicts
    interval: float = 10.0                     # seconds per point of the time series
    reload_every: float = 3.0                  # minutes
    rotate_at: float | None = None             # minutes (default: between the reloads nearest the middle)
    mix: str = DEFAULT_MIX
    stream_rate: float = 2.0                   # SearchStream calls per second (0: none)
    stream_size: int = 8                       # searches per SearchStream call
    k: int = 10
    deadline: float = 5.0
    channels: int = 4
    metrics_url: str | None = None
    tls_ca: str | None = None
    model: str = ""
    seed: int = 0
    reload_timeout: float = 300.0
    settle: float = 15.0                       # seconds after a reload left out of the memory trend
    command: str = ""

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


# ================================================================================================= the clients

class _Auth:
    """The token every client of the run sends now (switched once, during the rotation)."""

    def __init__(self, token: str | None):
        self.token = token

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...] | None:
        token = token or self.token
        return (("authorization", f"Bearer {token}"),) if token else None


class _Tally:
    """Every call's status, counted in the interval in which it ended: (rpc, code name) -> calls; and after the
    warm-up, the latency of the successful unary calls by rpc from the moment each was actually sent (the driver's
    own latency runs from the intended send time, so it includes the generator's lateness)."""

    def __init__(self, t0: float, interval: float, measure_from: float):
        self.t0, self.interval, self.measure_from = t0, interval, measure_from
        self.lock = threading.Lock()
        self.slots: dict[int, Counter] = {}
        self.from_send: dict[str, Histogram] = {}

    def record(self, rpc: str, code: str, sent: float | None = None) -> None:
        now = time.perf_counter()
        slot = max(0, int((now - self.t0) / self.interval))
        with self.lock:
            self.slots.setdefault(slot, Counter())[(rpc, code)] += 1
            if sent is not None and code == "OK" and sent >= self.measure_from:
                self.from_send.setdefault(rpc, Histogram()).record((now - sent) * 1e6)

    def totals(self) -> Counter:
        out: Counter = Counter()
        with self.lock:
            for c in self.slots.values():
                out.update(c)
        return out


class _Sender:
    """One of the driver's multi-callables: sends the token the clients hold now, and tallies each call's status."""

    def __init__(self, inner, rpc: str, auth: _Auth, tally: _Tally):
        self.inner, self.rpc, self.auth, self.tally = inner, rpc, auth, tally

    def future(self, payload: bytes, timeout: float | None = None):
        sent = time.perf_counter()
        fut = self.inner.future(payload, timeout=timeout, metadata=self.auth.metadata())
        fut.add_done_callback(lambda f: self._done(f, sent))
        return fut

    def _done(self, fut, sent: float) -> None:
        code = fut.code()
        self.tally.record(self.rpc, code.name if code is not None else "UNKNOWN", sent)


def _channel(address: str, tls_ca: str | None, options=None) -> grpc.Channel:
    if tls_ca:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()), options=options)
    return grpc.insecure_channel(address, options=options)


def get_info(channel: grpc.Channel, model: str, metadata=None, timeout: float = 10.0):
    """GetInfo (a ModelInfo) over ``channel``; raises grpc.RpcError."""
    from dualvec.v1 import dualvec_pb2 as pb

    return channel.unary_unary(INFO, request_serializer=pb.GetInfoRequest.SerializeToString,
                               response_deserializer=pb.ModelInfo.FromString)(
        pb.GetInfoRequest(model=model), timeout=timeout, metadata=metadata)


def soak_pool(words: RankedWords, mix_spec: str, spaces: set[str], *, k: int, model: str, seed: int,
              pool: int = 2000) -> RequestPool:
    """dualvec.loadtest's request pool for ``mix_spec`` (its operations, and ``vectors``: GetVectors of 4 words in
    IN or OUT), weighed as the mix says."""
    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.wire import space_to_pb

    parts, vectors = [], 0.0
    for part in filter(None, (p.strip() for p in mix_spec.split(","))):
        name, _, weight = part.partition("=")
        if name.strip().lower() == "vectors":
            try:
                vectors = float(weight) if weight else 1.0
            except ValueError:
                raise LoadtestError(f"--mix: weight of vectors is not a number: {weight!r}") from None
        else:
            parts.append(part)
    mix = parse_mix(",".join(parts))
    base = build_pool(words, WorkloadConfig(mix=mix, k=k, pool=pool, model=model, seed=seed), spaces)
    if vectors <= 0:
        return base
    rng = np.random.default_rng(seed + 1)
    entries = list(base.entries)
    start = len(entries)
    names = sorted(spaces)
    for i in range(max(8, round(pool * vectors / (sum(mix.values()) + vectors)))):
        req = pb.GetVectorsRequest(words=words.draw(rng, 4, 1.0), space=space_to_pb(names[i % len(names)]),
                                   model=model)
        entries.append(("vectors", VECTORS, req.SerializeToString()))
    weights = np.append(base.weights * sum(mix[op] for op in base.ops), vectors)
    return RequestPool(entries, base.ops + ["vectors"], weights / weights.sum(),
                       base.by_op + [np.arange(start, len(entries))])


def shared_words(bundles: tuple[str, ...]) -> RankedWords:
    """The first bundle's vocabulary (its frequency ranks) less the words another of ``bundles`` lacks, so that
    every drawn word is known whichever bundle is served."""
    first = words_from_bundle(bundles[0])
    keep = np.ones(len(first.words), bool)
    for other in bundles[1:]:
        known = set(words_from_bundle(other).words)
        keep &= np.array([w in known for w in first.words])
    if not keep.any():
        raise LoadtestError(f"the bundles {', '.join(bundles)} have no word in common")
    idx = np.flatnonzero(keep)
    return RankedWords(first.ranks[idx], [first.words[i] for i in idx], first.vocab_size,
                       f"the vocabulary the bundles share ({len(idx):,} words)")


class _StreamLoad(threading.Thread):
    """SearchStream calls of ``size`` searches each, ``rate`` a second on a schedule (latency from each call's
    intended start to its last answer); a query's own error inside a stream counts as a failed call too."""

    def __init__(self, channels, payloads: list[bytes], auth: _Auth, tally: _Tally, *, rate: float, size: int,
                 deadline: float, t0: float, measure_from: float, end: float, interval: float, seed: int):
        super().__init__(name="soak-stream", daemon=True)
        from dualvec.v1 import dualvec_pb2 as pb

        self.calls = [ch.stream_stream(STREAM, request_serializer=None,
                                       response_deserializer=pb.SearchStreamResponse.FromString) for ch in channels]
        self.payloads, self.auth, self.tally = payloads, auth, tally
        self.rate, self.size, self.deadline = rate, size, deadline
        self.t0, self.measure_from, self.end, self.interval = t0, measure_from, end, interval
        self.rng = np.random.default_rng(seed)
        self.hist = Histogram()
        self.series: dict[int, Histogram] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        j = 0
        while not self.stop.is_set():
            t = self.t0 + j / self.rate
            if t >= self.end:
                break
            delay = t - time.perf_counter()
            if delay > 0 and self.stop.wait(delay):
                break
            reqs = [self.payloads[i] for i in self.rng.integers(0, len(self.payloads), self.size).tolist()]
            call = self.calls[j % len(self.calls)]
            j += 1
            code, query_errors = "OK", []
            try:
                answers = list(call(iter(reqs), timeout=self.deadline, metadata=self.auth.metadata()))
                query_errors = [a.error.code for a in answers if a.WhichOneof("result") != "response"]
                if len(answers) != len(reqs):
                    code = "INCOMPLETE"
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() is not None else "UNKNOWN"
            done = time.perf_counter()
            if query_errors and code == "OK":  # a query's own error: named by its code (google.rpc.Code)
                code = "query " + "/".join(sorted({_CODE_NAMES.get(c, str(c)) for c in query_errors}))
            self.tally.record("SearchStream", code)
            us = (done - t) * 1e6
            slot = max(0, int((done - self.t0) / self.interval))
            self.series.setdefault(slot, Histogram(SERIES_BITS)).record(min(us, (1 << 36) - 1))
            if t >= self.measure_from and code == "OK":
                self.hist.record(us)


# ============================================================================================ server-side views

_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, timeout: float = 5.0) -> dict:
    """What the soak reads of the server's /metrics: ``dualvec_call_seconds`` bucket counts by rpc (summed over
    pairs; cumulative, keyed by the upper bound in seconds) and ``dualvec_calls_total`` by (rpc, code)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    buckets: dict[str, Counter] = {}
    calls: Counter = Counter()
    for line in text.splitlines():
        m = _PROM_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))
        if name == "dualvec_call_seconds_bucket":
            le = labels.get("le", "")
            bound = math.inf if le == "+Inf" else float(le)
            buckets.setdefault(labels.get("rpc", ""), Counter())[bound] += value
        elif name == "dualvec_calls_total":
            calls[(labels.get("rpc", ""), labels.get("code", ""))] += value
    return {"buckets": buckets, "calls": calls}


def bucket_delta(later: dict, earlier: dict | None, rpcs: tuple[str, ...] | None = None) -> list[tuple[float, float]]:
    """(upper bound s, cumulative calls) of the server's latency histogram between two scrapes, over ``rpcs``."""
    total: Counter = Counter()
    for rpc, b in later["buckets"].items():
        if rpcs is None or rpc in rpcs:
            total.update(b)
            if earlier is not None:
                total.subtract(earlier["buckets"].get(rpc, Counter()))
    return sorted(total.items())


def bucket_quantile(cum: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) of a cumulative histogram, interpolated within its bucket as Prometheus'
    histogram_quantile does; seconds, None when empty."""
    if not cum or cum[-1][1] <= 0:
        return None
    rank = q * cum[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in cum:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            width = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / width if width > 0 else 1.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def share_above(cum: list[tuple[float, float]], bound_s: float) -> float | None:
    """The share of calls of a cumulative histogram above ``bound_s`` (one of its bounds)."""
    if not cum or cum[-1][1] <= 0:
        return None
    below = [c for b, c in cum if abs(b - bound_s) < 1e-12]
    return None if not below else 1.0 - below[0] / cum[-1][1]


def hist_share_above(h: Histogram, bound_us: int) -> float | None:
    """The share of a histogram's values above ``bound_us`` (to its bucket resolution)."""
    if h.total == 0:
        return None
    return float(h.counts[h.index_of(min(bound_us, h.max_value)) + 1:].sum()) / h.total


def _schedstat_wait_ns(pids: list[int]) -> int:
    """Time the threads of these processes have spent waiting for a CPU (runnable, not running), in ns."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return total


def _cpu_pressure_us() -> int | None:
    """The host's total time some task waited for a CPU, /proc/pressure/cpu, in microseconds."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tree_cpu_s(pid: int) -> tuple[float, list[int], int]:
    """CPU seconds the process tree of ``pid`` has used, its pids, and its threads."""
    total, pids, threads = 0.0, [], 0
    try:
        procs = process_tree(pid)
    except psutil.Error:
        return 0.0, [], 0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
            threads += p.num_threads()
            pids.append(p.pid)
        except psutil.Error:
            pass
    return total, pids, threads


class _Observer(threading.Thread):
    """At each interval's end: the server tree's CPU time and its threads' wait for a CPU, the host's CPU pressure,
    the served content_id (GetInfo), and with a metrics URL the server's own counts."""

    def __init__(self, cfg: SoakConfig, auth: _Auth, t0: float, end: float):
        super().__init__(name="soak-observer", daemon=True)
        self.cfg, self.auth, self.t0, self.end = cfg, auth, t0, end
        self.snapshots: list[dict] = []
        self.stop = threading.Event()
        self.channel = _channel(cfg.address, cfg.tls_ca)
        self.failed_scrapes = 0

    def snapshot(self) -> dict:
        cpu, pids, threads = _tree_cpu_s(self.cfg.server_pid)
        snap = {"t": time.perf_counter() - self.t0, "cpu_s": cpu, "wait_ns": _schedstat_wait_ns(pids),
                "threads": threads,
                "pressure_us": _cpu_pressure_us(), "gen_cpu_s": time.process_time(),
                "gen_wait_ns": _schedstat_wait_ns([os.getpid()]), "content_id": None, "metrics": None}
        try:
            snap["content_id"] = get_info(self.channel, self.cfg.model, self.auth.metadata(), 5.0).content_id
        except grpc.RpcError as exc:
            snap["content_id"] = f"({exc.code().name})"
        if self.cfg.metrics_url:
            try:
                snap["metrics"] = scrape(self.cfg.metrics_url)
            except OSError:
                self.failed_scrapes += 1
        return snap

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            t = self.t0 + i * self.cfg.interval
            delay = t - time.perf_counter()
            if delay > 0 and self.stop.wait(delay):
                break
            self.snapshots.append(self.snapshot())
            i += 1
            if t > self.end + self.cfg.deadline:
                break

    def close(self) -> None:
        self.stop.set()
        self.join(30)
        self.snapshots.append(self.snapshot())
        self.channel.close()


# ================================================================================================ the events

def point(link: str, target: str) -> None:
    """Flip the symlink ``link`` to ``target`` in one rename (as `ln -s TARGET tmp && mv -T tmp LINK` does)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(link)), f".{os.path.basename(link)}.soak")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.abspath(target), tmp)
    os.replace(tmp, link)


def bundle_content_id(path: str) -> str | None:
    """The content_id GetInfo gives for the bundle at ``path`` (dualvec.server.reload.content_id_of), or None when
    its manifest cannot be read here."""
    from dualvec.kernel.bundle import MANIFEST, read_manifest
    from dualvec.kernel.errors import DualvecError

    try:
        m = read_manifest(path)
        if getattr(m, "content_id", None):
            return m.content_id
        return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    except (DualvecError, OSError):
        return None


def write_atomically(path: str, text: str) -> None:
    """Replace a file's content in one rename, keeping its permissions (a reader never sees half of it)."""
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Soak:
    """One soak run (``run``); ``result`` holds everything it measured, ``summary`` the verdicts."""

    def __init__(self, cfg: SoakConfig):
        self.cfg = cfg
        self.auth = _Auth(None)
        self.probe_failures: Counter = Counter()
        self.events: list[dict] = []
        self.labels: dict[str, str] = {}    # content_id -> "A" / "B"
        self.ids: dict[str, str | None] = {}  # bundle label -> content_id
        self.current: str | None = None     # the bundle label the link points to

    # ------------------------------------------------------------------------------------------------ set-up
    def _check(self) -> None:
        c = self.cfg
        if c.minutes <= 0:
            raise LoadtestError("--minutes must be > 0")
        if c.rate is None and c.concurrency is None:
            raise LoadtestError("give --rate or --concurrency")
        if c.warmup < 0 or c.warmup >= c.seconds:
            raise LoadtestError("--warmup must be >= 0 and shorter than the run")
        if c.interval <= 0:
            raise LoadtestError("--interval must be > 0")
        if not psutil.pid_exists(c.server_pid):
            raise LoadtestError(f"--server-pid {c.server_pid}: no such process")
        if (c.bundles is None) != (c.served_link is None):
            raise LoadtestError("--bundles and --served-link go together")
        if c.bundles:
            real = os.path.realpath(c.served_link)
            found = [lab for lab, b in zip("AB", c.bundles) if os.path.realpath(b) == real]
            if not found:
                raise LoadtestError(f"--served-link {c.served_link} points to {real}, neither of --bundles")
            self.current = found[0]
            for lab, b in zip("AB", c.bundles):
                self.ids[lab] = bundle_content_id(b)
                if self.ids[lab]:
                    self.labels[self.ids[lab]] = lab
            if self.ids["A"] and self.ids["A"] == self.ids["B"]:
                raise LoadtestError("the two --bundles have the same content_id: a reload would not be seen")
        if c.token_file:
            from dualvec.credential_files import read_tokens
            from dualvec.kernel.errors import DualvecError

            try:
                self.auth.token = read_tokens(c.token_file)[0]
            except DualvecError as exc:
                raise LoadtestError(str(exc)) from None

    def schedule(self) -> list[tuple[float, str]]:
        """(seconds from the start, "reload" | "rotate") of the run's events, in order."""
        c, out = self.cfg, []
        r = c.reload_every * 60.0
        if c.bundles and r > 0:
            t = r
            while t < c.seconds - 1.0:
                out.append((t, "reload"))
                t += r
        if c.token_file:
            if c.rotate_at is not None:
                at = c.rotate_at * 60.0
            elif c.bundles and r > 0 and r < c.seconds:
                at = (math.floor(c.seconds / 2 / r) + 0.5) * r
                at = at if at < c.seconds - 1.0 else (math.floor(c.seconds / 2 / r) - 0.5) * r
            else:
                at = c.seconds / 2
            if 0 < at < c.seconds:
                out.append((max(at, 0.0), "rotate"))
        return sorted(out)

    # ------------------------------------------------------------------------------------------------ probes
    def probe(self, token: str | None = None) -> tuple[str, str | None]:
        """GetInfo on a fresh connection (which may land on any server process): (status name, content_id)."""
        ch = _channel(self.cfg.address, self.cfg.tls_ca)
        try:
            return "OK", get_info(ch, self.cfg.model, self.auth.metadata(token)).content_id
        except grpc.RpcError as exc:
            return exc.code().name, None
        finally:
            ch.close()

    def _confirm(self, check, timeout: float, token: str | None = None) -> tuple[float | None, float | None]:
        """Probe (with ``token``, else the clients' one) until ``check(status, content_id)`` holds CONFIRM times in
        a row: (seconds to the first time it held, seconds to the confirmation), from now; None where it never
        did."""
        t0 = time.perf_counter()
        first, streak = None, 0
        while time.perf_counter() - t0 < timeout:
            if check(*self.probe(token)):
                first = time.perf_counter() - t0 if first is None else first
                streak += 1
                if streak >= CONFIRM:
                    return first, time.perf_counter() - t0
            else:
                streak = 0
            time.sleep(PROBE_GAP)
        return first, None

    # ------------------------------------------------------------------------------------------------ events
    def reload(self, t_start: float) -> dict:
        c = self.cfg
        to = "B" if self.current == "A" else "A"
        expected, before = self.ids[to], self.ids[self.current]
        at = time.perf_counter() - t_start
        point(c.served_link, c.bundles[0 if to == "A" else 1])
        os.kill(c.server_pid, signal.SIGHUP)

        def seen(status: str, cid: str | None) -> bool:
            if status != "OK":
                self.probe_failures[f"GetInfo {status}"] += 1
                return False
            return cid == expected if expected else (cid is not None and cid != before)

        first, confirmed = self._confirm(seen, c.reload_timeout)
        self.current = to
        ev = {"event": "reload", "at_s": round(at, 2), "to": to, "bundle": c.bundles[0 if to == "A" else 1],
              "content_id": expected, "first_seen_after_s": _r(first), "seen_by_all_after_s": _r(confirmed),
              "seen": confirmed is not None}
        log.info("reload to %s at %.1f s: %s", to, at, f"seen after {first:.2f} s, {CONFIRM} fresh connections in "
                 f"a row after {confirmed:.2f} s" if confirmed is not None else "NOT seen")
        return ev

    def rotate(self, t_start: float) -> dict:
        c = self.cfg
        old, new = self.auth.token, secrets.token_hex(32)
        original = Path(c.token_file).read_text(encoding="utf-8")
        at = time.perf_counter() - t_start
        write_atomically(c.token_file, original.rstrip("\n") + f"\n{new}\n")
        os.kill(c.server_pid, signal.SIGHUP)

        _, confirmed = self._confirm_token(new, "OK", c.reload_timeout)
        ev = {"event": "rotate", "at_s": round(at, 2), "new_token_accepted_after_s": _r(confirmed)}
        if confirmed is None:
            ev.update(done=False, why="the new token was not accepted")
            log.error("token rotation: the new token was not accepted within %g s", c.reload_timeout)
            return ev
        self.auth.token = new
        ev["clients_switched_at_s"] = round(time.perf_counter() - t_start, 2)
        time.sleep(TOKEN_DRAIN)
        kept = [line for line in original.splitlines() if line.strip() != old]
        write_atomically(c.token_file, "\n".join(kept + [new]) + "\n")
        ev["old_token_removed_at_s"] = round(time.perf_counter() - t_start, 2)
        os.kill(c.server_pid, signal.SIGHUP)
        _, refused = self._confirm_token(old, "UNAUTHENTICATED", c.reload_timeout)
        ev["old_token_refused_after_s"] = _r(refused)
        ev["done"] = refused is not None
        if refused is None:
            ev["why"] = "the old token was still accepted"
        log.info("token rotation at %.1f s: new token accepted after %s s, clients switched, old one removed and "
                 "%s", at, ev["new_token_accepted_after_s"],
                 f"refused after {refused:.2f} s" if refused is not None else "NOT refused")
        return ev

    def _confirm_token(self, token: str, want: str, timeout: float) -> tuple[float | None, float | None]:
        """``_confirm`` that ``token`` gets the status ``want`` (OK or UNAUTHENTICATED)."""
        def check(status: str, _cid) -> bool:
            if status not in ("OK", "UNAUTHENTICATED"):
                self.probe_failures[f"GetInfo {status}"] += 1
            return status == want

        return self._confirm(check, timeout, token)

    # ------------------------------------------------------------------------------------------------ the run
    def run(self) -> dict:
        from dualvec.wire import space_names

        c = self.cfg
        self._check()
        ch = _channel(c.address, c.tls_ca)
        try:
            info = get_info(ch, c.model, self.auth.metadata())
        except grpc.RpcError as exc:
            raise LoadtestError(f"GetInfo at {c.address} failed: {exc.code().name}: {exc.details()}") from None
        finally:
            ch.close()
        if c.bundles and self.ids[self.current] and info.content_id != self.ids[self.current]:
            raise LoadtestError(f"the server serves content_id {info.content_id}, not that of {c.served_link} "
                                f"({self.ids[self.current]}): is --server-pid the server of --served-link?")
        if c.bundles:
            words = shared_words(tuple(c.bundles))
        else:
            from dualvec.loadtest.workload import discover_words
            from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

            ch = _channel(c.address, c.tls_ca)
            try:
                words = discover_words(_AuthStub(pb_grpc.DualVecStub(ch), self.auth), info, c.model, 16, c.seed,
                                       10.0)
            finally:
                ch.close()
        spaces = set(space_names(info.spaces)) or {"in"}
        pool = soak_pool(words, c.mix, spaces, k=c.k, model=c.model, seed=c.seed)
        log.info("soak of %s (%r, %s words x %d dims) for %g min: %d requests prepared (%s), words from %s",
                 c.address, info.model, f"{info.vocab_size:,}", info.dim, c.minutes, len(pool.entries),
                 ", ".join(f"{op} {w:.0%}" for op, w in zip(pool.ops, pool.weights)), words.source)

        target = Target(c.address, c.channels, {"service_config": "none", "tls_ca": c.tls_ca})
        target.wait_ready(10.0, c.address)
        start_wall = time.time() + 0.5
        t0 = time.perf_counter() + (start_wall - time.time())
        tally = _Tally(t0, c.interval, t0 + c.warmup)
        target.callables = [
            {m: _Sender(ch.unary_unary(m, request_serializer=None, response_deserializer=None), m.rsplit("/", 1)[1],
                        self.auth, tally) for m in {e[1] for e in pool.entries}} for ch in target.channels]
        mode = "closed" if c.concurrency else "open"
        phase = Phase(mode=mode, start_wall=start_wall, warmup=c.warmup, duration=c.seconds - c.warmup,
                      deadline=c.deadline, interval=c.interval, concurrency=c.concurrency or 0, rate=c.rate or 0.0,
                      seed=c.seed)
        box: dict = {}

        def load() -> None:
            try:
                box["result"] = run_phase(target, pool, None, phase)
            except BaseException as exc:  # reported by the main thread
                box["error"] = exc

        stream = None
        search_payloads = [p for op, m, p in pool.entries if m == SEARCH]
        if c.stream_rate > 0 and search_payloads:
            stream = _StreamLoad(target.channels, search_payloads, self.auth, tally, rate=c.stream_rate,
                                 size=c.stream_size, deadline=c.deadline, t0=t0, measure_from=t0 + c.warmup,
                                 end=t0 + c.seconds, interval=c.interval, seed=c.seed + 7)
        observer = _Observer(c, self.auth, t0, t0 + c.seconds)
        sampler = RssSampler(c.server_pid, every=min(5.0, max(0.5, c.interval / 2)))
        sampler_offset = time.perf_counter() - t0
        loader = threading.Thread(target=load, name="soak-load", daemon=True)
        with sampler:
            loader.start()
            observer.start()
            if stream:
                stream.start()
            try:
                for at, kind in self.schedule():
                    delay = t0 + at - time.perf_counter()
                    if delay > 0:
                        loader.join(delay)
                    if not loader.is_alive():
                        break
                    self.events.append(self.reload(t0) if kind == "reload" else self.rotate(t0))
                loader.join()
            finally:
                if stream:
                    stream.stop.set()
                    stream.join(c.deadline + 10)
                observer.close()
                target.close()
        if "error" in box:
            raise box["error"]
        res: PhaseResult = box["result"]
        mem = sampler.summary()
        mem_t = [t + sampler_offset for t in mem.get("t_s", [])]
        return self._result(info, pool, res, tally, stream, observer, mem, mem_t, words.source, mode)

    # ------------------------------------------------------------------------------------------------ results
    def _result(self, info, pool, res: PhaseResult, tally: _Tally, stream, observer: _Observer, mem: dict,
                mem_t: list[float], words_source: str, mode: str) -> dict:
        c = self.cfg
        n = int(math.ceil(c.seconds / c.interval))
        proto = Histogram(SERIES_BITS)
        snaps = observer.snapshots
        intervals = []
        for i in range(n):
            codes = tally.slots.get(i, Counter())
            errors: Counter = Counter()
            for (rpc, code), v in codes.items():
                if code != "OK":
                    errors[code] += v
            row = {"t_s": round((i + 1) * c.interval, 3), "calls": int(sum(codes.values())),
                   "errors": dict(errors)}
            h = _series_hist(res.series_hist[i] if i < len(res.series_hist) else None, proto)
            for q, key in ((50, "p50_ms"), (99, "p99_ms"), (99.9, "p99.9_ms")):
                row[key] = None if h is None else round(h.percentile(q) / 1000, 3)
            sh = stream.series.get(i) if stream else None
            row["stream_p99_ms"] = None if not sh or not sh.total else round(sh.percentile(99) / 1000, 3)
            in_slot = [m for t, m in zip(mem_t, mem.get("mib", [])) if i * c.interval <= t < (i + 1) * c.interval]
            row["pss_mib"] = round(float(np.mean(in_slot)), 1) if in_slot else None
            if i + 1 < len(snaps):
                a, b = snaps[i], snaps[i + 1]
                dt = max(b["t"] - a["t"], 1e-9)
                row["server_cpu_cores"] = round((b["cpu_s"] - a["cpu_s"]) / dt, 3)
                row["server_cpu_wait_cores"] = round(max(0, b["wait_ns"] - a["wait_ns"]) / 1e9 / dt, 3)
                if a["pressure_us"] is not None and b["pressure_us"] is not None:
                    row["host_cpu_pressure"] = round((b["pressure_us"] - a["pressure_us"]) / 1e6 / dt, 3)
                row["server_threads"] = b["threads"]
                row["content_id"] = b["content_id"]
                row["bundle"] = self.labels.get(b["content_id"] or "")
                if a["metrics"] and b["metrics"]:
                    cum = bucket_delta(b["metrics"], a["metrics"], ("Search",))
                    for q, key in ((0.5, "server_search_p50_ms"), (0.99, "server_search_p99_ms")):
                        v = bucket_quantile(cum, q)
                        row[key] = None if v is None else round(v * 1000, 3)
            intervals.append(row)

        totals = tally.totals()
        by_rpc: dict[str, dict] = {}
        for (rpc, code), v in sorted(totals.items()):
            by_rpc.setdefault(rpc, {})[code] = v
        failed = {f"{rpc} {code}": v for (rpc, code), v in totals.items() if code != "OK"}
        calls = int(sum(totals.values()))
        per_op = {op: latency_ms(h) for op, h in res.per_op.items()}
        search = Histogram.merged([h for op, h in res.per_op.items() if op in PAIR_OPS])
        reloads = [e for e in self.events if e["event"] == "reload"]
        rotation = next((e for e in self.events if e["event"] == "rotate"), None)
        memory = memory_trend(mem_t, mem.get("mib", []), c.warmup, self.events, c.settle, self.current_at) \
            if mem else {}
        if mem:
            memory.update({k: mem[k] for k in ("measure", "processes", "label", "max_mib")})
        after = [sn for sn in snaps if sn["t"] >= c.warmup - 1e-6]
        if after:
            memory["server_threads"] = {"after_warmup": after[0]["threads"], "end": after[-1]["threads"],
                                        "max": max(sn["threads"] for sn in after)}
        tail = self._tail(res, search, tally.from_send.get("Search"), snaps)
        summary = {
            "calls": {"total": calls, "ok": calls - sum(failed.values()), "failed": sum(failed.values()),
                      "failed_by": failed, "by_rpc": by_rpc, "unfinished": res.unfinished,
                      "probe_failures": dict(self.probe_failures)},
            "latency_ms": latency_ms(res.ok), "latency_all_ms": latency_ms(res.all), "per_op": per_op,
            "search_latency_ms": latency_ms(search),
            "stream_latency_ms": latency_ms(stream.hist) if stream else None,
            "send_lag_ms": {k: latency_ms(res.lag)[k] for k in ("p50", "p99", "max")} if mode == "open" else None,
            "generator_cpu": [round(x / res.wall, 3) for x in res.cpu] if res.wall else [],
            "reloads": {"done": len(reloads), "seen": sum(e["seen"] for e in reloads)},
            "rotation": rotation, "memory": memory, "tail": tail,
        }
        summary["verdict"] = {
            "zero_failed_calls": summary["calls"]["failed"] == 0 and res.unfinished == 0
            and not self.probe_failures,
            "reloads_seen": f"{summary['reloads']['seen']} of {summary['reloads']['done']}",
            "all_reloads_seen": summary["reloads"]["seen"] == summary["reloads"]["done"],
            "rotation_done": None if rotation is None else bool(rotation.get("done")),
            "memory_flat": memory.get("flat"), "memory_trend": memory.get("trend"),
        }
        return {"config": {k: v for k, v in c.__dict__.items()}, "server": {
            "model": info.model, "vocab_size": int(info.vocab_size), "dim": int(info.dim),
            "content_ids": self.ids, "pid": c.server_pid},
            "workload": {"ops": dict(zip(pool.ops, [round(float(w), 4) for w in pool.weights])),
                         "requests": len(pool.entries), "words": words_source, "mode": mode},
            "events": self.events, "intervals": intervals, "memory_samples": {"t_s": [round(t, 2) for t in mem_t],
                                                                               "mib": mem.get("mib", [])},
            "summary": summary}

    def current_at(self, t: float) -> str:
        """The served bundle's label at ``t`` seconds: "first" before the first reload, then the label reloaded."""
        label = "first"
        for e in self.events:
            if e["event"] == "reload" and e["at_s"] <= t:
                label = e["to"]
        return label

    def _tail(self, res: PhaseResult, search: Histogram, from_send: Histogram | None, snaps: list[dict]) -> dict:
        """Where the latency of Search goes, over the measured window: the client-seen distribution (from each
        call's intended send time, and from its actual send) against the server's own time per call (its
        metrics) and the generator's lateness, and the CPU the server and the generator used and waited for."""
        c = self.cfg
        measured = [s for s in snaps if c.warmup - 1e-6 <= s["t"]]
        keys = ("p50", "p99", "p99.9", "max")

        def shares(h: Histogram) -> dict:
            return {f"{b} ms": _r(hist_share_above(h, b * 1000), 5) for b in BOUNDS_MS}

        out: dict = {"client_search_ms": {k: latency_ms(search)[k] for k in keys},
                     "client_share_above": shares(search)}
        if from_send is not None:
            out["client_search_from_send_ms"] = {k: latency_ms(from_send)[k] for k in keys}
            out["client_from_send_share_above"] = shares(from_send)
        if res.lag.total:
            out["send_lag_share_above"] = shares(res.lag)
        if len(measured) >= 2:
            a, b = measured[0], measured[-1]
            dt = b["t"] - a["t"]
            answered = max(1, res.ok.total)
            out["server_cpu_cores"] = round((b["cpu_s"] - a["cpu_s"]) / dt, 3)
            out["server_cpu_ms_per_call"] = round((b["cpu_s"] - a["cpu_s"]) * 1000 / answered, 3)
            out["server_cpu_wait_cores"] = round((b["wait_ns"] - a["wait_ns"]) / 1e9 / dt, 3)
            out["server_cpu_wait_ms_per_call"] = round((b["wait_ns"] - a["wait_ns"]) / 1e6 / answered, 3)
            if a["pressure_us"] is not None and b["pressure_us"] is not None:
                out["host_cpu_pressure"] = round((b["pressure_us"] - a["pressure_us"]) / 1e6 / dt, 3)
            out["generator_cpu_cores"] = round((b["gen_cpu_s"] - a["gen_cpu_s"]) / dt, 3)
            out["generator_cpu_wait_cores"] = round((b["gen_wait_ns"] - a["gen_wait_ns"]) / 1e9 / dt, 3)
            if a["metrics"] and b["metrics"]:
                cum = bucket_delta(b["metrics"], a["metrics"], ("Search",))
                out["server_search_ms"] = {f"p{q * 100:g}": _r(None if v is None else v * 1000, 3) for q, v in
                                           ((q, bucket_quantile(cum, q)) for q in (0.5, 0.99, 0.999))}
                out["server_share_above"] = {f"{bd} ms": _r(share_above(cum, bd / 1000), 5) for bd in BOUNDS_MS}
                out["server_search_calls"] = int(cum[-1][1]) if cum else 0
        if res.lag.total:
            out["generator_send_lag_ms"] = {k: latency_ms(res.lag)[k] for k in ("p50", "p99", "p99.9")}
        return out


class _AuthStub:
    """A DualVec stub whose Search calls carry the run's token (for discover_words)."""

    def __init__(self, stub, auth: _Auth):
        self._stub, self._auth = stub, auth

    def Search(self, request, timeout=None):  # noqa: N802 - gRPC's method name
        return self._stub.Search(request, timeout=timeout, metadata=self._auth.metadata())


def _series_hist(counts, proto: Histogram) -> Histogram | None:
    if counts is None or not counts.any():
        return None
    proto.counts[:] = counts
    proto.total = int(counts.sum())
    nz = np.flatnonzero(counts)
    proto.max = int(proto.bucket_bounds(int(nz[-1]))[1])
    proto.min = int(proto.bucket_bounds(int(nz[0]))[0])
    return proto


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def memory_trend(t_s: list[float], mib: list[float], warmup: float, events: list[dict], settle: float,
                 label_at=None) -> dict:
    """Memory after the warm-up: the least-squares slope in MiB per minute, with each served bundle at a level of
    its own (the one served from the start, then each bundle reloaded), samples from a reload until ``settle`` s
    after every process answered with the new bundle left out. ``trend``: "flat" when the drift over the run (slope
    x minutes) is within FLAT_SHARE of the median (FLAT_MIB at least), else "growing" or "falling". Also the plain
    slope over every sample after the warm-up, and the median of each served period."""
    t = np.asarray(t_s, float)
    y = np.asarray(mib, float)
    keep = t >= warmup
    for e in events:
        if e["event"] == "reload":
            until = e["at_s"] + (e["seen_by_all_after_s"] or 0.0) + settle
            keep &= ~((t >= e["at_s"]) & (t < until))
    out: dict = {"after_warmup_mib": None, "end_mib": None, "slope_mib_per_min": None, "flat": None, "trend": None}
    if keep.sum() < 3:
        return out
    tk, yk = t[keep], y[keep]
    labels = [label_at(x) if label_at else "first" for x in tk]
    levels = sorted(set(labels))
    design = np.column_stack([tk / 60.0] + [np.array([lab == lv for lab in labels], float) for lv in levels])
    coef, *_ = np.linalg.lstsq(design, yk, rcond=None)
    slope = float(coef[0])
    span = (tk[-1] - tk[0]) / 60.0
    median = float(np.median(yk))
    drift = slope * span
    plain = float(np.polyfit(t[t >= warmup] / 60.0, y[t >= warmup], 1)[0]) if (t >= warmup).sum() >= 3 else None
    out.update({
        "after_warmup_mib": round(float(yk[0]), 1), "end_mib": round(float(y[-1]), 1), "median_mib": round(median, 1),
        "slope_mib_per_min": round(slope, 3), "drift_mib": round(drift, 2), "minutes": round(span, 2),
        "plain_slope_mib_per_min": None if plain is None else round(plain, 3),
        "levels_mib": {lv: round(float(coef[1 + i]), 1) for i, lv in enumerate(levels)},
        "samples": int(keep.sum()), "flat": bool(abs(drift) <= max(FLAT_MIB, FLAT_SHARE * median)),
    })
    out["trend"] = "flat" if out["flat"] else "growing" if drift > 0 else "falling"
    # per served period: the median of its samples (a leak across reloads shows as the same bundle rising)
    periods, start = [], 0.0
    marks = [e for e in events if e["event"] == "reload"]
    for j in range(len(marks) + 1):
        end = marks[j]["at_s"] if j < len(marks) else math.inf
        sel = keep & (t >= start) & (t < end)
        if sel.any():
            periods.append({"from_s": round(start, 1), "bundle": "first" if j == 0 else marks[j - 1]["to"],
                            "median_mib": round(float(np.median(y[sel])), 1)})
        start = end
    out["periods"] = periods
    return out


# ================================================================================================ report, plot

def format_summary(result: dict) -> str:
    c, s, srv = result["config"], result["summary"], result["server"]
    v = s["verdict"]
    load = (f"open loop at {c['rate']:g} calls/s" if result["workload"]["mode"] == "open"
            else f"{c['concurrency']} closed-loop clients")
    ops = ", ".join(f"{op} {w:.0%}" for op, w in result["workload"]["ops"].items())
    lines = [f"soak of {c['address']} ({srv['model']}, {srv['vocab_size']:,} words x {srv['dim']} dims): "
             f"{c['minutes']:g} min, {load} ({ops})"
             + (f" + {c['stream_rate']:g} SearchStream/s of {c['stream_size']}" if c["stream_rate"] else "")
             + f", {c['channels']} connections, warm-up {c['warmup']:g} s"]
    calls = s["calls"]
    lines.append(f"calls: {calls['total']:,}, failed {calls['failed']:,}"
                 + (f" ({', '.join(f'{k} {n}' for k, n in calls['failed_by'].items())})" if calls["failed"] else "")
                 + (f", unfinished {calls['unfinished']}" if calls["unfinished"] else "")
                 + (f"; control probes failed: {calls['probe_failures']}" if calls["probe_failures"] else ""))
    lat = s["latency_ms"]
    lines.append(f"latency after warm-up, every unary call: p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
                 f"p99.9 {lat['p99.9']} ms, max {lat['max']} ms")
    for op, d in s["per_op"].items():
        lines.append(f"  {op:<8} {d['count']:>9,}  p50 {d['p50']} ms  p99 {d['p99']} ms  p99.9 {d['p99.9']} ms")
    if s["stream_latency_ms"]:
        d = s["stream_latency_ms"]
        lines.append(f"  stream   {d['count']:>9,}  p50 {d['p50']} ms  p99 {d['p99']} ms  p99.9 {d['p99.9']} ms "
                     f"({c['stream_size']} searches a call)")
    for e in result["events"]:
        if e["event"] == "reload":
            lines.append(f"reload to {e['to']} at {e['at_s'] / 60:.2f} min: " + (
                f"seen in GetInfo after {e['first_seen_after_s']} s, by {CONFIRM} fresh connections in a row "
                f"after {e['seen_by_all_after_s']} s" if e["seen"] else "NOT seen in GetInfo"))
        else:
            lines.append(f"token rotation at {e['at_s'] / 60:.2f} min: new token accepted after "
                         f"{e['new_token_accepted_after_s']} s, clients switched, old token removed and refused "
                         f"after {e.get('old_token_refused_after_s')} s" + ("" if e.get("done") else
                                                                             f": NOT done ({e.get('why')})"))
    m = s["memory"]
    if m.get("slope_mib_per_min") is not None:
        levels = ", ".join(f"{k} {val}" for k, val in m["levels_mib"].items())
        lines.append(f"memory ({m['label']}): {m['after_warmup_mib']} MiB after warm-up, {m['end_mib']} MiB at the "
                     f"end, max {m['max_mib']} MiB; slope {m['slope_mib_per_min']:+.3f} MiB/min with each bundle at "
                     f"its own level ({levels} MiB), {m['drift_mib']:+.2f} MiB over {m['minutes']} min: "
                     + m["trend"]
                     + (f"; the server's threads: {m['server_threads']['after_warmup']} after warm-up, "
                        f"{m['server_threads']['end']} at the end" if m.get("server_threads") else ""))
    t = s["tail"]
    if "server_search_ms" in t:
        cs, ss = t["client_search_ms"], t["server_search_ms"]
        fs = t.get("client_search_from_send_ms") or {}
        lines.append(f"Search, client-seen from the intended send: p50 {cs['p50']} ms, p99 {cs['p99']} ms, p99.9 "
                     f"{cs['p99.9']} ms; from the actual send: p50 {fs.get('p50')} ms, p99 {fs.get('p99')} ms, "
                     f"p99.9 {fs.get('p99.9')} ms; in the server's handler (dualvec_call_seconds): p50 {ss['p50']} "
                     f"ms, p99 {ss['p99']} ms, p99.9 {ss['p99.9']} ms")
        for k in t["client_share_above"]:
            lines.append(f"  share above {k}: client {_pct(t['client_share_above'][k])} (from the actual send "
                         f"{_pct((t.get('client_from_send_share_above') or {}).get(k))}), the generator late "
                         f"{_pct((t.get('send_lag_share_above') or {}).get(k))}, in the server's handler "
                         f"{_pct(t['server_share_above'][k])}")
    if "server_cpu_cores" in t:
        lines.append(f"server: {t['server_cpu_cores']} cores busy ({t['server_cpu_ms_per_call']} ms CPU a call), its "
                     f"threads waited for a CPU {t['server_cpu_wait_cores']} cores' worth "
                     f"({t['server_cpu_wait_ms_per_call']} ms a call)"
                     + (f"; host CPU pressure {t['host_cpu_pressure']:.0%}" if "host_cpu_pressure" in t else "")
                     + f"; the generator used {t['generator_cpu_cores']} cores and waited for a CPU "
                     f"{t['generator_cpu_wait_cores']} cores' worth")
    lines.append(f"verdict: zero failed calls: {'yes' if v['zero_failed_calls'] else 'NO'}; reloads seen: "
                 f"{v['reloads_seen']}; token rotation: "
                 f"{'-' if v['rotation_done'] is None else 'done' if v['rotation_done'] else 'NOT done'}; "
                 f"memory after warm-up: {s['memory'].get('trend') or '-'}")
    if c.get("command"):
        lines.append(f"reproduce: {c['command']}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def plot(result: dict, path: str) -> None:
    """Memory, latency and calls/errors over time, one panel each, reloads and the rotation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, s = result["config"], result["summary"]
    rows = result["intervals"]
    t = np.array([r["t_s"] for r in rows]) / 60.0
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), dpi=80, sharex=True)

    def marks(ax, labels: bool) -> None:
        ax.axvspan(0, c["warmup"] / 60.0, color="0.92", label="warm-up" if labels else None)
        for e in result["events"]:
            x = e["at_s"] / 60.0
            if e["event"] == "reload":
                ax.axvline(x, color="tab:purple", ls="--", lw=0.8)
                if labels:
                    ax.annotate(f"reload to {e['to']}", (x, 0.03), xycoords=("data", "axes fraction"), fontsize=7,
                                rotation=90, va="bottom", ha="right", color="tab:purple")
            else:
                ax.axvline(x, color="tab:orange", ls=":", lw=1.0)
                if labels:
                    ax.annotate("token rotated", (x, 0.03), xycoords=("data", "axes fraction"), fontsize=7,
                                rotation=90, va="bottom", ha="right", color="tab:orange")

    ax = axes[0]
    ms = result["memory_samples"]
    if ms["mib"]:
        ax.plot(np.array(ms["t_s"]) / 60.0, ms["mib"], lw=1, color="tab:blue")
    m = s["memory"]
    marks(ax, True)
    label = m.get("label", "server memory")
    verdict = "" if m.get("slope_mib_per_min") is None else (
        f": slope {m['slope_mib_per_min']:+.3f} MiB/min after warm-up, each bundle at its own level ({m['trend']})")
    ax.set_title(textwrap.fill(label + verdict, 110), fontsize=8)
    ax.set_ylabel("MiB")
    ax = axes[1]
    for key, style in (("p99.9_ms", ":"), ("p99_ms", "-"), ("p50_ms", "-")):
        ax.plot(t, [np.nan if r[key] is None else r[key] for r in rows], style, label=key.replace("_ms", ""))
    if any(r.get("server_search_p99_ms") is not None for r in rows):
        ax.plot(t, [np.nan if r.get("server_search_p99_ms") is None else r["server_search_p99_ms"] for r in rows],
                "--", color="0.4", lw=1, label="Search p99 in the server")
    if any(r.get("stream_p99_ms") is not None for r in rows):
        ax.plot(t, [np.nan if r["stream_p99_ms"] is None else r["stream_p99_ms"] for r in rows], "-", color="0.7",
                lw=1, label=f"SearchStream ({c['stream_size']}) p99")
    marks(ax, False)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7, loc="upper left", ncol=5)
    lat = s["latency_ms"]
    ax.set_title(f"latency of the calls ending in each {c['interval']:g} s; after warm-up p50 {lat['p50']} ms, "
                 f"p99 {lat['p99']} ms, p99.9 {lat['p99.9']} ms", fontsize=8)
    ax = axes[2]
    rates = [r["calls"] / c["interval"] for r in rows]
    ax.plot(t, rates, color="tab:green", label="calls/s")
    codes = sorted({k for r in rows for k in r["errors"]})
    ax2 = ax.twinx()
    for code in codes:
        ax2.plot(t, [r["errors"].get(code, 0) / c["interval"] for r in rows], label=f"{code}/s")
    if not codes:
        ax2.plot(t, [0.0] * len(t), color="tab:red", label="errors/s")
    ax2.set_ylim(bottom=0, top=max(1.0, ax2.get_ylim()[1]))
    ax2.set_ylabel("failed calls/s")
    marks(ax, False)
    ax.set_ylim(0, 1.15 * max(rates + [1.0]))
    ax.set_ylabel("calls/s")
    ax.set_xlabel("minutes since start")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left", ncol=4)
    calls = s["calls"]
    ax.set_title(f"{calls['total']:,} calls, {calls['failed']:,} failed; reloads seen in GetInfo: "
                 f"{s['verdict']['reloads_seen']}", fontsize=8)
    fig.suptitle(textwrap.fill(f"soak of {result['server']['model']} ({result['server']['vocab_size']:,} words x "
                               f"{result['server']['dim']}), {c['minutes']:g} min", 110), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ================================================================================================ command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/soak.py",
        description="Mixed load at a running dualvec server for --minutes, with the bundle reloaded every "
        "--reload-every minutes (the --served-link symlink flipped between the two --bundles, SIGHUP to "
        "--server-pid) and the token of --token-file rotated once; per interval: calls, errors by status, "
        "p50/p99/p99.9, the PSS of the server's process tree. Prints a summary (memory flat after warm-up or not, "
        "zero failed calls or not, reloads seen in GetInfo), and writes a PNG and JSON.",
        epilog="example: python scripts/soak.py 127.0.0.1:50051 --minutes 15 --rate 300 --server-pid PID "
        "--bundles a.bundle b.bundle --served-link current --token-file tokens --png soak.png --json soak.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", metavar="ADDR", help="the server, host:port")
    p.add_argument("--minutes", type=float, required=True, help="length of the run, warm-up included")
    p.add_argument("--server-pid", type=int, required=True, help="the server's pid (the `serve` parent): its tree's "
                   "memory is sampled, and reloads and token changes are signalled to it (SIGHUP)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rate", type=float, help="open loop: unary calls per second on a fixed schedule (default 100)")
    how.add_argument("--concurrency", type=int, help="closed loop: this many clients")
    p.add_argument("--bundles", nargs=2, metavar=("A", "B"), help="the two bundles the served link is flipped "
                   "between (it points to one of them at the start)")
    p.add_argument("--served-link", metavar="PATH", help="the symlink the server serves")
    p.add_argument("--token-file", metavar="FILE", help="the server's --auth-token-file: its first token is sent, "
                   "and it is rewritten once to rotate it (a new token added, the clients switched, the old one "
                   "removed)")
    p.add_argument("--reload-every", type=float, default=3.0, metavar="MIN", help="minutes between reloads (3; "
                   "0: none)")
    p.add_argument("--rotate-at", type=float, metavar="MIN", help="minute of the token rotation (default: between "
                   "the two reloads nearest the middle of the run; past the run's end: none)")
    p.add_argument("--warmup", type=float, default=60.0, metavar="S", help="seconds left out of the latency and "
                   "memory verdicts (60)")
    p.add_argument("--interval", type=float, default=10.0, metavar="S", help="seconds per point of the time "
                   "series (10)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"operations and weights: dualvec loadtest's (in-in, in-out, "
                   f"out-in, out-out, batch, desm) and vectors (GetVectors of 4 words) ({DEFAULT_MIX})")
    p.add_argument("--stream-rate", type=float, default=2.0, help="SearchStream calls per second, besides the "
                   "unary rate; 0: none (2)")
    p.add_argument("--stream-size", type=int, default=8, help="searches per SearchStream call (8)")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per search (10)")
    p.add_argument("--deadline", type=float, default=5.0, help="seconds each call may take (5)")
    p.add_argument("--channels", type=int, default=4, help="connections the load is spread over (4; each may "
                   "land on another server process)")
    p.add_argument("--metrics-url", metavar="URL", help="the server's /metrics: its own time per Search call, "
                   "against the client-seen latency")
    p.add_argument("--tls-ca", metavar="PEM", help="the CA of a TLS server's certificate")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--reload-timeout", type=float, default=300.0, help="seconds a reload or a token change may "
                   "take to be seen (300)")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after a reload left out of the memory "
                   "trend (15)")
    p.add_argument("--png", metavar="FILE", help="write memory, latency and errors over time here")
    p.add_argument("--json", metavar="FILE", help="write every number here")
    p.add_argument("--seed", type=int, default=0, help="random seed of words and schedules (0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when no call failed, every reload was seen and the rotation was done; 3 otherwise; 1 when the run
    could not start."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    cfg = SoakConfig(address=args.address, minutes=args.minutes, server_pid=args.server_pid,
                     bundles=tuple(args.bundles) if args.bundles else None, served_link=args.served_link,
                     token_file=args.token_file, rate=args.rate if args.rate or args.concurrency else 100.0,
                     concurrency=args.concurrency, warmup=args.warmup, interval=args.interval,
                     reload_every=args.reload_every, rotate_at=args.rotate_at, mix=args.mix,
                     stream_rate=args.stream_rate, stream_size=args.stream_size, k=args.k, deadline=args.deadline,
                     channels=args.channels, metrics_url=args.metrics_url, tls_ca=args.tls_ca, model=args.model,
                     seed=args.seed, reload_timeout=args.reload_timeout, settle=args.settle,
                     command="python scripts/soak.py " + " ".join(shlex.quote(a) for a in argv))
    try:
        result = Soak(cfg).run()
    except LoadtestError as exc:
        print(f"scripts/soak.py: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(format_summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    if args.png:
        plot(result, args.png)
    v = result["summary"]["verdict"]
    ok = v["zero_failed_calls"] and v["all_reloads_seen"] and v["rotation_done"] is not False
    return EXIT_OK if ok else EXIT_FAILED
