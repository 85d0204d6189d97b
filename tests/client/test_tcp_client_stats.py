"""A TCP client has no pid in the service's stats: `embedshare stats`, `embedshare top` and
/metrics show it (as "tcp") instead of failing on it."""

import io
import os
import time

from embedshare.cli.observe import _format_stats
from embedshare.monitor import Rates, render
from embedshare.service.observe import with_memory
from embedshare.util.latency import Histogram


def stats_with_a_tcp_client() -> dict:
    summary = Histogram().summary()
    counters = dict.fromkeys(
        (
            "requests",
            "errors",
            "texts",
            "hits",
            "misses",
            "joined_inflight",
            "model_calls",
            "texts_embedded",
            "queue_depth",
            "max_queue_depth",
        ),
        0,
    )
    return {
        **counters,
        "uptime_s": 5.0,
        "pid": os.getpid(),
        "model_id": "hash:8",
        "dim": 8,
        "store": "/store",
        "tools": 0,
        "http": None,
        "ready": True,
        "request_latency": summary,
        "batch_size": summary,
        "model_call_seconds": summary,
        "clients": [
            {"id": 2, "pid": None, "tcp": "127.0.0.1:50000", "connected": time.time(), "requests": 1},
            {"id": 1, "pid": os.getpid(), "connected": time.time(), "requests": 3},
        ],
    }


def test_memory_is_read_for_the_local_clients_and_none_for_a_tcp_one():
    stats = with_memory(stats_with_a_tcp_client())
    by_id = {client["id"]: client for client in stats["clients"]}
    assert by_id[2]["pss"] is None
    assert by_id[1]["pss"] is not None and by_id[1]["pss"] > 0


def test_embedshare_stats_lists_a_tcp_client():
    text = _format_stats(with_memory(stats_with_a_tcp_client()))
    assert "  pid     tcp  PSS -  requests 1" in text


def test_embedshare_top_lists_a_tcp_client_last():
    from rich.console import Console

    stats = with_memory(stats_with_a_tcp_client())
    console = Console(file=io.StringIO(), width=120)
    console.print(render(stats, Rates.between(None, stats)))
    frame = console.file.getvalue()
    assert frame.index("this command") < frame.index("tcp")


def test_metrics_count_a_tcp_client_s_requests_under_tcp():
    import pytest

    prometheus_client = pytest.importorskip("prometheus_client", reason="the `http` extra is not installed")
    from embedshare.service.observe import metrics_registry

    text = prometheus_client.generate_latest(metrics_registry(with_memory(stats_with_a_tcp_client()))).decode()
    assert 'embedshare_client_requests_total{pid="tcp"} 1.0' in text
