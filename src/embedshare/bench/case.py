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
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a case imports what its design needs, in its own process
    from ..client.protocol import StatsReply
    from ..pool.workers import WorkerPool
    from ..service.launcher import EmbeddingService
    from ..util.memory import ProcessMemory
    from .designs import Design

API_KEY = "sk-embedshare-bench-dummy"
QUANTILES = 101  # latency distributions are kept as their 0..100th percentiles


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
    from .designs import design_class
    from .workload import common_queries, distinct_texts_needed, make_tasks

    registry, workers = spec["registry"], int(spec["workers"])
    workdir = _fresh_workdir(Path(spec["workdir"]))
    tasks = make_tasks(int(spec["tasks"]), registry)
    common = common_queries(registry)
    design = design_class(spec["design"])(spec["model"], registry, workers, workdir, common)
    t0 = time.perf_counter()
    try:
        pool = design.start()
        startup = time.perf_counter() - t0
        results, task_figures = _task_phase(design, pool, tasks, t0)
        roles = design.processes_to_measure()
        memory, bare_pss = _measure_memory(roles, pool)
        counters = _counters(design, pool, spec)
        hits = _hit_phase(pool, common[:50], spec["hit_calls"])
        senders = design.threads * spec["miss_threads"]  # each worker sends from this many threads
        misses = _miss_phase(design, pool, spec, senders)
        growth = _growth_phase(pool, roles, spec, senders, design.name)
    finally:
        design.stop()

    Path(spec["results_path"]).write_text(json.dumps(results))
    return {
        "kind": "design",
        "design": design.name,
        "model": spec["model"],
        "model_label": spec["model_label"],
        "workers": workers,
        "processes": design.processes,
        "threads_per_process": design.threads,
        "tasks": len(tasks),
        "tasks_label": spec.get("tasks_label"),
        "startup_s": startup,
        **task_figures,
        **counters["attach"],
        **_memory_figures(memory, bare_pss, growth, counters["dim"]),
        **hits,
        **_search_figures(counters["reports"]),
        **counters["model"],
        "distinct_texts_needed": distinct_texts_needed(tasks, registry, design.preload),
        "mean_batch": counters["mean_batch"],
        "api": {"tasks": counters["api"], "after_miss_phase": misses["api"]} if counters["api"] else None,
        "miss_texts": misses["miss_texts"],
        "miss_texts_per_s": misses["miss_texts_per_s"],
        "miss_senders": senders * design.processes,
        "miss_service": misses["miss_service"],
    }


def _fresh_workdir(workdir: Path) -> Path:
    """Every case starts from nothing: no cache, no index."""
    if workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    return workdir


def _task_phase(
    design: Design, pool: WorkerPool, tasks: list[dict[str, Any]], t0: float
) -> tuple[list[Any], dict[str, Any]]:
    """Run the task set on the workers: the results, and the figures of the run."""
    fn, items = design.task_items(tasks)
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
    timed = design.timed(outcomes)
    seconds = [t.seconds for t in timed]
    return [t.value for t in timed], {
        "first_result_s": first[0] - t0 if first else None,
        "wall_s": wall,
        "task_p50_ms": _ms(seconds, 50),
        "task_p99_ms": _ms(seconds, 99),
    }


def _measure_memory(roles: dict[str, list[int]], pool: WorkerPool) -> tuple[list[ProcessMemory], int]:
    """PSS of every process of the design, and of a bare interpreter started as the workers are."""
    from ..util.memory import BareInterpreter, measure

    with BareInterpreter(env=pool.env) as bare:
        memory = measure(roles)
        return memory, bare.pss() or 0


def _counters(design: Design, pool: WorkerPool, spec: dict[str, Any]) -> dict[str, Any]:
    """The workers' reports, what the model computed and what the simulated API served."""
    from . import probes

    reports = pool.collect(probes.worker_report)
    model = design.model_counts(reports)
    attach_s = [r["attach_seconds"] for r in reports if r["attach_seconds"] is not None]
    return {
        "reports": reports,
        "dim": reports[0]["dim"],
        "api": spec["_api"].usage() if spec.get("_api") else None,
        "mean_batch": model.pop("mean_batch"),
        "attach": {"attach_p50_ms": _ms(attach_s, 50), "attach_p99_ms": _ms(attach_s, 99)},
        "model": {
            "cache_hits": sum(r["hits"] for r in reports),
            "cache_misses": sum(r["misses"] for r in reports),
            **model,
        },
    }


def _hit_phase(pool: WorkerPool, texts: list[str], calls: int) -> dict[str, Any]:
    """``get_embedding`` of cached texts, timed call by call in every worker."""
    from functools import partial

    from . import probes

    hits = pool.collect(partial(probes.hit_latencies, texts, calls))
    hit_us = [x / 1000 for r in hits for x in r["get_embedding"]]
    parts = {part: _p([x / 1000 for r in hits for x in r.get(part, [])], 50) for part in ("get_one", "lmdb_floor")}
    return {
        "hit_p50_us": _p(hit_us, 50),
        "hit_p99_us": _p(hit_us, 99),
        "hit_quantiles_us": _quantiles(hit_us),
        "hit_get_one_p50_us": parts["get_one"],
        "hit_lmdb_floor_p50_us": parts["lmdb_floor"],
    }


def _search_figures(reports: list[dict[str, Any]]) -> dict[str, Any]:
    search = [x for r in reports for x in r["search_samples"]]
    return {
        "search_p50_ms": _ms(search, 50),
        "search_p99_ms": _ms(search, 99),
        "search_quantiles_ms": _quantiles([x * 1e3 for x in search]),
    }


def _miss_phase(design: Design, pool: WorkerPool, spec: dict[str, Any], senders: int) -> dict[str, Any]:
    """Every worker sends distinct new texts for a while: how many were answered, and (for
    embedshare) where the service's time went."""
    from functools import partial

    import psutil

    from . import probes

    service = design.service
    before = service.stats() if service is not None else None
    # CPU seconds of the service and of the whole machine: with a model that costs nothing
    # (hash), what bounds the misses is whether the service's loop or the cores are busy.
    service_cpu = psutil.Process(service.pid).cpu_times() if service is not None else None
    machine_cpu = psutil.cpu_times()
    started = time.time()
    misses = pool.collect(partial(probes.miss_phase, spec["miss_seconds"], senders, f"{design.name}-{design.workers}"))
    texts = sum(m["texts"] for m in misses)
    wall = max(m["ended"] for m in misses) - started
    busy = None
    if service is not None and before is not None and service_cpu is not None:
        busy = _service_busy(service, before, service_cpu, machine_cpu, wall)
    return {
        "api": spec["_api"].usage() if spec.get("_api") else None,
        "miss_texts": texts,
        "miss_texts_per_s": texts / wall,
        "miss_service": busy,
    }


def _service_busy(
    service: EmbeddingService, before: StatsReply, service_cpu: Any, machine_cpu: Any, wall: float
) -> dict[str, Any]:
    """Where the service's time went during the miss phase."""
    import psutil

    after = service.stats()
    model_s = _model_seconds(after) - _model_seconds(before)
    texts_done = after["texts_embedded"] - before["texts_embedded"]
    service_after, machine_after = psutil.Process(service.pid).cpu_times(), psutil.cpu_times()
    idle = (machine_after.idle - machine_cpu.idle) / (wall * (os.cpu_count() or 1))
    used = service_after.user + service_after.system - service_cpu.user - service_cpu.system
    return {
        "model_busy_share": model_s / wall,
        "service_cpu_share": used / wall,
        "machine_idle_share": idle,
        "model_texts_per_s_while_busy": texts_done / model_s if model_s else None,
        "batches": after["model_calls"] - before["model_calls"],
        "mean_batch": texts_done / max(1, after["model_calls"] - before["model_calls"]),
    }


def _growth_phase(
    pool: WorkerPool, roles: dict[str, list[int]], spec: dict[str, Any], senders: int, name: str
) -> dict[str, Any]:
    """Does anything per process grow with the data? Measure every process, send more new
    texts the same way, and measure again: what the first round paid once (threads, allocator
    arenas, latency windows) is not counted; what grows with the data is."""
    from functools import partial

    from ..util.memory import measure
    from . import probes

    before = measure(roles)
    more = pool.collect(partial(probes.miss_phase, spec["miss_seconds"] / 2, senders, f"more-{name}"))
    return {"before": before, "texts": sum(m["texts"] for m in more), "after": measure(roles)}


def _memory_figures(memory: list[ProcessMemory], bare_pss: int, growth: dict[str, Any], dim: int) -> dict[str, Any]:
    """PSS by role after the task set and after the misses, and a worker's growth with the data."""
    from ..util.memory import MB

    pss, after = _pss_by_role(memory), _pss_by_role(growth["after"])
    worker_pss = _worker_pss(memory)
    worker_before, worker_after = _worker_pss(growth["before"]), _worker_pss(growth["after"])
    total = sum(pss.values())
    more_texts = growth["texts"]
    return {
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
            (sum(worker_after) / len(worker_after) - sum(worker_before) / len(worker_before))
            / 1024
            / max(more_texts, 1)
            * 1000
            if worker_before and worker_after
            else None
        ),
    }


def _pss_by_role(memory: list[ProcessMemory]) -> dict[str, int]:
    pss = {m.role: 0 for m in memory}
    for m in memory:
        pss[m.role] += m.pss or 0
    return pss


def _worker_pss(memory: list[ProcessMemory]) -> list[int]:
    return [m.pss for m in memory if m.role == "worker" and m.pss]


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    from .designs import LEAN_ENV

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
