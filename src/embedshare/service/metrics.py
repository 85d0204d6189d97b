"""Counters and a latency histogram for the service's ``stats``.

A fixed, log-spaced histogram (no per-request growth, cheap to export to Prometheus) plus a
bounded window of recent latencies for exact recent percentiles.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Any

import numpy as np

# Upper bounds in seconds: 10 us .. ~100 s, 4 buckets per decade.
LATENCY_BUCKETS: tuple[float, ...] = tuple(10 ** (e / 4) * 1e-5 for e in range(29))


class Histogram:
    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS, window: int = 10_000) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
        self.recent.append(value)

    def summary(self) -> dict[str, Any]:
        recent = np.fromiter(self.recent, dtype=np.float64) if self.recent else None
        pct = (lambda q: float(np.percentile(recent, q))) if recent is not None else (lambda q: None)
        return {
            "count": self.count,
            "mean_s": self.total / self.count if self.count else None,
            "p50_s": pct(50),
            "p90_s": pct(90),
            "p99_s": pct(99),
            "max_recent_s": float(recent.max()) if recent is not None else None,
            "buckets": {f"{b:.6g}": c for b, c in zip(self.bounds + (float("inf"),), self.counts)},
        }


class ServiceMetrics:
    """Everything the service counts. Thread-safe (the loop and the model thread update it)."""

    def __init__(self) -> None:
        self.started = time.time()
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {
            "requests": 0, "errors": 0, "embed_requests": 0, "texts": 0, "hits": 0,
            "misses": 0, "joined_inflight": 0, "model_calls": 0, "texts_embedded": 0,
            "cache_write_failures": 0, "connections_total": 0, "refused_peers": 0,
        }
        self.request_latency = Histogram()
        self.batch_sizes = Histogram(bounds=tuple(float(2**i) for i in range(14)))
        self.model_seconds = Histogram()
        self.queue_depth = 0
        self.max_queue_depth = 0

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self.counters[name] = self.counters.get(name, 0) + amount

    def observe_request(self, seconds: float) -> None:
        with self._lock:
            self.request_latency.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes.observe(float(size))
            self.model_seconds.observe(seconds)
            self.counters["model_calls"] += 1
            self.counters["texts_embedded"] += size

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth = depth
        self.max_queue_depth = max(self.max_queue_depth, depth)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": time.time() - self.started,
                **self.counters,
                "queue_depth": self.queue_depth,
                "max_queue_depth": self.max_queue_depth,
                "request_latency": self.request_latency.summary(),
                "batch_size": self.batch_sizes.summary(),
                "model_call_seconds": self.model_seconds.summary(),
            }
