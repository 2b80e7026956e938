"""dualvec.server.host.huge_pages: which buffers of a loaded index are moved to huge pages, that moving them changes
no answer, and that the outcome is what the kernel allows, either way: where this kernel collapses anonymous memory
into huge pages (probed here on a buffer of our own, and read from /sys/kernel/mm/transparent_hugepage/enabled),
the index's whole 2 MiB pages are moved and the process holds them as AnonHugePages; where it refuses, nothing is
counted as moved and the refusal is logged with the kernel's reason. Both outcomes are also forced with a stand-in
for madvise, so that each is checked on every machine."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import re
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

import dualvec.server.host.huge_pages as huge_pages
from dualvec.server.host.huge_pages import HUGE_PAGE, MADV_COLLAPSE, MADV_HUGEPAGE, index_buffers, use_huge_pages

LOGGER = "dualvec.server.host.huge_pages"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    """The bracketed mode of /sys/kernel/mm/transparent_hugepage/enabled (always, madvise, never), or None."""
    if not THP_ENABLED.exists():
        return None
    m = re.search(r"\[(\w+)\]", THP_ENABLED.read_text())
    return m.group(1) if m else None


def kernel_collapses() -> tuple[bool, str]:
    """Whether this kernel moves anonymous memory of this process to huge pages on MADV_COLLAPSE: tried on a
    buffer of our own (not the index's), as use_huge_pages asks it. Returns (accepted, the kernel's reason)."""
    if not sys.platform.startswith("linux"):
        return False, "not Linux"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    buffer = np.ones(3 * HUGE_PAGE, dtype=np.uint8)  # touched: every page present
    start = -(-buffer.ctypes.data // HUGE_PAGE) * HUGE_PAGE
    for advice in (MADV_HUGEPAGE, MADV_COLLAPSE):
        if madvise(start, HUGE_PAGE, advice) != 0:
            return False, f"madvise {advice}: {errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}"
    return True, ""


def anon_huge_bytes() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


def whole_huge_pages(buffers) -> int:
    """Bytes of the 2 MiB pages lying wholly inside each (name, address, bytes) buffer."""
    total = 0
    for _, address, nbytes in buffers:
        start = (address + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
        end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
        total += max(0, end - start)
    return total


@pytest.fixture(scope="module")
def graph():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((30_000, 32)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = faiss.index_factory(32, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(rows)
    return index, rows


def test_an_hnsw_index_names_its_graph_and_codes(graph):
    index, rows = graph
    buffers = {name: nbytes for name, _, nbytes in index_buffers(index)}
    hnsw = faiss.downcast_index(index).hnsw
    assert buffers == {"neighbors": hnsw.neighbors.size() * 4, "offsets": hnsw.offsets.size() * 8,
                       "levels": hnsw.levels.size() * 4, "codes": rows.nbytes}


def test_other_index_kinds_have_nothing_to_move():
    flat = faiss.IndexFlatIP(8)
    flat.add(np.eye(8, dtype=np.float32))
    assert index_buffers(flat) == [] and use_huge_pages(flat) == 0


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "kept the index's" in r.getMessage()]


def test_moving_to_huge_pages_changes_no_answer_and_moves_what_the_kernel_allows(graph, info_log):
    index, rows = graph
    queries = rows[:200] + 0.05
    before = index.search(queries, 10)
    huge_before = anon_huge_bytes()
    moved = use_huge_pages(index)
    after = index.search(queries, 10)
    assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])
    assert moved % HUGE_PAGE == 0
    accepted, reason = kernel_collapses()
    mode = thp_mode()
    if accepted:
        assert mode != "never", "THP is off, yet the kernel collapsed a buffer"
        # the whole huge pages of every buffer the log does not name as kept (under memory pressure the kernel may
        # still refuse one: then it says so); the 7.7 MB link list alone spans three
        kept = " ".join(refusals(info_log))
        buffers = index_buffers(index)
        assert moved == whole_huge_pages([b for b in buffers if f"{b[0]} (" not in kept]) > 0, kept
        assert whole_huge_pages(buffers) >= 2 * HUGE_PAGE
        assert anon_huge_bytes() >= max(huge_before, moved // 2)
    else:
        assert moved == 0, f"the kernel refuses ({reason}; THP {mode}) yet {moved} bytes count as moved"
        assert refusals(info_log), "a refusal must be logged"


def fake_madvise(refuse: set[str], buffers) -> callable:
    """A stand-in for libc madvise that refuses MADV_COLLAPSE (EINVAL) inside the named buffers, accepts the rest,
    and changes nothing."""
    spans = {name: (address, address + nbytes) for name, address, nbytes in buffers}

    def madvise(address, length, advice):
        name = next(n for n, (lo, hi) in spans.items() if lo <= address < hi)
        if advice == MADV_COLLAPSE and name in refuse:
            ctypes.set_errno(errno.EINVAL)
            return -1
        return 0
    return madvise


def test_a_refusal_is_logged_with_the_kernels_reason_and_nothing_counts_as_moved(graph, info_log, monkeypatch):
    index, _ = graph
    buffers = index_buffers(index)
    big = [name for name, address, nbytes in buffers if whole_huge_pages([(name, address, nbytes)])]
    monkeypatch.setattr(huge_pages, "_madvise", lambda: fake_madvise(set(big), buffers))
    assert use_huge_pages(index) == 0
    (message,) = refusals(info_log)
    assert "Invalid argument" in message and "0 MiB moved" in message
    assert all(name in message for name in big)


def test_a_partial_refusal_counts_only_the_pages_moved(graph, info_log, monkeypatch):
    index, _ = graph
    buffers = index_buffers(index)
    assert whole_huge_pages([b for b in buffers if b[0] == "neighbors"]) > 0
    monkeypatch.setattr(huge_pages, "_madvise", lambda: fake_madvise({"neighbors"}, buffers))
    moved = use_huge_pages(index)
    assert moved == whole_huge_pages([b for b in buffers if b[0] != "neighbors"])
    (message,) = refusals(info_log)
    assert "neighbors (Invalid argument)" in message and "codes" not in message
    assert f"{moved >> 20} MiB moved" in message


def test_without_madvise_nothing_is_moved_or_logged(graph, info_log, monkeypatch):
    monkeypatch.setattr(huge_pages, "_madvise", lambda: None)  # another platform
    assert use_huge_pages(graph[0]) == 0 and not refusals(info_log)
