"""Opportunistic batching of concurrent searches into one FAISS call.

Calls that arrive while a search is running wait in ``pending``; when a running search ends, its thread takes
everything pending (up to ``max_batch``) and runs it as one batch. An idle server therefore adds no delay (a lone
query runs at once, alone), and a busy one answers many queries per FAISS call: the coarse quantizer and the hub
scan become matrix products, and the Python around each call is paid once per batch instead of once per query.
At most ``max_running`` batches run at once (one per core: FAISS releases the GIL while it searches).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: threading.Event | None = None  # made only for a call that waits (a lone call runs at once)
    result: R | None = None
    error: BaseException | None = None
    lead: bool = False  # set when this waiting call is asked to run the next batch


@dataclass(frozen=True)
class BatchStats:
    batches: int
    items: int
    largest: int


class Batcher(Generic[T, R]):
    """``submit(item)`` returns ``run(items)[i]`` for its item, where run is called on batches of items.

    run: callable taking a list of items and returning a list of results in the same order; an exception fails
    every item of that batch."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 64, max_running: int = 2):
        if max_batch < 1 or max_running < 1:
            raise ValueError("max_batch and max_running must be >= 1")
        self._run = run
        self.max_batch = max_batch
        self.max_running = max_running
        self._lock = threading.Lock()
        self._pending: list[_Slot[T, R]] = []
        self._running = 0
        self._batches = 0
        self._items = 0
        self._largest = 0
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size (dualvec.server.metrics)

    def stats(self) -> BatchStats:
        with self._lock:
            return BatchStats(self._batches, self._items, self._largest)

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            if self._running < self.max_running and not self._pending:
                self._running += 1
                lead = True
            else:
                slot.done = threading.Event()
                self._pending.append(slot)
                lead = False
        if lead:
            self._lead([slot])
        else:
            slot.done.wait()  # type: ignore[union-attr]
            if slot.lead:  # promoted: run the next batch (it includes this slot)
                slot.done.clear()  # type: ignore[union-attr]
                with self._lock:
                    batch = self._take(slot)
                self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _take(self, first: _Slot[T, R]) -> list[_Slot[T, R]]:
        """Under the lock: the promoted slot plus as many pending ones as fit in a batch."""
        batch = [first] + self._pending[: self.max_batch - 1]
        del self._pending[: self.max_batch - 1]
        return batch

    def _lead(self, batch: list[_Slot[T, R]]) -> None:
        """Run a batch, deliver its results, then hand the next batch to a waiting call (or stop running)."""
        try:
            results = self._run([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} items gave {len(results)} results")
            for s, r in zip(batch, results):
                s.result = r
        except BaseException as exc:  # every caller of this batch sees the failure
            for s in batch:
                s.error = exc
        with self._lock:
            self._batches += 1
            self._items += len(batch)
            self._largest = max(self._largest, len(batch))
            nxt = self._pending.pop(0) if self._pending else None
            if nxt is not None:
                nxt.lead = True  # it takes over this running slot
            else:
                self._running -= 1
        for s in batch:
            if s.done is not None:
                s.done.set()
        if nxt is not None:
            nxt.done.set()  # type: ignore[union-attr]
        if self.on_batch is not None:  # after the answers are delivered, and never failing them
            try:
                self.on_batch(len(batch))
            except Exception:  # noqa: BLE001
                pass
