"""Latency histograms: log-linear buckets as HdrHistogram lays them out (values in microseconds, known within
0.1%), merged exactly by adding counts; ``latency_ms`` reads a histogram's percentiles in milliseconds."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


class Histogram:
    """Counts of non-negative integer values (microseconds here) in log-linear buckets, as HdrHistogram lays them
    out: values below ``2**bits`` are counted exactly; above, each power-of-two range is split into ``2**(bits-1)``
    equal buckets, so every value is known within one part in ``2**(bits-1)`` (bits=11: 0.1%). Histograms of the
    same layout merge exactly by adding counts. Values above ``max_value`` are counted in the last bucket (the
    exact maximum is kept apart)."""

    def __init__(self, bits: int = 11, max_value: int = 1 << 36):
        if not 2 <= bits <= 20:
            raise ValueError(f"bits must be in [2, 20], got {bits}")
        self.bits = bits
        self.half = 1 << (bits - 1)
        self.max_value = int(max_value)
        self.counts = np.zeros(self.index_of(self.max_value) + 1, dtype=np.int64)
        self.total = 0
        self.min = math.inf
        self.max = 0
        self.sum = 0

    # -------------------------------------------------------------------------------------------------- layout
    def index_of(self, value: int) -> int:
        """Bucket of one value (an int >= 0)."""
        e = value.bit_length() - self.bits
        return value if e <= 0 else e * self.half + (value >> e)

    def bucket_bounds(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest value of buckets ``index`` (arrays of int64)."""
        idx = np.asarray(index, dtype=np.int64)
        e = np.maximum(idx // self.half - 1, 0)
        m = np.where(idx < 2 * self.half, idx, idx - e * self.half)
        low = m << e
        high = ((m + 1) << e) - 1
        return low, high

    # ----------------------------------------------------------------------------------------------- recording
    def record(self, value: float, count: int = 1) -> None:
        v = min(max(int(value), 0), self.max_value)
        self.counts[self.index_of(v)] += count
        self.total += count
        self.sum += v * count
        if v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def record_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Record each of a (n,) array of values."""
        for v in np.asarray(values).ravel().tolist():
            self.record(v)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s counts into this histogram (same layout required); returns self."""
        if (other.bits, other.max_value) != (self.bits, self.max_value):
            raise ValueError("histograms of different layouts cannot be merged")
        self.counts += other.counts
        self.total += other.total
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def merged(cls, hists: Sequence["Histogram"], bits: int = 11, max_value: int = 1 << 36) -> "Histogram":
        out = cls(bits, max_value)
        for h in hists:
            out.merge(h)
        return out

    # ----------------------------------------------------------------------------------------------- reading
    def percentile(self, q: float) -> float:
        """The smallest recorded value v such that at least q% of the values are <= v, given as the highest
        value of its bucket (capped at the exact maximum): never below the true percentile, above it by at most
        the bucket's width. NaN when empty."""
        if self.total == 0:
            return math.nan
        if q <= 0:
            return float(self.min)
        rank = max(1, math.ceil(q / 100.0 * self.total))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        _, high = self.bucket_bounds(i)
        return float(min(int(high), self.max))

    def mean(self) -> float:
        return self.sum / self.total if self.total else math.nan

    def percentile_curve(self, points: int = 200, max_nines: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """(percentiles, values): the distribution as HdrHistogram plots it, up to ``max_nines`` nines."""
        nines = np.linspace(0.0, max_nines, points)
        qs = 100.0 * (1.0 - 10.0 ** -nines)
        return qs, np.array([self.percentile(q) for q in qs])

    # ------------------------------------------------------------------------------------------ serialization
    def to_state(self) -> dict:
        nz = np.flatnonzero(self.counts)
        return {"bits": self.bits, "max_value": self.max_value, "index": nz.tolist(),
                "counts": self.counts[nz].tolist(), "total": self.total, "sum": self.sum,
                "min": None if self.total == 0 else self.min, "max": self.max}

    @classmethod
    def from_state(cls, state: dict) -> "Histogram":
        h = cls(state["bits"], state["max_value"])
        h.counts[np.asarray(state["index"], dtype=np.int64)] = np.asarray(state["counts"], dtype=np.int64)
        h.total, h.sum, h.max = state["total"], state["sum"], state["max"]
        h.min = math.inf if state["min"] is None else state["min"]
        return h


def latency_ms(h: Histogram) -> dict:
    """Percentiles of a histogram of microseconds, in milliseconds."""
    def ms(v: float) -> float | None:
        return None if math.isnan(v) else round(v / 1000.0, 4)
    return {"count": h.total, "p50": ms(h.percentile(50)), "p90": ms(h.percentile(90)),
            "p99": ms(h.percentile(99)), "p99.9": ms(h.percentile(99.9)),
            "max": ms(float(h.max)) if h.total else None, "mean": ms(h.mean()),
            "min": ms(float(h.min)) if h.total else None}
