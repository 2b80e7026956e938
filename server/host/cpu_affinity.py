"""Which CPUs the server process runs on (`dualvec serve --cpus`).

A query crosses several threads of the server: gRPC's I/O thread, the Python poll thread, a worker that runs the
search. When the scheduler spreads them over CPUs, every hand-off wakes another (often idle) CPU, and the search
runs on a core whose caches hold none of the index. Kept on one CPU, the hand-offs are plain context switches and
the hot part of the graph stays in that core's cache. Measured on a 2-CPU machine at 1M x 300 (the clients on
the same machine), one CPU for the server gave lower latency *and* more throughput than two: a bare gRPC call
0.45 instead of 0.55 ms (medians of 4 alternated starts), one closed-loop client's p99 1.9 instead of 4.9 ms,
1,095 instead of 786 queries/s at 32 clients (docs/performance.md). Python's GIL keeps the server's own work near one core in any case.

``auto`` applies that where it was measured, on machines that give this process two CPUs or fewer, and leaves
placement to the operating system on bigger ones (not measured there). With several server processes
(``--processes``), each is pinned to one CPU of the set instead (``dualvec.server.host.worker_processes``).
"""
from __future__ import annotations

import logging
import os

from dualvec.kernel.errors import DualvecError

log = logging.getLogger("dualvec.server")

# "auto" pins to one CPU when the process may run on at most this many
AUTO_PIN_MAX_CPUS = 2


def available_cpus() -> set[int] | None:
    """CPUs this process may run on, or None where the platform cannot tell (no sched_getaffinity)."""
    getter = getattr(os, "sched_getaffinity", None)
    return set(getter(0)) if getter is not None else None


def parse_cpus(spec: str, available: set[int] | None) -> set[int] | None:
    """The CPU set a ``--cpus`` value asks for, or None for "leave placement to the OS".

    spec: "auto", "all", or a list such as "1", "0,2" or "0-3". Raises DualvecError naming a bad or unavailable
    CPU."""
    text = spec.strip().lower()
    if text == "all":
        return None
    if text == "auto":
        if available is None or len(available) > AUTO_PIN_MAX_CPUS or len(available) < 2:
            return None
        return {max(available)}
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                cpus.update(range(lo, hi + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise DualvecError(f"--cpus: {part!r} is not a CPU number or range (give e.g. 'auto', 'all', '1', "
                               f"'0,2' or '0-3')") from None
    if available is None:
        raise DualvecError("--cpus: this platform cannot pin a process to CPUs; use --cpus all")
    missing = sorted(cpus - available)
    if missing:
        raise DualvecError(f"--cpus: CPU {', '.join(map(str, missing))} is not available to this process "
                           f"(available: {format_cpus(available)})")
    return cpus


def format_cpus(cpus: set[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5'."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def pin_process(spec: str) -> set[int] | None:
    """Apply ``--cpus`` to every thread of this process (call it before the gRPC server starts: threads made later
    inherit the setting). Returns the CPU set applied, or None when placement is left to the OS."""
    available = available_cpus()
    cpus = parse_cpus(spec, available)
    if cpus is None:
        log.info("CPU placement left to the operating system (--cpus %s; %s CPUs available)", spec,
                 len(available) if available is not None else "?")
        return None
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    log.info("server threads pinned to CPU %s (--cpus %s, of %s)", format_cpus(cpus), spec,
             format_cpus(available) if available else "?")
    return cpus
