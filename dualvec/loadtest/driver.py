"""Driving the load: a phase (one measured run) in one process (``run_phase``), the generator processes that run
it together (``Runner``), and what they measured (``PhaseResult``).

- closed loop: ``concurrency`` clients, each sending its next call as soon as the previous answer is back;
  latency is measured from the send.
- open loop: calls go out on a fixed schedule (evenly spaced, or Poisson arrivals) whether or not earlier ones
  have been answered, and each latency is measured from the call's intended send time, so time spent queued
  behind a stalled server, or behind a late generator, is counted (no coordinated omission).

Worker processes fill their histograms independently; the parent merges them by adding counts.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import queue
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from dualvec.loadtest.errors import LoadtestError
from dualvec.loadtest.histogram import Histogram
from dualvec.loadtest.workload import BATCH, SCORE, SEARCH, STREAM, RequestPool, same_answer

log = logging.getLogger("dualvec.loadtest")


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
    stream_window: int = 0     # > 0: searches over SearchStream calls, this many in flight on each (streams)


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
    streams_opened: int = 0     # SearchStream calls opened (stream mode; the whole run, warm-up included)
    streams_broken: Counter = field(default_factory=Counter)   # status code name -> streams that ended in it
    stream_messages: dict[str, str] = field(default_factory=dict)  # status code name -> first message seen
    stream_sent: int = 0        # searches sent over the streams (the whole run)
    stream_answered: int = 0    # answers read from them, each a search's neighbours or its own error

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
        self.streams_opened += other.streams_opened
        self.streams_broken.update(other.streams_broken)
        for code, msg in other.stream_messages.items():
            self.stream_messages.setdefault(code, msg)
        self.stream_sent += other.stream_sent
        self.stream_answered += other.stream_answered
        return self

    def to_state(self) -> dict:
        d = dict(self.__dict__)
        for name in ("ok", "all", "lag"):
            d[name] = getattr(self, name).to_state()
        d["per_op"] = {op: h.to_state() for op, h in self.per_op.items()}
        d["errors"], d["errors_by_op"] = dict(self.errors), dict(self.errors_by_op)
        d["streams_broken"] = dict(self.streams_broken)
        return d

    @classmethod
    def from_state(cls, d: dict) -> "PhaseResult":
        d = dict(d)
        for name in ("ok", "all", "lag"):
            d[name] = Histogram.from_state(d[name])
        d["per_op"] = {op: Histogram.from_state(h) for op, h in d["per_op"].items()}
        d["errors"], d["errors_by_op"] = Counter(d["errors"]), Counter(d["errors_by_op"])
        d["streams_broken"] = Counter(d["streams_broken"])
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
        """A unary call's future has finished."""
        t_done = time.perf_counter()
        code = fut.code()
        name = code.name if code is not None else "UNKNOWN"
        answer = details = None
        if name == "OK":
            if self.expected is not None:
                try:
                    answer = fut.result()
                except Exception:  # noqa: BLE001 - no answer to check: recorded as wrong below
                    answer = b""
        else:
            try:
                details = fut.details() or ""
            except Exception:  # noqa: BLE001
                details = ""
        self.record(index, t_intended, t_sent, t_done, name, answer, details)
        if notify is not None:
            notify.put(None)

    def record(self, index: int, t_intended: float, t_sent: float, t_done: float, name: str,
               answer: bytes | None = None, details: str | None = None) -> None:
        """One finished request: its status code's name, and (``--check``) the serialized answer of one that
        succeeded, compared with the idle answer; ``details``: the message of one that failed."""
        op, method, _ = self.pool.entries[index]
        wrong = None
        if self.expected is not None and name == "OK" and answer is not None:
            try:
                wrong = not same_answer(method, answer, self.expected[index])
            except Exception as exc:  # a response that does not parse is a wrong answer too
                wrong = True
                log.debug("check failed: %s", exc)
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
                    r.messages.setdefault(name, details or "")
                if wrong is not None:
                    r.checked += 1
                    if wrong:
                        r.wrong += 1
                        if len(r.wrong_examples) < 5:
                            r.wrong_examples.append(f"{op} request #{index}")
            if self.outstanding == 0:
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait until every issued call has finished; the number still unfinished after ``timeout``."""
        with self.lock:
            self.idle.wait_for(lambda: self.outstanding == 0, timeout)
            return self.outstanding


class Target:
    """One process's connection(s) to the server: multi-callables that send serialized requests as they are."""

    def __init__(self, address: str, channels: int = 1, access: dict | None = None):
        """access: token and TLS (dualvec.client.credentials.open_channel's keyword arguments), and the
        ``service_config`` for ``address`` (dualvec.client.service_config: None, the default, balances the calls
        over every server the address resolves to)."""
        from dualvec.client.credentials import open_channel
        from dualvec.client.service_config import channel_options
        from dualvec.v1 import dualvec_pb2 as pb

        access = dict(access or {})
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                *channel_options(access.pop("service_config", None))]
        # distinct channel args keep gRPC from sharing one connection between the channels
        self.channels = [open_channel(address, options=opts + [("dualvec.loadtest.channel", i)], **access)
                         for i in range(max(1, channels))]
        self.callables = [{m: ch.unary_unary(m, request_serializer=None, response_deserializer=None)
                           for m in (SEARCH, BATCH, SCORE)} for ch in self.channels]
        # SearchStream: serialized SearchRequests out, SearchStreamResponses (index, answer or error) back
        self.streams = [ch.stream_stream(STREAM, request_serializer=None,
                                         response_deserializer=pb.SearchStreamResponse.FromString)
                        for ch in self.channels]

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
    if phase.stream_window:
        from dualvec.loadtest.streams import run_stream_phase  # which builds on this module

        return run_stream_phase(target, pool, expected, phase)
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
            for t in arrivals(phase, t0, end, rng):
                issue(t)
        rec.result.unfinished = rec.wait_idle(phase.deadline + 5.0)
    finally:
        sys.setswitchinterval(old_switch)
    result = rec.result
    result.cpu = [time.process_time() - cpu0]
    result.wall = time.perf_counter() - t0
    return result


def arrivals(phase: Phase, t0: float, end: float, rng: np.random.Generator) -> Iterator[float]:
    """An open loop's intended send times from t0 + phase.offset until end, at phase.rate, evenly spaced or as a
    Poisson process (phase.arrivals); each is yielded once it has come, for the caller to send at once."""
    gap = 1.0 / phase.rate
    poisson = phase.arrivals == "poisson"
    j, t = 0, t0 + phase.offset
    while t < end - _EPS:
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield t
        j += 1
        # evenly spaced times are computed, not summed, so that float error cannot add a call
        t = t + rng.exponential(gap) if poisson else t0 + phase.offset + j * gap


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


# ============================================================================================ generator processes

def _worker_main(conn, address: str, channels: int, pool: RequestPool, expected, connect_timeout: float,
                 access: dict | None = None) -> None:
    """A spawned generator process: connect, say ready, run each phase it is sent, until told to stop."""
    logging.basicConfig(level=logging.WARNING)
    try:
        target = Target(address, channels, access)
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
    when ``processes`` is 1, and merges their results. ``stream_window`` > 0: every phase sends its searches over
    SearchStream calls with at most that many in flight on each (dualvec.loadtest.streams)."""

    def __init__(self, address: str, pool: RequestPool, expected: list[bytes] | None, processes: int = 1,
                 channels: int = 1, connect_timeout: float = 10.0, access: dict | None = None,
                 stream_window: int = 0):
        self.address, self.pool, self.expected = address, pool, expected
        self.stream_window = stream_window
        self.processes = max(1, processes)
        self.target: Target | None = None
        self.workers: list = []
        self.conns: list = []
        if self.processes == 1:
            self.target = Target(address, channels, access)
            self.target.wait_ready(connect_timeout, address)
            return
        ctx = mp.get_context("spawn")  # gRPC's threads do not survive fork
        for _ in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, daemon=True, name="dualvec-loadtest",
                               args=(child, address, channels, pool, expected, connect_timeout, access))
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
                                arrivals=arrivals, seed=seed * 1000 + i, check=check,
                                stream_window=self.stream_window))
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
