"""One benchmark case (a design, a model, a number of workers), run in a fresh process.

``python -m embedshare.bench.case SPEC.json OUT.json``. Each case runs in its own interpreter
so that nothing one design loaded (torch, a Manager, a service) is in memory for the next,
and the PSS of the case's main process is its own.

Phases, all in this one process and its children:

1. start the design (service, Manager, index build, workers); ``startup`` ends when every
   worker is ready;
2. the task set (``bench/workload.py``: the user's searches and find_similar_tools); wall time,
   time to the first result; then the counters (model calls, texts) and PSS of every process;
3. cache hits: ``get_embedding`` of cached texts, timed call by call in every worker;
4. misses: every worker sends distinct new texts one ``get_embedding`` at a time for a few
   seconds; throughput = texts answered / time.

The ``model-alone`` case, the model by itself, is ``model_alone.py``.

Top-level imports are the standard library only: spawned workers import this module as
their ``__main__``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a case imports what its design needs, in its own process
    from ..client.protocol import StatsReply

# Workers that run a model of their own get one BLAS/torch thread: the per-process designs'
# best case on a machine with fewer cores than workers (as in pool/demo.py).
OWN_MODEL_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LEAN_ENV = {"HF_HUB_OFFLINE": "1"}
API_KEY = "sk-embedshare-bench-dummy"
QUANTILES = 101  # latency distributions are kept as their 0..100th percentiles


def option_c_shape(workers: int) -> tuple[int, int]:
    """Option C runs ``workers`` threads in all: ceil(sqrt(W)) processes of ceil(W/P) threads."""
    processes = max(1, math.ceil(math.sqrt(workers)))
    return processes, math.ceil(workers / processes)


def _quantiles(samples: list[float]) -> list[float] | None:
    import numpy as np

    if not samples:
        return None
    return [float(x) for x in np.percentile(np.asarray(samples, dtype=np.float64), np.linspace(0, 100, QUANTILES))]


def _p(samples: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(samples, q)) if samples else None


def _ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``seconds``, in milliseconds; None when there are none."""
    p = _p(seconds, q)
    return p * 1e3 if p is not None else None


def _model_seconds(stats: StatsReply) -> float:
    """Seconds the service's model has spent in calls since it started."""
    return stats["model_call_seconds"]["sum"]


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one design on the task set; see the module docstring."""
    import multiprocessing
    import threading
    from functools import partial

    import psutil

    from ..manager import EmbeddingManager
    from ..pool.blas import blas_thread_env
    from ..pool.shared import SharedPool
    from ..pool.worker import timed_call
    from ..pool.workers import WorkerPool
    from ..util.memory import MB, BareInterpreter, measure
    from . import designs
    from .workload import common_queries, distinct_texts_needed, make_tasks, run_task

    design, model, workers = spec["design"], spec["model"], int(spec["workers"])
    registry = spec["registry"]
    workdir = Path(spec["workdir"])
    if workdir.exists():  # every case starts from nothing: no cache, no index
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tasks = make_tasks(int(spec["tasks"]), registry)
    common = common_queries(registry)
    preload = common if design in ("hybrid", "embedshare") else []

    roles: dict[str, list[int]] = {"main": [os.getpid()]}
    main_embedder = None
    service = None
    manager_server = None
    shared_pool = None
    hybrid_thread = None
    processes, threads = workers, 1
    items: list[Any]
    fn: Any = timed_call

    t0 = time.perf_counter()
    try:
        if design == "embedshare":
            shared_pool = SharedPool(
                workers,
                workdir / "store",
                model=model,
                registry=registry,
                preload=preload,
                progress=False,
                preload_modules=[run_task.__module__, designs.__name__],  # what the workers run
            )
            shared_pool.__enter__()
            pool = shared_pool.worker_pool
            service = shared_pool.service
            roles["service"] = [service.pid] if service.pid is not None else []
            roles["forkserver"] = [pool.forkserver_pid] if pool.forkserver_pid is not None else []
        elif design in ("per-process", "option-c"):
            if design == "option-c":
                processes, threads = option_c_shape(workers)
            pool = WorkerPool(
                processes,
                initializer=designs.init_own_manager,
                initargs=(str(workdir / "stores"), model, registry),
                start_method="spawn",
                env=OWN_MODEL_ENV,
            )
        elif design in ("option-a", "hybrid"):
            # The main process holds the real manager (the note's Option A and hybrid both do):
            # it builds the index once, which the workers then open.
            main_embedder = designs.counting_embedder(model)
            main_embedder.load()
            main_manager = EmbeddingManager(workdir / "main", model=main_embedder, registry=registry)
            index_path = main_manager.index_path
            manager_server = multiprocessing.get_context("spawn").Manager()
            # SyncManager keeps its server process private
            roles["manager-server"] = [manager_server._process.pid]  # type: ignore[attr-defined]
            proxy = manager_server.dict()
            if design == "option-a":
                pool = WorkerPool(
                    workers,
                    initializer=designs.init_option_a,
                    initargs=(proxy, index_path, model),
                    start_method="spawn",
                    env=OWN_MODEL_ENV,
                )
            else:
                from ..store.cache import cache_key

                vectors = main_manager.get_embeddings(preload)  # pre-fill with the common texts
                proxy.update(
                    {cache_key(main_manager.model_id, t): v.tobytes() for t, v in zip(preload, vectors, strict=True)}
                )
                requests = manager_server.Queue()
                responses = [manager_server.Queue() for _ in range(workers + 4)]
                slots = manager_server.Queue()
                for slot in range(workers + 4):  # a few spare, for a replaced worker
                    slots.put(slot)
                hybrid_thread = threading.Thread(
                    target=designs.serve_hybrid_misses,
                    args=(requests, responses, proxy, main_embedder),
                    daemon=True,
                    name="hybrid-main",
                )
                hybrid_thread.start()
                pool = WorkerPool(
                    workers,
                    initializer=designs.init_hybrid,
                    initargs=(proxy, requests, responses, slots, index_path, main_manager.model_id, main_manager.dim),
                    start_method="spawn",
                    env={**LEAN_ENV, **blas_thread_env(workers)},
                )
        else:
            raise ValueError(f"unknown design {design!r}")
        startup = time.perf_counter() - t0

        if design == "option-c":
            per_chunk = max(1, math.ceil(len(tasks) / (processes * 4)))
            items = [(tasks[i : i + per_chunk], threads) for i in range(0, len(tasks), per_chunk)]
            fn = designs.run_chunk
        else:
            items = [(run_task, t) for t in tasks]

        first: list[float] = []

        def on_result(_index: int, _outcome: Any) -> None:
            if not first:
                first.append(time.perf_counter())

        began = time.perf_counter()
        outcomes = pool.map(fn, items, on_result=on_result)
        wall = time.perf_counter() - began
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(outcomes)} task items failed; first: {failed[0].error}\n{failed[0].traceback}"
            )
        timed = [t for o in outcomes for t in (o.value if design == "option-c" else [o.value])]
        results = [t.value for t in timed]
        task_seconds = [t.seconds for t in timed]

        # -- memory and counters, right after the task set --------------------------------
        roles["worker"] = pool.worker_pids()
        with BareInterpreter(env=pool.env) as bare:
            memory = measure(roles)
            bare_pss = bare.pss() or 0
        reports = pool.collect(designs.worker_report)
        api_usage = spec["_api"].usage() if spec.get("_api") else None
        counted = [r["embedder"] for r in reports if r["embedder"]]
        if main_embedder is not None:
            counted.append(main_embedder.counts())
        if design == "embedshare":
            from ..store import EmbeddingCache

            assert service is not None  # the embedshare design has one
            stats = service.stats()
            model_calls, texts_embedded = int(stats["model_calls"]), int(stats["texts_embedded"])
            assert stats["dim"] is not None  # the service is ready
            cache = EmbeddingCache(service.layout.cache, stats["model_id"], stats["dim"], readonly=True)
            distinct_embedded = cache.count()  # every text the service embedded, once each
            cache.close()
            mean_batch = stats["batch_size"]["mean"]
        else:
            model_calls = sum(c["calls"] for c in counted)
            texts_embedded = sum(c["texts"] for c in counted)
            distinct_embedded = len({tag for c in counted for tag in c["tags"]})
            mean_batch = texts_embedded / model_calls if model_calls else None

        # -- cache hits, then misses ------------------------------------------------------
        hits = pool.collect(partial(designs.hit_latencies, common[:50], spec["hit_calls"]))
        hit_ns = [x for r in hits for x in r["get_embedding"]]
        hit_parts = {
            part: _p([x / 1000 for r in hits for x in r.get(part, [])], 50) for part in ("get_one", "lmdb_floor")
        }
        before = service.stats() if service is not None else None
        # CPU seconds of the service and of the whole machine: with a model that costs nothing
        # (hash), what bounds the misses is whether the service's loop or the cores are busy.
        service_cpu = psutil.Process(service.pid).cpu_times() if service is not None else None
        machine_cpu = psutil.cpu_times()
        miss_started = time.time()
        senders = threads * spec["miss_threads"]  # per process: each worker sends from this many threads
        misses = pool.collect(partial(designs.miss_phase, spec["miss_seconds"], senders, f"{design}-{workers}"))
        miss_texts = sum(m["texts"] for m in misses)
        miss_wall = max(m["ended"] for m in misses) - miss_started
        miss_throughput = miss_texts / miss_wall
        miss_service = None
        if service is not None and before is not None and service_cpu is not None:  # where its time went
            after_stats = service.stats()
            model_s = _model_seconds(after_stats) - _model_seconds(before)
            texts_done = after_stats["texts_embedded"] - before["texts_embedded"]
            service_cpu_after, machine_cpu_after = psutil.Process(service.pid).cpu_times(), psutil.cpu_times()
            idle = (machine_cpu_after.idle - machine_cpu.idle) / (miss_wall * (os.cpu_count() or 1))
            miss_service = {
                "model_busy_share": model_s / miss_wall,
                "service_cpu_share": (
                    service_cpu_after.user + service_cpu_after.system - service_cpu.user - service_cpu.system
                )
                / miss_wall,
                "machine_idle_share": idle,
                "model_texts_per_s_while_busy": texts_done / model_s if model_s else None,
                "batches": after_stats["model_calls"] - before["model_calls"],
                "mean_batch": texts_done / max(1, after_stats["model_calls"] - before["model_calls"]),
            }
        api_after = spec["_api"].usage() if spec.get("_api") else None
        dim = reports[0]["dim"]
        # Does anything per process grow with the data? Measure every process, send more new
        # texts the same way, and measure again: what the first round paid once (threads,
        # allocator arenas, latency windows) is not counted; what grows with the data is.
        memory_before_more = measure(roles)
        more = pool.collect(partial(designs.miss_phase, spec["miss_seconds"] / 2, senders, f"more-{design}"))
        more_texts = sum(m["texts"] for m in more)
        memory_after = measure(roles)
    finally:
        if shared_pool is not None:
            shared_pool.__exit__(None, None, None)
        else:
            if "pool" in locals():
                pool.close()
            if hybrid_thread is not None:
                requests.put(None)
                hybrid_thread.join(timeout=30)
            if manager_server is not None:
                manager_server.shutdown()

    Path(spec["results_path"]).write_text(json.dumps(results))
    pss = {m.role: 0 for m in memory}
    for m in memory:
        pss[m.role] += m.pss or 0
    worker_pss = [m.pss for m in memory if m.role == "worker" and m.pss]
    total = sum(pss.values())
    after = {m.role: 0 for m in memory_after}
    for m in memory_after:
        after[m.role] += m.pss or 0
    worker_after = [m.pss for m in memory_after if m.role == "worker" and m.pss]
    worker_before_more = [m.pss for m in memory_before_more if m.role == "worker" and m.pss]
    search = [x for r in reports for x in r["search_samples"]]
    attach_s = [r["attach_seconds"] for r in reports if r["attach_seconds"] is not None]
    hit_us = [x / 1000 for x in hit_ns]
    return {
        "kind": "design",
        "design": design,
        "model": model,
        "model_label": spec["model_label"],
        "workers": workers,
        "processes": processes,
        "threads_per_process": threads,
        "tasks": len(tasks),
        "tasks_label": spec.get("tasks_label"),
        "startup_s": startup,
        "first_result_s": first[0] - t0 if first else None,
        "wall_s": wall,
        "task_p50_ms": _ms(task_seconds, 50),
        "task_p99_ms": _ms(task_seconds, 99),
        "attach_p50_ms": _ms(attach_s, 50),
        "attach_p99_ms": _ms(attach_s, 99),
        "pss_mb": {role: v / MB for role, v in pss.items()},
        "pss_total_mb": total / MB,
        "bare_mb": bare_pss / MB,
        "processes_measured": len(memory),
        "embedding_pss_mb": (total - bare_pss * len(memory)) / MB,
        "worker_pss_mean_mb": (sum(worker_pss) / len(worker_pss) / MB) if worker_pss else None,
        "worker_over_bare_mb": (sum(worker_pss) / len(worker_pss) - bare_pss) / MB if worker_pss else None,
        "pss_after_misses_mb": {role: v / MB for role, v in after.items()},
        "vector_kb": dim * 4 / 1024,
        "growth_texts": more_texts,
        "worker_growth_per_1k_texts_kb": (
            (sum(worker_after) / len(worker_after) - sum(worker_before_more) / len(worker_before_more))
            / 1024
            / max(more_texts, 1)
            * 1000
            if worker_before_more and worker_after
            else None
        ),
        "hit_p50_us": _p(hit_us, 50),
        "hit_p99_us": _p(hit_us, 99),
        "hit_quantiles_us": _quantiles(hit_us),
        "hit_get_one_p50_us": hit_parts["get_one"],
        "hit_lmdb_floor_p50_us": hit_parts["lmdb_floor"],
        "search_p50_ms": _ms(search, 50),
        "search_p99_ms": _ms(search, 99),
        "search_quantiles_ms": _quantiles([x * 1e3 for x in search]),
        "cache_hits": sum(r["hits"] for r in reports),
        "cache_misses": sum(r["misses"] for r in reports),
        "model_calls": model_calls,
        "texts_embedded": texts_embedded,
        "distinct_texts_embedded": distinct_embedded,
        "distinct_texts_needed": distinct_texts_needed(tasks, registry, preload),
        "mean_batch": mean_batch,
        "api": {"tasks": api_usage, "after_miss_phase": api_after} if api_usage else None,
        "miss_texts": miss_texts,
        "miss_texts_per_s": miss_throughput,
        "miss_senders": senders * processes,
        "miss_service": miss_service,
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(LEAN_ENV)
    server = None
    try:
        if spec.get("api"):
            from .fake_openai import serve_in_process

            server = serve_in_process(spec["api"]["dim"], api_key=API_KEY, latency=spec["api"]["latency"])
            os.environ["OPENAI_BASE_URL"] = server.base_url
            os.environ["OPENAI_API_KEY"] = API_KEY
            spec["_api"] = server
        if spec.get("design") == "model-alone":
            from .model_alone import run_model_alone

            result = run_model_alone(spec)
        else:
            result = run_case(spec)
        if server is not None and spec.get("design") == "model-alone":
            result["api"] = server.usage()
    finally:
        if server is not None:
            server.stop()
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
