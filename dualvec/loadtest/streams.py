"""Stream mode (``--stream``): the phase's searches go over SearchStream calls instead of unary Search, as a
client that keeps a stream open sends them.

- closed loop: each of the phase's ``concurrency`` clients keeps one stream open with ``stream_window`` searches
  in flight on it; each answer lets the next search go.
- open loop: the schedule's searches are dealt in turn to one stream per connection; a search that finds its
  stream's window full waits for room, and that wait counts in its latency (from its intended send time) and in
  the send lag.

A search's latency runs from its send (open loop: its intended send time) to its answer. A search answered with
its own error (an unknown word, a bad field) is a failed query, counted by status code as a failed unary call is;
a stream that ends in an error is a broken stream, counted apart by its status code, and the searches in flight on
it fail with that code. The client then opens a new stream and goes on.
"""
from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from typing import Callable

import numpy as np

from dualvec.loadtest.driver import Phase, PhaseResult, Target, _Recorder, _sleep_until, arrivals
from dualvec.loadtest.workload import RequestPool

_END = object()
_POLL = 0.1  # seconds between looks at whether a stream has ended, while waiting on a queue or for room
_CODE_NAMES: dict[int, str] = {}


def _code_name(code: int) -> str:
    if not _CODE_NAMES:
        import grpc

        _CODE_NAMES.update({c.value[0]: c.name for c in grpc.StatusCode})
    return _CODE_NAMES.get(code, "UNKNOWN")


class _Stream:
    """One SearchStream call: searches sent with ``send`` (at most ``window`` unanswered), their answers read and
    recorded on a thread of its own, in the order they were sent. ``on_answer`` and ``on_broken`` run on that
    thread after each answer and once if the stream breaks."""

    def __init__(self, call_of, rec: _Recorder, pool: RequestPool, window: int, timeout: float,
                 on_answer: Callable[["_Stream"], None] | None = None,
                 on_broken: Callable[["_Stream"], None] | None = None):
        self.rec, self.pool = rec, pool
        self.on_answer, self.on_broken = on_answer, on_broken
        self.room = threading.Semaphore(window)
        self.lock = threading.Lock()
        self.pending: collections.deque[tuple[int, float, float]] = collections.deque()  # (entry, intended, sent)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False
        self.over = False                # the call is over: nothing more is sent (set under the lock)
        self.ended = threading.Event()   # the reader has finished: the call is over
        self.abandoned = False
        with rec.lock:
            rec.result.streams_opened += 1
        self.call = call_of(self._requests(), timeout=max(timeout, 0.1))
        self.reader = threading.Thread(target=self._read, name="dualvec-loadtest-stream", daemon=True)
        self.reader.start()

    def _requests(self):
        """The request iterator gRPC consumes on its own thread: what ``send`` queued, until ``close``."""
        while not self.ended.is_set():
            try:
                item = self.requests.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def send(self, index: int, t_intended: float) -> bool:
        """Send the pool's request ``index`` once the window has room; False (nothing sent) when the stream has
        ended or been closed first."""
        while not self.room.acquire(timeout=_POLL):
            if self.over:
                return False
        with self.lock:
            if self.closed or self.over:
                self.room.release()
                return False
            self.rec.issued()
            self.pending.append((index, t_intended, time.perf_counter()))
            self.requests.put(self.pool.entries[index][2])
        with self.rec.lock:
            self.rec.result.stream_sent += 1
        return True

    def close(self) -> None:
        """No more searches: the server answers those in flight, then ends the call."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.requests.put(_END)

    def abandon(self) -> None:
        """Give up on the answers still due (counted as unfinished by the caller) and cancel the call."""
        self.abandoned = True
        self.call.cancel()

    def _read(self) -> None:
        try:
            for answer in self.call:
                t_done = time.perf_counter()
                with self.lock:
                    index, t_intended, t_sent = self.pending.popleft()
                self.room.release()
                if answer.WhichOneof("result") == "error":
                    self.rec.record(index, t_intended, t_sent, t_done, _code_name(answer.error.code),
                                    details=answer.error.message)
                else:
                    self.rec.record(index, t_intended, t_sent, t_done, "OK",
                                    answer.response.SerializeToString() if self.rec.expected is not None else None)
                with self.rec.lock:
                    self.rec.result.stream_answered += 1
                if self.on_answer is not None:
                    self.on_answer(self)
            name, message = ("UNKNOWN", "the stream ended with searches unanswered") if self.pending else ("", "")
        except Exception as exc:  # noqa: BLE001 - grpc.RpcError, the stream's own status
            code = getattr(exc, "code", lambda: None)()
            name = code.name if code is not None else "UNKNOWN"
            try:
                message = exc.details() or ""  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                message = str(exc)
        with self.lock:
            self.over = True
        if name and not self.abandoned:
            self._broken(name, message)
        self.ended.set()
        if name and not self.abandoned and self.on_broken is not None:
            self.on_broken(self)

    def _broken(self, name: str, message: str) -> None:
        """The searches in flight fail with the stream's status; the stream counts as broken."""
        t_done = time.perf_counter()
        with self.lock:
            lost, self.pending = list(self.pending), collections.deque()
        for index, t_intended, t_sent in lost:
            self.rec.record(index, t_intended, t_sent, t_done, name, details=message)
        with self.rec.lock:
            self.rec.result.streams_broken[name] += 1
            self.rec.result.stream_messages.setdefault(name, message)


def run_stream_phase(target: Target, pool: RequestPool, expected: list[bytes] | None, phase: Phase) -> PhaseResult:
    """Run one phase of stream mode in this process and return what it measured."""
    t0 = time.perf_counter() + (phase.start_wall - time.time())
    rec = _Recorder(pool, expected if phase.check else None, t0, phase)
    end = rec.end
    stop_at = t0 + phase.warmup + phase.duration + phase.deadline  # the streams' deadline
    calls = target.streams
    streams: list[_Stream] = []
    streams_lock = threading.Lock()

    def drawer(seed) -> Callable[[], int]:
        rng = np.random.default_rng(seed)
        state = {"it": iter(())}

        def next_index() -> int:
            try:
                return next(state["it"])
            except StopIteration:
                state["it"] = iter(pool.draw(rng, 1024).tolist())
                return next(state["it"])
        return next_index

    def open_stream(slot: int, on_answer=None, on_broken=None) -> _Stream:
        s = _Stream(calls[slot % len(calls)], rec, pool, phase.stream_window, stop_at - time.perf_counter(),
                    on_answer, on_broken)
        with streams_lock:
            streams.append(s)
        return s

    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # hand the GIL over quickly: the senders' wake-ups are latency-critical
    cpu0 = time.process_time()
    try:
        _sleep_until(t0)
        if phase.mode == "closed":
            def client(slot: int) -> None:
                next_index = drawer([phase.seed, slot])

                def answered(s: _Stream) -> None:
                    now = time.perf_counter()
                    if now < end:
                        s.send(next_index(), now)
                    else:
                        s.close()

                def broken(s: _Stream) -> None:
                    if time.perf_counter() < end:
                        fill(open_stream(slot, answered, broken))

                def fill(s: _Stream) -> None:
                    for _ in range(phase.stream_window):
                        now = time.perf_counter()
                        if now >= end or not s.send(next_index(), now):
                            break
                    if time.perf_counter() >= end:
                        s.close()

                fill(open_stream(slot, answered, broken))

            for slot in range(phase.concurrency):
                client(slot)
        else:
            next_index = drawer(phase.seed)
            slots = [open_stream(i) for i in range(len(calls))]
            rng = np.random.default_rng([phase.seed, 1])
            for j, t in enumerate(arrivals(phase, t0, end, rng)):
                index, slot = next_index(), j % len(slots)
                while not slots[slot].send(index, t):  # the stream broke: a new one takes its place
                    slots[slot] = open_stream(slot)
            for s in slots:
                s.close()
        _sleep_until(end)
        rec.result.unfinished = rec.wait_idle(phase.deadline + 5.0)
        with streams_lock:
            opened = list(streams)
        for s in opened:
            s.close()
            if rec.result.unfinished:
                s.abandon()
        for s in opened:
            s.ended.wait(5.0)
    finally:
        sys.setswitchinterval(old_switch)
    result = rec.result
    result.cpu = [time.process_time() - cpu0]
    result.wall = time.perf_counter() - t0
    return result
