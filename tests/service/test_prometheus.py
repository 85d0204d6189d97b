"""``GET /metrics``, ``/health``, ``/ready``: Prometheus text read from the service's own
counters at scrape time, served by prometheus-client's ASGI app, from the first second.

The numbers must be the service's ``stats()`` (not counters of their own), its latency
histogram must use latency.py's fixed buckets, and memory must be PSS. While the model loads
(a deliberately gated load), /health and /metrics answer and /ready says 503."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.extras import skip_module_unless
from helpers.processes import SPAWNED, stop_process

from embedshare.access import SharedEmbeddingManager
from embedshare.service.launcher import EmbeddingService
from embedshare.service.observe import ServiceCollector, metrics_registry
from embedshare.util.latency import LATENCY_BUCKETS

skip_module_unless("http")  # the endpoint and prometheus-client
skip_module_unless("dev", "httpx")  # the scraper here

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

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
def service(make_service) -> EmbeddingService:
    return make_service(http="127.0.0.1:0", export_env=False)


def test_metrics_are_the_service_s_own_counters(service):
    url = service.http_url
    client = SharedEmbeddingManager(service.address)
    try:
        client.get_embeddings([f"metric text {i}" for i in range(30)])
        client.get_embeddings(["metric text 0", "a new one"])  # one hit in the worker, one miss
        httpx.post(
            f"{url}/v1/embeddings", json={"model": "hash:64", "input": ["metric text 1", "fresh"]}, timeout=30
        ).raise_for_status()
        httpx.post(f"{url}/v1/embeddings", json={"model": "nope", "input": "x"}, timeout=30)
        samples = scrape(url)
        stats = service.stats()
    finally:
        client.close()

    for key, name in [
        ("hits", "embedshare_cache_hits_total"),
        ("misses", "embedshare_cache_misses_total"),
        ("texts", "embedshare_texts_total"),
        ("model_calls", "embedshare_model_calls_total"),
        ("texts_embedded", "embedshare_texts_embedded_total"),
        ("embed_requests", "embedshare_embed_requests_total"),
        ("http_requests", "embedshare_http_requests_total"),
        ("errors", "embedshare_errors_total"),
    ]:
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
    assert value(samples, "embedshare_ready") == 1
    assert value(samples, "embedshare_auth_failures_total") == stats["auth_failures"] == 0
    # one series per client process, none per connection (a serial number would grow forever)
    per_client = samples["embedshare_client_requests_total"]
    assert list(per_client) == [(("pid", str(os.getpid())),)]
    assert per_client[(("pid", str(os.getpid())),)] >= 3  # hello and two embeds
    # the conventional uptime: the default process collector's start time, not a gauge of ours
    assert abs(value(samples, "process_start_time_seconds") - (time.time() - stats["uptime_s"])) < 5
    assert "embedshare_uptime_seconds" not in samples
    info = samples["embedshare_service_info"]
    (labels,) = info
    assert dict(labels)["model_id"] == "hash:64:v1" and dict(labels)["pid"] == str(service.pid)


def test_a_scrape_moves_no_counter(service):
    first = scrape(service.http_url)
    second = scrape(service.http_url)
    assert value(first, "embedshare_requests_total") == value(second, "embedshare_requests_total")
    assert value(first, "embedshare_request_latency_seconds_count") == value(
        second, "embedshare_request_latency_seconds_count"
    )


def test_the_collector_reads_the_snapshot_at_each_collect():
    calls = []

    def snapshot():
        calls.append(1)
        histogram = {
            "count": len(calls),
            "sum": 0.5 * len(calls),
            "mean": 0.5,
            "buckets": {"0.1": 0, "1": len(calls), "inf": 0},
        }
        return {
            "pid": os.getpid(),
            "model_id": "m",
            "dim": 8,
            "store": "/s",
            "requests": 10 * len(calls),
            "request_latency": histogram,
            "batch_size": histogram,
            "model_call_seconds": histogram,
            "queue_depth": 0,
            "max_queue_depth": 0,
            "clients": [],
            "uptime_s": 1.0,
            "tools": 0,
        }

    collector = ServiceCollector(snapshot, memory=False)
    for expected in (10.0, 20.0):
        families = {f.name: f for f in collector.collect()}
        assert families["embedshare_requests"].samples[0].value == expected
    from prometheus_client import generate_latest

    text = generate_latest(metrics_registry(snapshot())).decode()
    assert "embedshare_requests_total 30.0" in text
    assert 'embedshare_request_latency_seconds_bucket{le="1.0"} 3.0' in text
    assert "process_cpu_seconds_total" in text  # the standard process metrics ride along


def test_openmetrics_and_gzip_are_negotiated(service):
    url = f"{service.http_url}/metrics"
    response = httpx.get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}, timeout=30)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(response.text)}
    assert {"embedshare_requests", "embedshare_request_latency_seconds", "process_start_time_seconds"} <= names
    raw = httpx.get(url, headers={"Accept-Encoding": "gzip"}, timeout=30)  # httpx decodes it ...
    assert raw.headers["content-encoding"] == "gzip"
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip"}, timeout=30) as stream:
        body = b"".join(stream.iter_raw())  # ... so read the bytes on the wire too
    assert b"embedshare_requests_total" in gzip.decompress(body)
    assert httpx.post(url, timeout=30).status_code == 405


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("process_open_fds", "embedshare_requests_total"),
        ("embedshare_requests_total", "process_open_fds"),
        ("embedshare_request_latency_seconds_bucket", "embedshare_clients"),
    ],
)
def test_metrics_filtered_by_name_return_that_metric_only(service, name, other):
    """prometheus-client filters by the names a collector describes: each must be known."""
    response = httpx.get(f"{service.http_url}/metrics", params={"name[]": name}, timeout=30)
    assert response.status_code == 200
    names = {s.name for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert name in names
    assert other not in names


def test_health_and_ready_of_a_running_service(service):
    health = httpx.get(f"{service.http_url}/health", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok", "pid": service.pid}
    ready = httpx.get(f"{service.http_url}/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model_id": "hash:64:v1"}


def _endpoint_url(process: subprocess.Popen, deadline: float) -> str:
    """The endpoint's URL from the service's own log line (port 0 picks it)."""
    assert process.stderr is not None
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "HTTP endpoint on " in line:
            return line.split("HTTP endpoint on ", 1)[1].split("/v1", 1)[0]
    raise AssertionError(f"no endpoint line from the service: {seen}")


def test_health_and_metrics_answer_while_the_model_loads(tmp_path, wait_for):
    """The model's load is held on a FIFO: every probe must answer within 1 s meanwhile."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    helper = SPAWNED / "slow_load_server.py"
    process = subprocess.Popen(
        [
            sys.executable,
            str(helper),
            "--gate",
            str(gate),
            "--store",
            str(tmp_path / "store"),
            "--model",
            "hash:64",
            "--registry",
            "bundled",
            "--http",
            "127.0.0.1:0",
            "-v",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _endpoint_url(process, time.monotonic() + 60)
        with httpx.Client(base_url=url, timeout=1.0) as http:  # a probe slower than 1 s fails
            assert http.get("/health").json()["status"] == "ok"
            loading = http.get("/ready")
            assert loading.status_code == 503 and loading.json() == {"status": "loading", "model": "hash:64"}
            scrape = http.get("/metrics")
            assert scrape.status_code == 200
            samples = {s.name: s.value for f in text_string_to_metric_families(scrape.text) for s in f.samples}
            assert samples["embedshare_ready"] == 0 and samples["embedshare_tools"] == 0
            assert "process_start_time_seconds" in samples
            with open(gate, "w") as fifo:  # let the model finish loading
                fifo.write("go\n")
            wait_for(
                lambda: http.get("/ready").status_code == 200,
                60,
                "the service to be ready (the index is built after the load)",
            )
            scrape = http.get("/metrics")
            samples = {s.name: s.value for f in text_string_to_metric_families(scrape.text) for s in f.samples}
            assert samples["embedshare_ready"] == 1 and samples["embedshare_tools"] > 0
    finally:
        _release(gate)  # a failed assertion above may leave the load held: let it end first
        stop_process(process)
        process.stderr.close()


def _release(gate: Path) -> None:
    """Let a held load finish; a no-op once the service has read the gate (no reader: ENXIO)."""
    try:
        fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)


@pytest.mark.model
@pytest.mark.slow
def test_metrics_answer_while_the_local_model_loads(tmp_path):
    """The real case: all-MiniLM-L6-v2 loads for 15 s or more, in a thread of the service.

    Each probe must answer well inside Prometheus's default 10 s scrape timeout (5 s, even on
    2 cores shared by a whole suite), and half of them within 1 s; before, every scrape waited
    for the whole load."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedshare.service",
            "--store",
            str(tmp_path / "store"),
            "--model",
            "local",
            "--http",
            "127.0.0.1:0",
            "-v",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _endpoint_url(process, time.monotonic() + 60)
        took: list[float] = []
        deadline = time.monotonic() + 170
        with httpx.Client(base_url=url, timeout=5.0) as http:
            while http.get("/ready").status_code == 503:
                assert time.monotonic() < deadline, "the model never finished loading"
                assert http.get("/health").status_code == 200
                started = time.monotonic()
                text = http.get("/metrics").text
                took.append(time.monotonic() - started)
                ready = [
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "embedshare_ready"
                ]
                assert ready == [0.0] or http.get("/ready").status_code == 200
        assert took, "no scrape while the model loaded"
        assert sorted(took)[len(took) // 2] < 1.0
    finally:
        stop_process(process)
        process.stderr.close()
