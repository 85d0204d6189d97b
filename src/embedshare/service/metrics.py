"""Counters and latency histograms for the service's ``stats``."""

from __future__ import annotations

import threading
import time
from typing import cast

from ..client.protocol import MetricsSnapshot
from ..util.latency import Histogram


class ServiceMetrics:
    """Everything the service counts. Thread-safe (the loop and the model thread update it)."""

    def __init__(self) -> None:
        self.started = time.time()
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {
            "requests": 0,
            "errors": 0,
            "embed_requests": 0,
            "texts": 0,
            "hits": 0,
            "misses": 0,
            "joined_inflight": 0,
            "model_calls": 0,
            "texts_embedded": 0,
            "cache_write_failures": 0,
            "connections_total": 0,
            "refused_peers": 0,
            "auth_failures": 0,
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

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            snapshot = {
                "uptime_s": time.time() - self.started,
                **self.counters,
                "queue_depth": self.queue_depth,
                "max_queue_depth": self.max_queue_depth,
                "request_latency": self.request_latency.summary(),
                "batch_size": self.batch_sizes.summary(),
                "model_call_seconds": self.model_seconds.summary(),
            }
        # The counters' names are MetricsSnapshot's: those of __init__, and add()'s callers'.
        return cast(MetricsSnapshot, snapshot)
