"""A latency histogram: fixed log-spaced buckets plus a bounded window of recent samples.

Fixed buckets never grow and export to Prometheus as they are; the window gives exact
recent percentiles. Used by the managers (per process) and by the service.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

# Upper bounds in seconds: 1 us .. ~100 s, 4 buckets per decade.
LATENCY_BUCKETS: tuple[float, ...] = tuple(10 ** (e / 4) * 1e-6 for e in range(33))


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

    def summary(self, with_samples: bool = False) -> dict[str, Any]:
        recent = self.recent
        out: dict[str, Any] = {
            "count": self.count,
            "sum": self.total,
            "mean": self.total / self.count if self.count else None,
        }
        out.update(percentiles(recent))
        out["buckets"] = {f"{b:.6g}": c for b, c in zip((*self.bounds, float("inf")), self.counts, strict=True)}
        if with_samples:
            out["samples"] = recent.tolist()
        return out


def percentiles(samples: np.ndarray | list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of samples (None when there are none)."""
    array = np.asarray(samples, dtype=np.float64)
    if array.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(array.max())}
