"""``GET /metrics``: Prometheus text read from the service's own counters at scrape time.

The numbers must be the service's ``stats()`` (not counters of their own), its latency
histogram must use latency.py's fixed buckets, and memory must be PSS."""

from __future__ import annotations

import os

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from embedshare.latency import LATENCY_BUCKETS
from embedshare.service.client import SharedEmbeddingManager
from embedshare.service.launcher import EmbeddingService
from embedshare.service.observe import ServiceCollector, render_prometheus

pytestmark = pytest.mark.timeout(120)


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of one scrape."""
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def service(tmp_path):
    with EmbeddingService(tmp_path / "store", model="hash:64", registry="bundled", http="127.0.0.1:0",
                          export_env=False, start_timeout=60) as svc:
        yield svc


def test_metrics_are_the_service_s_own_counters(service):
    url = service.http_url
    client = SharedEmbeddingManager(service.address)
    try:
        client.get_embeddings([f"metric text {i}" for i in range(30)])
        client.get_embeddings(["metric text 0", "a new one"])  # one hit in the worker, one miss
        httpx.post(f"{url}/v1/embeddings", json={"model": "hash:64", "input": ["metric text 1", "fresh"]},
                   timeout=30).raise_for_status()
        httpx.post(f"{url}/v1/embeddings", json={"model": "nope", "input": "x"}, timeout=30)
        samples = scrape(url)
        stats = service.stats()
    finally:
        client.close()

    for key, name in [("hits", "embedshare_cache_hits_total"), ("misses", "embedshare_cache_misses_total"),
                      ("texts", "embedshare_texts_total"), ("model_calls", "embedshare_model_calls_total"),
                      ("texts_embedded", "embedshare_texts_embedded_total"),
                      ("embed_requests", "embedshare_embed_requests_total"),
                      ("http_requests", "embedshare_http_requests_total"), ("errors", "embedshare_errors_total")]:
        assert value(samples, name) == stats[key], key
    assert stats["hits"] == 1 and stats["http_requests"] == 2 and stats["errors"] == 1
    assert stats["model_calls"] > stats["startup_model_calls"]  # the index build counts too

    # the latency histogram: latency.py's fixed buckets, cumulative, +Inf = count
    latency = samples["embedshare_request_latency_seconds_bucket"]
    bounds = [floatToGoString(float(f"{b:.6g}")) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert sorted(dict(k)["le"] for k in latency) == sorted(bounds)
    counts = [latency[(("le", le),)] for le in bounds]
    assert counts == sorted(counts)
    assert counts[-1] == value(samples, "embedshare_request_latency_seconds_count") == stats["request_latency"]["count"]
    assert value(samples, "embedshare_request_latency_seconds_sum") == pytest.approx(stats["request_latency"]["sum"])
    assert value(samples, "embedshare_batch_size_texts_count") == stats["batch_size"]["count"]
    assert value(samples, "embedshare_batch_size_texts_sum") == stats["batch_size"]["sum"]

    # queue, clients (this process, while connected), memory as PSS
    assert value(samples, "embedshare_queue_depth") == 0
    assert value(samples, "embedshare_clients") == 1
    assert value(samples, "embedshare_client_pss_bytes", pid=str(os.getpid())) > 1e6
    assert value(samples, "embedshare_process_pss_bytes") > 1e6
    assert value(samples, "embedshare_tools") == stats["tools"] > 0
    info = samples["embedshare_service_info"]
    (labels,) = info
    assert dict(labels)["model_id"] == "hash:64:v1" and dict(labels)["pid"] == str(service.pid)


def test_a_scrape_moves_no_counter(service):
    first = scrape(service.http_url)
    second = scrape(service.http_url)
    assert value(first, "embedshare_requests_total") == value(second, "embedshare_requests_total")
    assert value(first, "embedshare_request_latency_seconds_count") == \
        value(second, "embedshare_request_latency_seconds_count")


def test_the_collector_reads_the_snapshot_at_each_collect():
    calls = []

    def snapshot():
        calls.append(1)
        histogram = {"count": len(calls), "sum": 0.5 * len(calls), "mean": 0.5,
                     "buckets": {"0.1": 0, "1": len(calls), "inf": 0}}
        return {"pid": os.getpid(), "model_id": "m", "dim": 8, "store": "/s", "requests": 10 * len(calls),
                "request_latency": histogram, "batch_size": histogram, "model_call_seconds": histogram,
                "queue_depth": 0, "max_queue_depth": 0, "clients": [], "uptime_s": 1.0, "tools": 0}

    collector = ServiceCollector(snapshot, memory=False)
    for expected in (10.0, 20.0):
        families = {f.name: f for f in collector.collect()}
        assert families["embedshare_requests"].samples[0].value == expected
    text = render_prometheus(snapshot()).decode()
    assert "embedshare_requests_total 30.0" in text
    assert 'embedshare_request_latency_seconds_bucket{le="1.0"} 3.0' in text
    assert "process_cpu_seconds_total" in text  # the standard process metrics ride along
