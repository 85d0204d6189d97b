"""What the service looks like from outside: memory (PSS) of it and its clients, and the
Prometheus exposition of its counters.

Nothing here counts anything. The Prometheus collector reads the ``stats()`` snapshot the
service already keeps (``ServiceMetrics`` plus its clients) at scrape time, so the numbers of
``/metrics``, ``embedshare stats`` and ``embedshare top`` are the same numbers. The process's
start time, CPU, memory and file descriptors come from prometheus-client's own
``ProcessCollector`` (``process_start_time_seconds`` is the conventional uptime).

prometheus-client is imported only when metrics are rendered (the ``http`` extra); the PSS
helpers need psutil only (a core dependency).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..client.protocol import ClientMemory, StatsReply, StatsWithMemory
from ..util.pss import pss_bytes

if TYPE_CHECKING:  # util.latency imports numpy, which `embedshare stats` and `top` need not load
    from ..util.latency import Summary

# Counters of the stats snapshot -> (Prometheus name without _total, help).
COUNTERS: dict[str, tuple[str, str]] = {
    "requests": ("embedshare_requests", "Requests answered, socket and HTTP (metric scrapes excluded)."),
    "http_requests": ("embedshare_http_requests", "Requests answered on the HTTP endpoint."),
    "errors": ("embedshare_errors", "Requests answered with an error."),
    "embed_requests": ("embedshare_embed_requests", "Embed and preload requests."),
    "texts": ("embedshare_texts", "Texts asked for in embed and preload requests."),
    "hits": ("embedshare_cache_hits", "Texts the service found in the cache."),
    "misses": ("embedshare_cache_misses", "Texts the service did not find in the cache."),
    "joined_inflight": (
        "embedshare_joined_inflight",
        "Texts that joined one already queued or computing (single-flight).",
    ),
    "model_calls": (
        "embedshare_model_calls",
        "Calls to the model, the service's own index build and preload included.",
    ),
    "texts_embedded": ("embedshare_texts_embedded", "Texts the model embedded."),
    "cache_write_failures": ("embedshare_cache_write_failures", "Batches whose vectors could not be cached."),
    "corrupt_vectors": (
        "embedshare_corrupt_vectors",
        "Cached vectors that failed their checksum, recomputed and replaced.",
    ),
    "old_format_vectors": (
        "embedshare_old_format_vectors",
        "Cached vectors without a checksum (older format), replaced.",
    ),
    "connections_total": ("embedshare_connections", "Socket connections accepted."),
    "refused_peers": ("embedshare_refused_peers", "Socket connections refused (another uid)."),
    "auth_failures": ("embedshare_auth_failures", "Connections refused for a missing or wrong token."),
}

HISTOGRAMS: dict[str, tuple[str, str]] = {
    "request_latency": ("embedshare_request_latency_seconds", "Time to answer a request, in seconds."),
    "batch_size": ("embedshare_batch_size_texts", "Texts per model call of the batcher."),
    "model_call_seconds": ("embedshare_model_call_seconds", "Duration of the batcher's model calls, in seconds."),
}


def with_memory(stats: StatsReply | StatsWithMemory) -> StatsWithMemory:
    """``stats`` with ``pss`` (bytes or None) for the service and for every client.

    Read where this runs: the service's clients are processes of this machine and this user,
    so a CLI next to the service reads their ``/proc`` as well as the service would, and the
    service's event loop is not held up by it. A TCP client has no pid here: its ``pss`` is None.
    """
    clients: list[ClientMemory] = [
        {**client, "pss": pss_bytes(client["pid"]) if client["pid"] is not None else None}
        for client in stats.get("clients", [])
    ]
    return {**stats, "pss": pss_bytes(stats["pid"]), "clients": clients}


def _bucket_pairs(summary: Summary) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from a latency.Histogram summary (its fixed buckets)."""
    from prometheus_client.utils import floatToGoString

    bounds = sorted((float(le), count) for le, count in summary["buckets"].items())
    pairs, running = [], 0
    for bound, count in bounds:
        running += count
        pairs.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]  # unannotated upstream
    return pairs


class ServiceCollector:
    """A prometheus-client collector over a function that returns the service's ``stats()``.

    ``collect()`` calls it on every scrape. ``memory``: read the PSS gauges then
    (``with_memory``); a snapshot that already carries ``pss`` gets them either way.
    """

    def __init__(self, snapshot: Callable[[], StatsReply | StatsWithMemory], memory: bool = True) -> None:
        self._snapshot = snapshot
        self._memory = memory

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        snapshot = self._snapshot()
        # Read by the names of the tables above, with or without the memory gauges' ``pss``.
        stats: Mapping[str, Any] = with_memory(snapshot) if self._memory else snapshot
        info = InfoMetricFamily("embedshare_service", "The service: model, dimension, store, pid.")
        info.add_metric(
            [],
            {
                "model_id": str(stats["model_id"]),
                "dim": str(stats["dim"] or ""),
                "store": str(stats["store"]),
                "pid": str(stats["pid"]),
            },
        )
        yield info
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(stats.get(key, 0)))
        for key, (name, doc) in HISTOGRAMS.items():
            summary: Summary = stats[key]
            total = summary.get("sum")
            if total is None:
                total = (summary.get("mean") or 0.0) * summary["count"]
            yield HistogramMetricFamily(name, doc, buckets=_bucket_pairs(summary), sum_value=float(total))
        gauges = {
            "embedshare_queue_depth": ("Texts waiting for the model now.", stats["queue_depth"]),
            "embedshare_queue_depth_max": ("Most texts ever waiting for the model.", stats["max_queue_depth"]),
            "embedshare_clients": ("Connected socket clients.", len(stats["clients"])),
            "embedshare_ready": (
                "1 once the model and index are loaded, 0 while they load.",
                1.0 if stats.get("ready") else 0.0,
            ),
            "embedshare_tools": ("Tools in the service's index.", stats.get("tools") or 0),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))
        if "pss" in stats:  # read here (memory=True) or by the caller, off the event loop
            if stats.get("pss") is not None:
                yield GaugeMetricFamily(
                    "embedshare_process_pss_bytes", "PSS of the service process.", value=float(stats["pss"])
                )
            pss = GaugeMetricFamily(
                "embedshare_client_pss_bytes", "PSS of each connected client process.", labels=["pid"]
            )
            for client in stats["clients"]:
                if client.get("pss") is not None:
                    pss.add_metric([str(client["pid"])], float(client["pss"]))
            yield pss
        # By process, not by connection: a connection's serial number would make a new series
        # at every reconnect. TCP peers have no pid here and are counted together.
        by_pid: dict[str, float] = {}
        for client in stats["clients"]:
            pid = "tcp" if client.get("pid") is None else str(client["pid"])
            by_pid[pid] = by_pid.get(pid, 0.0) + float(client["requests"])
        requests = CounterMetricFamily(
            "embedshare_client_requests", "Requests of each connected client process.", labels=["pid"]
        )
        for pid, count in by_pid.items():
            requests.add_metric([pid], count)
        yield requests


def metrics_registry(stats: StatsReply | StatsWithMemory) -> Any:
    """A prometheus-client registry over one stats snapshot (PSS already read, if wanted),
    plus the standard ``process_*`` metrics."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    # auto_describe: registering collects once to learn each collector's names, which is what
    # /metrics?name[]=... filters by (without it every filtered scrape was empty). A collect is
    # a read of this snapshot and of /proc/self: cheap, once a scrape.
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServiceCollector(lambda: stats, memory=False))
    ProcessCollector(registry=registry)
    return registry
