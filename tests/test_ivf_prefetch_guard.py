"""The guard against FAISS's prefetch threads (dualvec.kernel.bundle._no_prefetch_threads): an IVF index mapped from
a bundle gets OnDiskInvertedLists, which FAISS gives 32 prefetch threads started on every search call. Read by the
bundle reader (as the server reads it) they are off, and a search starts no thread; read by FAISS alone, the same
file starts threads on every search."""
from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from dualvec.kernel.bundle import index_file, read_bundle
from dualvec.kernel.spaces import Space
from dualvec.server.app import ServerConfig, load_engines

IVF_BUNDLE = Path(__file__).resolve().parent / "fixtures" / "bundle_v1" / "ivf"


def inverted_lists(index: faiss.Index):
    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)


def next_thread_id() -> int:
    """The kernel id the next thread gets: ids are handed out in increasing order, so the difference over a
    stretch of code counts the threads started meanwhile (by anything on the machine: an upper bound)."""
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    return t.native_id


def threads_started_by_searches(index: faiss.Index, calls: int = 100) -> int:
    queries = np.random.default_rng(0).normal(size=(calls, index.d)).astype(np.float32)
    params = faiss.SearchParametersIVF(nprobe=faiss.extract_index_ivf(index).nlist)  # every list
    before = next_thread_id()
    for q in queries:
        index.search(q[None, :], 5, params=params)
    return next_thread_id() - before - 1


def test_faiss_alone_maps_the_lists_with_prefetch_threads_that_start_on_every_search():
    """The hazard the guard exists for, on this FAISS version (if this stops holding, the guard may go)."""
    raw = faiss.read_index(str(IVF_BUNDLE / index_file(Space.IN)), faiss.IO_FLAG_MMAP)
    lists = inverted_lists(raw)
    assert type(lists).__name__ == "OnDiskInvertedLists" and lists.prefetch_nthread > 0
    assert threads_started_by_searches(raw) >= 100


@pytest.mark.parametrize("space", [Space.IN, Space.OUT])
def test_a_mapped_ivf_index_read_by_the_bundle_reader_has_no_prefetch_threads(space):
    bundle = read_bundle(IVF_BUNDLE)
    lists = inverted_lists(bundle.spaces[space].index)
    assert type(lists).__name__ == "OnDiskInvertedLists", "the lists are memory-mapped"
    assert lists.prefetch_nthread == 0
    # other processes' threads can only add to the count: the least of three runs (none, unless the machine is busy
    # starting threads), and far below what FAISS alone starts on the same searches
    started = min(threads_started_by_searches(bundle.spaces[space].index) for _ in range(3))
    assert started <= 10


def test_the_server_loads_mapped_ivf_lists_without_prefetch_threads():
    cfg = ServerConfig(bundles=(str(IVF_BUNDLE),), port=0, checksums=False)  # prefault and all, as `serve` loads
    (engine,) = load_engines(cfg).values()
    for space in (Space.IN, Space.OUT):
        lists = inverted_lists(engine.bundle.spaces[space].index)
        assert type(lists).__name__ == "OnDiskInvertedLists" and lists.prefetch_nthread == 0


def test_an_ivf_index_read_into_memory_has_plain_lists():
    bundle = read_bundle(IVF_BUNDLE, mmap=False)
    assert type(inverted_lists(bundle.spaces[Space.IN].index)).__name__ == "ArrayInvertedLists"
