"""The opportunistic batcher: every caller gets the answer to its own item, concurrent callers share calls, a lone
caller runs at once, and a failing batch fails each of its callers."""
from __future__ import annotations

import threading
import time

import pytest

from dualvec.server.batching import Batcher


def test_a_lone_call_runs_at_once_as_a_batch_of_one():
    seen = []
    batcher = Batcher(lambda items: seen.append(list(items)) or [x * 2 for x in items])
    assert batcher.submit(21) == 42
    assert seen == [[21]]


def test_concurrent_callers_each_get_their_own_answer_and_share_batches():
    def slow_double(items):
        time.sleep(0.005)  # long enough for other callers to queue up behind a running batch
        return [x * 2 for x in items]

    batcher = Batcher(slow_double, max_batch=8, max_running=1)
    results: dict[int, int] = {}
    barrier = threading.Barrier(40)

    def caller(x: int) -> None:
        barrier.wait()
        results[x] = batcher.submit(x)

    threads = [threading.Thread(target=caller, args=(x,)) for x in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {x: 2 * x for x in range(40)}
    stats = batcher.stats()
    assert stats.items == 40 and stats.batches < 40 and stats.largest <= 8


def test_a_failing_batch_fails_every_caller_in_it():
    def fail(items):
        time.sleep(0.005)
        raise ValueError("boom")

    batcher = Batcher(fail, max_batch=4, max_running=1)
    errors = []

    def caller():
        try:
            batcher.submit(1)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == ["boom"] * 10
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(2)
