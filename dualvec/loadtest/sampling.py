"""The server's memory, sampled in a thread during the run (``--server-pid``): the whole process tree's PSS.

`dualvec serve --processes N` is a parent that holds no work and N children that do, all sharing the bundle's
pages (copy-on-write after the fork, or the same mapped files). The resident memory (RSS) of the parent alone
measures nothing (a flat line), and RSS summed over the tree counts every shared page once per process. The
proportional set size (PSS, ``/proc/PID/smaps_rollup``) charges each page to the processes that map it in equal
shares, so the tree's PSS adds up to the memory the server holds, shared pages counted once. Where smaps_rollup
cannot be read (not Linux, another user's process), the tree's RSS is summed instead, and the label says so.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

from dualvec.loadtest.errors import LoadtestError


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those alive now)."""
    root = psutil.Process(pid)
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def pss_bytes(pid: int) -> int | None:
    """A process's proportional set size from /proc/PID/smaps_rollup, or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class TreeMemory:
    """One sample of a process tree: ``bytes`` is the sum of PSS (``measure`` "PSS") or, where PSS could not be
    read for some process, of RSS (``measure`` "RSS"); ``processes``: how many were summed."""

    bytes: int
    processes: int
    measure: str

    @property
    def label(self) -> str:
        plural = "es" if self.processes != 1 else ""
        return f"{self.measure} of the server's process tree ({self.processes} process{plural})"


def tree_memory(pid: int) -> TreeMemory:
    """The memory of ``pid`` and its descendants now. Raises psutil.Error when ``pid`` itself is gone."""
    procs = process_tree(pid)
    pss, rss, counted = 0, 0, 0
    pss_ok = True
    for proc in procs:
        try:
            resident = proc.memory_info().rss
        except psutil.Error:  # exited meanwhile: not part of the tree any more
            continue
        counted += 1
        rss += resident
        share = pss_bytes(proc.pid) if pss_ok else None
        if share is None:
            pss_ok = False
        else:
            pss += share
    if counted == 0:
        raise psutil.NoSuchProcess(pid)
    return TreeMemory(pss if pss_ok else rss, counted, "PSS" if pss_ok else "RSS")


class RssSampler:
    """Samples the memory of a process tree (the server and its worker processes; ``tree_memory``) every
    ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 1.0):
        try:
            first = tree_memory(pid)
        except psutil.Error as exc:
            raise LoadtestError(f"--server-pid {pid}: {exc}") from None
        self.pid = pid
        self.every = every
        self.measure = first.measure
        self.samples: list[tuple[float, int, int]] = []  # (seconds, bytes, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        try:
            m = tree_memory(self.pid)
        except psutil.Error:  # the server went away: keep what was sampled
            return
        if m.measure != self.measure:  # PSS became unreadable for some process: say so, in RSS from now on
            self.measure = "RSS"
        self.samples.append((time.perf_counter() - self._t0, m.bytes, m.processes))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        mib = np.array([s[1] for s in self.samples]) / 2**20
        processes = max(s[2] for s in self.samples)
        # growth: the last tenth of the run against the first tenth after warm-up settled (robust to one spike)
        tenth = max(1, len(mib) // 10)
        return {"measure": self.measure, "processes": processes,
                "label": TreeMemory(0, processes, self.measure).label,
                "start_mib": round(float(mib[0]), 1), "end_mib": round(float(mib[-1]), 1),
                "max_mib": round(float(mib.max()), 1),
                "growth_mib": round(float(np.median(mib[-tenth:]) - np.median(mib[tenth:2 * tenth] if len(mib) >= 3
                                                                                 else mib[:tenth])), 1),
                "samples": len(mib), "t_s": [round(s[0], 2) for s in self.samples],
                "mib": [round(float(v), 1) for v in mib]}
