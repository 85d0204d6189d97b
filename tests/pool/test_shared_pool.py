"""SharedPool: workers attach to one service; results in order; crashes lose no task;
per-worker memory stays small (PSS, against a bare worker measured in the same run)."""

from __future__ import annotations

import pytest
from helpers.extras import requires
from helpers.spawned import pool_jobs

from embedshare.bench.demo import make_tasks, run_demo
from embedshare.manager import EmbeddingManager
from embedshare.pool.shared import SharedPool
from embedshare.registry import field_texts, load_registry

QUERIES = [f"query {i % 37} about reading files and sending requests" for i in range(120)]


@pytest.fixture
def reference(tmp_path):
    local = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    return {q: (local.get_embedding(q).tobytes(), [r.name for r in local.search(q, k=3)]) for q in set(QUERIES)}


def _check(results, queries, reference):
    assert [r["query"] for r in results] == queries  # in order, none lost
    for r in results:
        assert (r["vector"], r["top"]) == reference[r["query"]]
        assert r["mode"] == "shared"


def test_results_in_order_and_equal_to_a_local_manager(store, reference):
    with SharedPool(workers=4, store=store, model="hash:64", progress=False) as pool:
        results = pool.map(pool_jobs.search_task, QUERIES)
    _check(results, QUERIES, reference)
    report = pool.report
    assert report.failed == 0 and report.tasks == len(QUERIES)
    roles = {m.role for m in report.memory}
    assert roles == {"service", "forkserver", "worker", "parent"}
    assert all(m.pss for m in report.memory)
    assert len(report.worker_stats) == 4
    # every distinct text embedded exactly once over the run: the index's field texts, then
    # the queries (workers miss them concurrently; the service computes each once)
    index_texts = {t for tool in load_registry("bundled").tools for t in field_texts(tool).values()}
    assert report.texts_embedded() == len(index_texts) + len(set(QUERIES))
    assert report.count("misses") >= len(set(QUERIES))
    assert "memory (PSS" in report.format()


@pytest.mark.slow
def test_25_workers_each_cost_under_5_mb_beyond_a_bare_worker(store):
    with SharedPool(workers=25, store=store, model="hash:64", progress=False) as pool:
        pool.map(pool_jobs.search_task, QUERIES * 2)
    report = pool.report
    workers = [m.pss for m in report.memory if m.role == "worker"]
    assert len(workers) == 25
    extra_mb = [(pss - report.bare_interpreter_pss) / 2**20 for pss in workers]
    assert max(extra_mb) < 5.0, f"per-worker PSS beyond a bare worker: {sorted(extra_mb)}"


@requires("bench", "threadpoolctl")  # what the workers' BLAS really uses
def test_workers_share_the_cores_blas_threads_and_a_user_setting_wins(store, monkeypatch):
    """25 workers on a few cores must not each start a BLAS thread per core (they would wait
    for each other in every large search); a setting the user made is kept."""
    import os

    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    workers = 3
    with SharedPool(workers=workers, store=store, model="hash:64", progress=False) as pool:
        seen = pool.map(pool_jobs.blas_threads, range(workers))
    expected = str(max(1, os.cpu_count() // workers))
    for worker in seen:
        assert worker["env"] == {"OPENBLAS_NUM_THREADS": expected, "OMP_NUM_THREADS": expected, "MKL_NUM_THREADS": "7"}
        assert worker["blas"] == [int(expected)]


def test_an_attached_worker_loads_neither_logging_nor_concurrent_futures(store):
    """Each costs every worker memory (logging ~1 MB with what it pulls in) and a worker that
    reads hits and sends misses logs nothing: they load only when something is logged."""
    with SharedPool(workers=1, store=store, model="hash:64", progress=False) as pool:
        pool.map(pool_jobs.search_task, QUERIES[:5])
        (modules,) = pool.map(pool_jobs.loaded_modules, [None])
    assert "embedshare.sources.service" in modules
    assert "logging" not in modules and "concurrent.futures" not in modules


def test_a_task_past_task_timeout_fails_alone_and_the_run_finishes(store):
    from embedshare.pool.outcomes import TaskFailed

    queries = [*QUERIES[:6], "hang", *QUERIES[6:12]]
    with SharedPool(workers=2, store=store, model="hash:64", progress=False, task_timeout=2.0, max_retries=0) as pool:
        with pytest.raises(TaskFailed) as failed:
            pool.map(pool_jobs.hang_forever_on, [(q, "hang") for q in queries])
        (stuck,) = failed.value.failures
        assert stuck.index == 6 and stuck.error_type == "TaskTimedOut"
        assert [o.value.value for o in pool.outcomes if o.ok] == QUERIES[:12]
        assert pool.map(pool_jobs.search_task, QUERIES[:3])[0]["mode"] == "shared"  # still whole


def test_a_killed_worker_s_task_is_retried_and_nothing_is_lost(store, reference, tmp_path):
    queries = [*QUERIES[:40], "crash one", "crash two", *QUERIES[40:60]]
    reference.update(dict.fromkeys(("crash one", "crash two")))
    with SharedPool(workers=3, store=store, model="hash:64", progress=False) as pool:
        results = pool.map(pool_jobs.crash_once_then_search, [(q, str(tmp_path)) for q in queries])
    assert [r["query"] for r in results] == queries
    assert len(pool.report.crashes) == 2
    assert {c.signal for c in pool.report.crashes} == {"SIGKILL"}
    crashed = [o for o in pool.outcomes if o.attempts > 1]
    assert sorted(queries[o.index] for o in crashed) == ["crash one", "crash two"]
    for r in results:
        if reference.get(r["query"]):
            assert (r["vector"], r["top"]) == reference[r["query"]]


@pytest.mark.slow
def test_the_service_killed_mid_run_loses_no_task(store, reference, tmp_path):
    queries = QUERIES[:50] + ["kill the service"] + [f"new text after the kill {i}" for i in range(50)]
    with SharedPool(workers=4, store=store, model="hash:64", progress=False) as pool:
        first_pid = pool.service.pid
        results = pool.map(pool_jobs.kill_service_once_then_search, [(q, str(tmp_path)) for q in queries])
        restarted = pool.service.stats()
    assert (tmp_path / "service.killed").read_text() == str(first_pid)
    assert [r["query"] for r in results] == queries
    assert restarted["pid"] != first_pid
    assert sum(s["restarts"] for s in pool.report.worker_stats) >= 1
    local = EmbeddingManager(tmp_path / "after", model="hash:64", registry="bundled")
    for r in results:
        assert r["vector"] == local.get_embedding(r["query"]).tobytes()
        assert r["top"] == [x.name for x in local.search(r["query"], k=3)]


def test_workload_has_the_user_s_shape():
    tasks = make_tasks(2000)
    searches = [q for t in tasks for q in t["searches"]]
    similar = [n for t in tasks for n in t["similar"]]
    assert 1.7 <= len(searches) / len(tasks) <= 2.1
    assert 2.1 <= len(similar) / len(tasks) <= 2.5
    counts = sorted((searches.count(q) for q in set(searches)), reverse=True)
    assert 0.5 <= sum(counts[:10]) / len(searches) <= 0.7
    singles = sum(1 for c in counts if c == 1) / len(searches)
    assert 0.03 <= singles <= 0.08
    assert make_tasks(50) == make_tasks(50)  # reproducible


def test_demo_measures_both_designs_in_one_run(store):
    result = run_demo(workers=3, tasks=60, model="hash:64", store=store, progress=False)
    shared, naive = result.shared.as_dict(), result.naive.as_dict()
    assert result.agreement == 1.0  # the same model and registry give the same answers
    assert shared["failed"] == naive["failed"] == 0
    # every naive worker embeds the whole registry and its own queries again
    assert naive["texts_embedded"] > 2 * shared["texts_embedded"]
    assert "per-process managers" in result.format()


@pytest.mark.model
@pytest.mark.slow
def test_with_the_local_model_workers_stay_small_and_the_model_lives_once(store):
    with SharedPool(workers=4, store=store, model="local", progress=False) as pool:
        results = pool.map(pool_jobs.search_task, QUERIES[:40])
    assert [r["query"] for r in results] == QUERIES[:40]
    report = pool.report
    service = next(m.pss for m in report.memory if m.role == "service")
    extra_mb = [(m.pss - report.bare_interpreter_pss) / 2**20 for m in report.memory if m.role == "worker"]
    # A model in a worker would be +100 MB (ONNX Runtime) or +400 MB (torch). The client's own modules
    # and data are ~5 MB here: with 4 workers each one carries a fifth of the shared index and cache
    # pages, not a 26th.
    assert max(extra_mb) < 6.5, f"per-worker PSS beyond a bare worker: {sorted(extra_mb)}"
    assert service > 100 * 2**20  # the model (ONNX Runtime and 90 MB of weights) is in the service, only there
