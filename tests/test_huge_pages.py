"""dualvec.server.host.huge_pages: which buffers of a loaded index are moved to huge pages, and that moving them changes no
answer. Where the kernel allows THP collapse (Linux 6.1+, THP not 'never'), the process then holds huge pages."""
from __future__ import annotations

import platform
import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from dualvec.server.host.huge_pages import HUGE_PAGE, index_buffers, use_huge_pages


def _thp_collapse_possible() -> bool:
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not enabled.exists() or "[never]" in enabled.read_text():
        return False
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (6, 1)


def _anon_huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


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


def test_moving_to_huge_pages_changes_no_answer(graph):
    index, rows = graph
    queries = rows[:200] + 0.05
    before = index.search(queries, 10)
    moved = use_huge_pages(index)
    after = index.search(queries, 10)
    assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])
    assert moved % HUGE_PAGE == 0
    if _thp_collapse_possible():
        assert moved >= 2 * HUGE_PAGE  # the 7.7 MB link list alone spans whole huge pages
        assert _anon_huge_kib() * 1024 >= moved // 2
