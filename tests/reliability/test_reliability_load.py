"""Load and soak (issue #5): 25 worker processes with 8 threads each call the manager for a bounded
time (``EMBEDSHARE_SOAK_SECONDS``, 60 by default; set it higher for a longer soak), mixing cache
hits, misses, searches and find_similar_tools. No call may fail or return a wrong vector, p99
latency is bounded (generously: the machine is shared) and reported, and the service's memory
must not grow after warm-up.

Memory: the service's RSS includes the pages of the cache file it maps, and the cache grows with
every miss (that is data, not a leak), so the growth bound is on its anonymous RSS (the heap:
what a leak grows). RSS and PSS are reported beside it.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import pytest
from helpers.figures import record
from helpers.processes import memory_of
from helpers.spawned import reliability_tasks

from embedshare.pool.shared import SharedPool

SOAK_SECONDS = float(os.environ.get("EMBEDSHARE_SOAK_SECONDS", "60"))
WORKERS, THREADS = 25, 8
THINK_SECONDS = 0.010  # a task's own work between two calls, on average (0-20 ms)
P99_BOUND = 5.0  # seconds; generous: 200 threads and the service share 2 noisy cores
GROWTH_BOUND = 0.05


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_SECONDS) + 300)
def test_25_workers_x_8_threads_sustained_load_no_errors_bounded_latency_no_growth(store, tmp_path):
    started_dir = tmp_path / "started"
    started_dir.mkdir()
    samples: list[tuple[float, dict[str, int]]] = []
    first_done = threading.Event()
    load_started = [0.0]

    with SharedPool(
        workers=WORKERS, store=store, model="hash:64", progress=False, preload=reliability_tasks.COMMON_TEXTS
    ) as pool:
        service_pid = pool.service.pid

        def sample() -> None:
            """Measure the service's memory once a second while every worker is under load."""
            while len(os.listdir(started_dir)) < WORKERS and not first_done.is_set():
                time.sleep(0.05)
            load_started[0] = time.monotonic()
            while not first_done.is_set():
                samples.append((time.monotonic() - load_started[0], memory_of(service_pid)))
                first_done.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        args = [(w, SOAK_SECONDS, THREADS, 7, str(started_dir), THINK_SECONDS) for w in range(WORKERS)]
        results = pool.map(reliability_tasks.soak_task, args, on_result=lambda i, o: first_done.set())
        sampler.join(30)
        stats = pool.service.stats()

    errors = [e for r in results for e in r["errors"]]
    error_count = sum(r["error_count"] for r in results)
    assert error_count == 0, f"{error_count} errors; first: {errors[:2]}"
    assert stats["errors"] == 0 and stats["pid"] == service_pid
    assert len({r["pid"] for r in results}) == WORKERS

    kinds = reliability_tasks.KINDS
    merged = {k: [sum(c) for c in zip(*(r["histograms"][k] for r in results), strict=True)] for k in kinds}
    everything = [sum(c) for c in zip(*merged.values(), strict=True)]
    counts = {k: sum(merged[k]) for k in kinds}
    p99 = reliability_tasks.percentile_of(everything, 99)
    worst = max(max(r["max"].values()) for r in results)
    assert all(counts[k] > 0 for k in kinds)
    assert p99 < P99_BOUND, f"p99 {p99:.3f} s"
    assert worst < 60, f"a call took {worst:.1f} s"

    # memory: a baseline after warm-up (a third of the run, at most 20 s), against the end
    assert samples, "no memory sample was taken"
    duration = samples[-1][0]
    warmup = min(20.0, duration / 3)
    base = [m for t, m in samples if warmup <= t <= warmup + 5] or [samples[0][1]]
    end = [m for _, m in samples[-5:]]
    median = lambda ms, key: statistics.median(m[key] for m in ms)
    growth = {key: (median(end, key) - median(base, key)) / median(base, key) for key in ("rss_anon", "rss", "pss")}
    mb = lambda ms, key: round(median(ms, key) / 2**20, 1)
    figures = {
        "workers": WORKERS,
        "threads_per_worker": THREADS,
        "seconds": round(duration, 1),
        "think_ms": THINK_SECONDS * 1e3,
        "calls": counts,
        "calls_per_second": round(sum(counts.values()) / max(duration, 1), 0),
        "p50_ms": {k: round(reliability_tasks.percentile_of(merged[k], 50) * 1e3, 3) for k in kinds},
        "p99_ms": {k: round(reliability_tasks.percentile_of(merged[k], 99) * 1e3, 3) for k in kinds},
        "p99_all_ms": round(p99 * 1e3, 3),
        "max_ms": round(worst * 1e3, 1),
        "service_requests": stats["requests"],
        "service_texts_embedded": stats["texts_embedded"],
        "service_mean_batch": stats["batch_size"]["mean"],
        "errors": error_count,
        "memory_mb": {
            "after_warmup": {k: mb(base, k) for k in ("rss", "rss_anon", "pss")},
            "end": {k: mb(end, k) for k in ("rss", "rss_anon", "pss")},
        },
        "growth_percent": {k: round(v * 100, 2) for k, v in growth.items()},
        "warmup_s": round(warmup, 1),
        "memory_samples": len(samples),
    }
    record("soak", **figures)
    assert growth["rss_anon"] < GROWTH_BOUND, f"the service's heap grew {growth['rss_anon']:.1%}: {figures}"
