"""A bounded read-ahead over a streaming call's requests, so that SearchStream can answer the requests that have
already arrived with one FAISS call, as BatchSearch answers its batch, without the client batching anything.

A thread reads the request iterator into a queue of at most ``limit`` requests; ``take`` waits for the next
request and then takes every one already read, up to ``limit``. When the client reads its answers slowly, the
servicer's sends wait for the client's flow-control window, it stops taking, the queue fills and the reader
stops reading: the server holds at most ``limit`` requests read and not answered, plus the batch being answered.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_END = object()
_POLL = 0.1  # seconds between checks that the call is still wanted while waiting on the queue


class ReadAhead:
    """Reads ``requests`` on its own thread, at most ``limit`` ahead of what ``take`` has taken. Call close()
    when done (the reader then stops at its next request)."""

    def __init__(self, requests: Iterator[T], limit: int):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._queue: queue.Queue = queue.Queue(maxsize=limit)
        self._closed = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(requests,), name="dualvec-stream-reader",
                                        daemon=True)
        self._thread.start()

    def _read(self, requests: Iterator[T]) -> None:
        try:
            for request in requests:
                if not self._put(request):
                    return
        except Exception:  # the call ended under the reader (cancelled, deadline): there is nothing more to read
            pass
        self._put(_END)

    def _put(self, item) -> bool:
        """Queue an item, waiting for room; False when closed first."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def take(self, active: Callable[[], bool]) -> list[T]:
        """The next requests in order: waits for one, then adds every one already read (``limit`` at most).
        Empty once the client has closed its side, or when ``active()`` turns False while waiting."""
        if self._ended:
            return []
        while True:
            try:
                first = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not active():
                    return []
        if first is _END:
            self._ended = True
            return []
        batch = [first]
        while len(batch) < self.limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._ended = True
                break
            batch.append(item)
        return batch

    def close(self) -> None:
        self._closed.set()
