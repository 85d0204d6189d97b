"""A latency histogram: fixed log-spaced buckets plus a bounded window of recent samples.

Fixed buckets never grow and export to Prometheus as they are; the window gives exact
recent percentiles. Used by the managers (per process) and by the service.
"""

from __future__ import annotations

import bisect
from typing import NotRequired, TypedDict

import numpy as np

# Upper bounds in seconds: 1 us .. ~100 s, 4 buckets per decade.
LATENCY_BUCKETS: tuple[float, ...] = tuple(10 ** (e / 4) * 1e-6 for e in range(33))


class Percentiles(TypedDict):
    """Of the recent samples; None when there are none."""

    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class Summary(Percentiles):
    """``Histogram.summary()``: what the service's ``stats`` and a manager's report carry."""

    count: int
    sum: float
    mean: float | None
    buckets: dict[str, int]  # upper bound (``%.6g``, the last ``inf``) -> samples in the bucket
    samples: NotRequired[list[float]]  # with_samples: the recent window, oldest first


class Histogram:
    """Not thread-safe by itself: callers hold their own lock."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS, window: int = 10_000) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0
        # A ring buffer: 80 KB for 10k samples (a deque of Python floats costs 4x that).
        self._window = np.zeros(window, dtype=np.float64)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self._window[self.count % self._window.size] = value
        self.count += 1

    @property
    def recent(self) -> np.ndarray:
        """The most recent samples (up to the window size), oldest first."""
        n, size = self.count, self._window.size
        if n <= size:
            return self._window[:n].copy()
        start = n % size
        return np.concatenate((self._window[start:], self._window[:start]))

    def summary(self, with_samples: bool = False) -> Summary:
        recent = self.recent
        p = percentiles(recent)
        out: Summary = {
            "count": self.count,
            "sum": self.total,
            "mean": self.total / self.count if self.count else None,
            "p50": p["p50"],
            "p90": p["p90"],
            "p99": p["p99"],
            "max": p["max"],
            "buckets": {f"{b:.6g}": c for b, c in zip((*self.bounds, float("inf")), self.counts, strict=True)},
        }
        if with_samples:
            out["samples"] = recent.tolist()
        return out


def percentiles(samples: np.ndarray | list[float]) -> Percentiles:
    """p50, p90, p99 and max of samples (None when there are none)."""
    array = np.asarray(samples, dtype=np.float64)
    if array.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(array.max())}
