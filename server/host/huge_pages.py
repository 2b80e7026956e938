"""Backing a loaded FAISS graph with transparent huge pages (Linux).

A graph search is a chain of dependent reads scattered over hundreds of megabytes (each node's neighbour list,
then each neighbour's code); with 4 KiB pages nearly every one of them also misses the TLB. ``madvise``
MADV_HUGEPAGE marks the index's buffers for 2 MiB pages and MADV_COLLAPSE (Linux 6.1+) moves them there at once,
instead of waiting for khugepaged. Measured at 1M x 300 (HNSW32 over SQ8, one thread, single queries): same-space
searches 12 % faster (IN->IN 376 -> 332 us, OUT->OUT 465 -> 413 us), cross-space ones unchanged, for about 1.3 s
per space at load. Nothing changes where the kernel or the platform says no: the buffers stay on 4 KiB pages.
Memory-mapped files (the vectors) are left alone: the kernel refuses to collapse file pages on most filesystems.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import faiss

log = logging.getLogger("dualvec.server.host.huge_pages")

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20


def index_buffers(index: faiss.Index) -> list[tuple[str, int, int]]:
    """(name, address, bytes) of the big in-memory buffers of an HNSW index: the graph's links and offsets and
    the storage's codes. Empty for other index kinds (IVF lists are memory-mapped or small)."""
    concrete = faiss.downcast_index(index)
    if not isinstance(concrete, faiss.IndexHNSW):
        return []
    out = []
    vectors = [("neighbors", concrete.hnsw.neighbors), ("offsets", concrete.hnsw.offsets),
               ("levels", concrete.hnsw.levels)]
    storage = faiss.downcast_index(concrete.storage)
    if isinstance(storage, faiss.IndexFlatCodes):
        vectors.append(("codes", storage.codes))
    for name, vec in vectors:
        if vec.size():
            arr = faiss.rev_swig_ptr(vec.data(), vec.size())
            out.append((name, arr.ctypes.data, arr.nbytes))
    return out


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def use_huge_pages(index: faiss.Index) -> int:
    """Move an HNSW index's buffers to transparent huge pages where the kernel allows. Returns the bytes advised
    and collapsed (0 when nothing was: another platform, another index kind, THP disabled, an older kernel)."""
    buffers = index_buffers(index)
    madvise = _madvise() if buffers else None
    if madvise is None:
        return 0
    done, refused = 0, []
    for name, address, nbytes in buffers:
        start = -(-address // HUGE_PAGE) * HUGE_PAGE  # only whole 2 MiB pages inside the buffer
        end = (address + nbytes) // HUGE_PAGE * HUGE_PAGE
        if end <= start:
            continue
        if madvise(start, end - start, MADV_HUGEPAGE) != 0 or madvise(start, end - start, MADV_COLLAPSE) != 0:
            refused.append(f"{name} ({os.strerror(ctypes.get_errno())})")
            continue
        done += end - start
    if refused:  # slower searches, not wrong ones: say so once per index
        log.info("the kernel kept the index's %s on 4 KiB pages; %d MiB moved to huge pages", ", ".join(refused),
                 done >> 20)
    return done
