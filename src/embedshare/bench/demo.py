"""The main job: the user's workload on N workers, shared service against per-process managers.

The workload is ``workload.py``'s (the shape of the user's real runs).

Both designs run the same tasks in the same run, one after the other:

1. embedshare: ``SharedPool`` - one service owns the model, cache writes and index.
2. per-process managers (the seed's "now"): every worker builds its own ``EmbeddingManager``
   with its own model, its own cache and its own index, as each process does today.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..pool.shared import PoolReport, SharedPool, measure_run
from ..pool.worker import timed_call
from ..pool.workers import WorkerPool
from .workload import attach_own_manager, make_tasks, run_task

# One torch/BLAS thread per process: the per-process design's best case. With the default (one
# thread per core in each of 25 processes) the workers spin against each other on 2 cores.
NAIVE_WORKER_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The per-process design as it runs today: spawned workers, each importing all it uses.
NAIVE_START_METHOD = "spawn"


@dataclass
class DemoResult:
    shared: PoolReport
    naive: PoolReport | None
    agreement: float | None  # share of search/similar top-5 lists identical in both designs

    def format(self) -> str:
        lines = [self.shared.format()]
        if self.naive is None:
            return "\n".join(lines)
        lines += ["", self.naive.format(), ""]
        s, n = self.shared.as_dict(), self.naive.as_dict()
        ratio = lambda a, b: f"{a / b:.1f}x" if a and b else "-"  # noqa: E731
        lines += [
            "== embedshare against per-process managers, both measured in this run:",
            f"   memory (PSS total): {s['pss_total_mb']:.0f} MB vs {n['pss_total_mb']:.0f} MB "
            f"({ratio(n['pss_total_mb'], s['pss_total_mb'])} less)",
            f"   model calls: {s['model_calls']} vs {n['model_calls']};  texts embedded: "
            f"{s['texts_embedded']} vs {n['texts_embedded']} ({ratio(n['texts_embedded'], s['texts_embedded'])} fewer)",
            f"   start-up until every worker is ready: {s['startup_seconds']:.1f} s vs {n['startup_seconds']:.1f} s",
            f"   wall time for the tasks: {s['wall_seconds']:.1f} s vs {n['wall_seconds']:.1f} s",
            f"   identical top-5 results in both designs: {self.agreement:.1%}",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shared": self.shared.as_dict(),
            "naive": self.naive.as_dict() if self.naive else None,
            "agreement": self.agreement,
        }


def run_demo(
    workers: int = 25,
    tasks: int = 2000,
    model: str = "local",
    registry: str = "bundled",
    store: str | Path | None = None,
    naive: bool = True,
    naive_workers: int | None = None,
    progress: bool = True,
    start_method: str | None = None,
) -> DemoResult:
    """Run the workload with embedshare, then with per-process managers; report both."""
    task_list = make_tasks(tasks, registry)
    own_store = store is None
    store_path = Path(store) if store else Path(tempfile.mkdtemp(prefix="embedshare-demo-"))
    try:
        with SharedPool(
            workers,
            store_path,
            model=model,
            registry=registry,
            progress=progress,
            start_method=start_method,
            preload_modules=[run_task.__module__],  # the task's module, imported once for all workers
        ) as pool:
            shared_results = pool.map(run_task, task_list)
            shared_report = pool.report
        assert shared_report is not None
        if not naive:
            return DemoResult(shared_report, None, None)

        naive_root = Path(tempfile.mkdtemp(prefix="embedshare-naive-"))
        try:
            started = time.perf_counter()
            with WorkerPool(
                naive_workers or workers,
                initializer=attach_own_manager,
                initargs=(str(naive_root), model, registry),
                start_method=NAIVE_START_METHOD,
                env=NAIVE_WORKER_ENV,
            ) as worker_pool:
                startup = time.perf_counter() - started
                bar = None
                if progress:
                    from ..util.progress import task_progress

                    bar = task_progress(len(task_list), "tasks (per-process managers)")

                began = time.perf_counter()
                outcomes = worker_pool.map(
                    timed_call,
                    [(run_task, t) for t in task_list],
                    on_result=(lambda i, o: bar.update(1)) if bar else None,
                )
                if bar:
                    bar.close()
                naive_report = measure_run(
                    "per-process managers (each worker its own model, cache, index)",
                    worker_pool,
                    outcomes,
                    time.perf_counter() - began,
                    startup,
                )
            naive_results = [o.value.value if o.ok else None for o in outcomes]
        finally:
            shutil.rmtree(naive_root, ignore_errors=True)
        return DemoResult(shared_report, naive_report, _agreement(shared_results, naive_results))
    finally:
        if own_store:
            shutil.rmtree(store_path, ignore_errors=True)


def _agreement(a: list[dict[str, Any] | None], b: list[dict[str, Any] | None]) -> float:
    same = total = 0
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            total += 1
            continue
        for key in ("search", "similar"):
            for p, q in zip(x[key], y[key], strict=False):  # position by position, as far as both go
                same += p == q
                total += 1
    return same / total if total else 1.0
