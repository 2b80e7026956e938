"""The server's resident memory, sampled in a thread during the run (``--server-pid``)."""
from __future__ import annotations

import threading
import time

import numpy as np
import psutil

from dualvec.loadtest.errors import LoadtestError


class RssSampler:
    """Samples the resident memory of a process (the server) every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 1.0):
        try:
            self.proc = psutil.Process(pid)
            self.proc.memory_info()
        except psutil.Error as exc:
            raise LoadtestError(f"--server-pid {pid}: {exc}") from None
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
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
            self.samples.append((time.perf_counter() - self._t0, self.proc.memory_info().rss))
        except psutil.Error:  # the server went away: keep what was sampled
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        mib = np.array([s[1] for s in self.samples]) / 2**20
        # growth: the last tenth of the run against the first tenth after warm-up settled (robust to one spike)
        tenth = max(1, len(mib) // 10)
        return {"start_mib": round(float(mib[0]), 1), "end_mib": round(float(mib[-1]), 1),
                "max_mib": round(float(mib.max()), 1),
                "growth_mib": round(float(np.median(mib[-tenth:]) - np.median(mib[tenth:2 * tenth] if len(mib) >= 3
                                                                                 else mib[:tenth])), 1),
                "samples": len(mib), "t_s": [round(s[0], 2) for s in self.samples],
                "rss_mib": [round(float(v), 1) for v in mib]}
