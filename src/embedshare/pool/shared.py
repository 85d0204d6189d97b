"""``SharedPool``: N worker processes that share one service, with progress and a report.

    with SharedPool(workers=25, store=store, model="local", registry="bundled") as pool:
        results = pool.map(run_task, tasks)      # task code calls get_embedding_manager()
    print(pool.report.format())

It starts the store's service (or joins the running one), starts workers that attach to it
before their first task, runs tasks on the crash-safe ``WorkerPool`` (a crashed worker's task
is re-run, none lost), shows a progress bar, and measures what the run cost: PSS of every
process, cache hits and misses, model calls, batch sizes and latencies.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from .. import settings
from ..client.protocol import StatsReply
from ..env import ENV_ADDRESS, ENV_MODEL, ENV_ON_FAILURE, ENV_STORE
from ..errors import TaskFailed
from ..registry.loader import BUNDLED_REGISTRY
from ..service.config import ServiceConfig
from ..service.launcher import EmbeddingService
from ..util.latency import Percentiles, percentiles
from ..util.memory import BareInterpreter, ProcessMemory, measure
from .attach import attach_worker, worker_stats
from .blas import blas_thread_env
from .forkserver import check_preload, preferred_start_method, warn_if_texts_name_modules
from .main_guard import refuse_unguarded_main
from .outcomes import TaskOutcome, WorkerCrash
from .worker import timed_call
from .workers import MAX_RETRIES, MAX_WORKERS, WorkerPool


@dataclass
class PoolReport:
    """What a run cost, measured. ``format()`` renders it for a terminal."""

    label: str
    workers: int
    tasks: int
    failed: int
    wall_seconds: float
    startup_seconds: float
    memory: list[ProcessMemory]
    bare_interpreter_pss: int | None
    worker_stats: list[dict[str, Any]]
    service_stats: StatsReply | None
    crashes: list[WorkerCrash] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    workers_ready_seconds: float | None = None  # of start-up: from the service ready to every worker ready

    def pss_total(self, role: str | None = None) -> int:
        return sum(m.pss or 0 for m in self.memory if role is None or m.role == role)

    def count(self, name: str) -> int:
        return sum(int(s.get(name, 0)) for s in self.worker_stats)

    def model_calls(self) -> int:
        if self.service_stats is not None:
            return int(self.service_stats["model_calls"])
        return self.count("model_calls")

    def texts_embedded(self) -> int:
        if self.service_stats is not None:
            return int(self.service_stats["texts_embedded"])
        return self.count("texts_embedded")

    def latency(self, call: str) -> Percentiles:
        samples = [x for s in self.worker_stats for x in s["latency"][call].get("samples", [])]
        return percentiles(samples)

    def as_dict(self) -> dict[str, Any]:
        workers_pss = [m.pss for m in self.memory if m.role == "worker" and m.pss]
        return {
            "label": self.label,
            "workers": self.workers,
            "tasks": self.tasks,
            "failed": self.failed,
            "wall_seconds": self.wall_seconds,
            "startup_seconds": self.startup_seconds,
            "workers_ready_seconds": self.workers_ready_seconds,
            "pss_total_mb": self.pss_total() / 2**20,
            "pss_by_role_mb": {r: self.pss_total(r) / 2**20 for r in sorted({m.role for m in self.memory})},
            "pss_per_worker_mb": (sum(workers_pss) / len(workers_pss) / 2**20) if workers_pss else None,
            "bare_interpreter_pss_mb": self.bare_interpreter_pss / 2**20 if self.bare_interpreter_pss else None,
            "hits": self.count("hits"),
            "misses": self.count("misses"),
            "model_calls": self.model_calls(),
            "texts_embedded": self.texts_embedded(),
            "mean_batch": self.service_stats["batch_size"]["mean"] if self.service_stats is not None else None,
            "attach_seconds": percentiles([s["attach_seconds"] for s in self.worker_stats if s.get("attach_seconds")]),
            "task_seconds": percentiles(self.task_seconds),
            "search_seconds": self.latency("search"),
            "similar_seconds": self.latency("find_similar_tools"),
            "embed_seconds": self.latency("get_embeddings"),
            "crashes": [c.describe() for c in self.crashes],
        }

    def format(self) -> str:
        d = self.as_dict()
        ms = lambda v: f"{v * 1e3:.3f} ms" if v is not None else "-"  # noqa: E731
        lines = [
            f"== {self.label}: {self.workers} workers, {self.tasks} tasks "
            f"({self.failed} failed), wall {self.wall_seconds:.1f} s, start-up {self.startup_seconds:.1f} s"
            + (
                f" (workers ready {self.workers_ready_seconds:.1f} s after the service)"
                if self.workers_ready_seconds is not None
                else ""
            ),
            f"   memory (PSS, summed over every process): {d['pss_total_mb']:.0f} MB  "
            + "  ".join(f"{role} {mb:.0f} MB" for role, mb in d["pss_by_role_mb"].items()),
        ]
        if d["pss_per_worker_mb"] is not None:
            bare = d["bare_interpreter_pss_mb"]
            lines.append(
                f"   per worker: {d['pss_per_worker_mb']:.1f} MB"
                + (
                    f" (a bare spawned worker with numpy: {bare:.1f} MB, so {d['pss_per_worker_mb'] - bare:+.1f} MB)"
                    if bare
                    else ""
                )
            )
        lines += [
            f"   cache: {d['hits']} hits, {d['misses']} misses;  model calls {d['model_calls']} "
            f"for {d['texts_embedded']} texts" + (f" (mean batch {d['mean_batch']:.1f})" if d["mean_batch"] else ""),
            f"   attach p50 {ms(d['attach_seconds']['p50'])}  p99 {ms(d['attach_seconds']['p99'])};  "
            f"task p50 {ms(d['task_seconds']['p50'])}  p99 {ms(d['task_seconds']['p99'])}",
            f"   search p50 {ms(d['search_seconds']['p50'])}  p99 {ms(d['search_seconds']['p99'])};  "
            f"find_similar_tools p50 {ms(d['similar_seconds']['p50'])}  p99 {ms(d['similar_seconds']['p99'])}",
        ]
        if self.crashes:
            lines.append(f"   worker crashes: {len(self.crashes)} (tasks re-run): " + "; ".join(d["crashes"][:5]))
        return "\n".join(lines)


class SharedPool:
    """A process pool whose workers share the store's embedding service. See module doc."""

    def __init__(
        self,
        workers: int = 25,
        store: str | Path | None = None,
        model: str | None = None,
        registry: str | Path | None = BUNDLED_REGISTRY,
        *,
        config: ServiceConfig | None = None,
        preload: Sequence[str] = (),
        start_method: str | None = None,
        preload_modules: Sequence[str] = (),
        max_retries: int = 2,
        task_timeout: float | None = None,
        progress: bool = True,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        label: str = "embedshare (shared service)",
    ) -> None:
        """The service's settings are ``config`` or the keywords ``store``, ``model``,
        ``registry``, ``preload``, ``max_batch`` and ``max_wait_ms``, not both (as for
        ``EmbeddingService``). A pool serves the bundled registry unless given another one or
        None; with ``config``, the config's.

        Workers start from a forkserver of the pool's own (``start_method`` None: where the
        platform has one, else spawned), which has imported numpy, embedshare's client and
        ``preload_modules`` (module names: the task's own, say) once for all of them. Any
        multiprocessing start method can be named instead."""
        # Checked now, before a service is started for a pool that could not run.
        self.workers = settings.whole_number("workers", workers, 1, MAX_WORKERS)
        self.start_method = start_method or preferred_start_method()
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {', '.join(multiprocessing.get_all_start_methods())}, "
                f"not {start_method!r}"
            )
        refuse_unguarded_main(self.start_method)
        self.preload_modules = check_preload(preload_modules)
        warn_if_texts_name_modules(preload)
        self.max_retries = settings.whole_number("max_retries", max_retries, 0, MAX_RETRIES)
        # seconds a task may run before its worker is killed
        self.task_timeout = settings.optional_seconds("task_timeout", task_timeout)
        self.progress = progress
        self.label = label
        self.service = EmbeddingService(
            store,
            model=model,
            registry=None if config is not None and registry == BUNDLED_REGISTRY else registry,
            config=config,
            preload=preload,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
        )
        self._pool: WorkerPool | None = None
        self._started = 0.0
        self._startup = 0.0
        self._workers_ready = 0.0
        self.outcomes: list[TaskOutcome] = []
        self.report: PoolReport | None = None

    @property
    def store(self) -> Path:
        """The store folder of the pool's service."""
        return Path(self.service.config.store)

    @property
    def model(self) -> str:
        """The embedder spec of the pool's service (``local``, ``hash:<dim>``, ...)."""
        return self.service.config.model

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        self.service.start()
        service_ready = time.perf_counter()
        env = {
            ENV_ADDRESS: self.service.address,
            ENV_STORE: str(self.service.layout.root),
            ENV_ON_FAILURE: "restart",  # the pool owns the service: a worker brings it back
            ENV_MODEL: self.model,
            "HF_HUB_OFFLINE": "1",
            **blas_thread_env(self.workers),
        }
        try:
            self._pool = WorkerPool(
                self.workers,
                initializer=attach_worker,
                start_method=self.start_method,
                max_retries=self.max_retries,
                env=env,
                task_timeout=self.task_timeout,
                preload_modules=self.preload_modules,
            )
        except BaseException:
            self.service.stop()
            raise
        self._startup = time.perf_counter() - self._started
        self._workers_ready = time.perf_counter() - service_ready
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pool is not None:
                self._pool.close()
        finally:
            self.service.stop()

    @property
    def worker_pool(self) -> WorkerPool:
        if self._pool is None:
            raise RuntimeError("use SharedPool as a context manager: with SharedPool(...) as pool")
        return self._pool

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        raise_on_failure: bool = True,
        on_result: Callable[[int, TaskOutcome], None] | None = None,
    ) -> list[Any]:
        """Run ``fn(item)`` in the workers; results in order. Measures the run for ``report``.

        ``on_result(index, outcome)`` is called in this process as each task finishes (after the
        progress bar advances); ``outcome.value`` is a ``Timed(value, seconds)``.
        """
        pool = self.worker_pool
        items = list(items)
        bar = None
        if self.progress:
            from ..util.progress import task_progress

            bar = task_progress(len(items), "tasks")
        started = time.perf_counter()
        try:
            self.outcomes = pool.map(
                timed_call,
                [(fn, item) for item in items],
                on_result=_chain(bar.update if bar is not None else None, on_result),
            )
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - started
        self.report = self._measure(wall)
        failures = [o for o in self.outcomes if not o.ok]
        if failures and raise_on_failure:
            raise TaskFailed(f"{len(failures)} of {len(items)} tasks failed; first: {failures[0].error}", failures)
        return [o.value.value if o.ok else None for o in self.outcomes]

    def _measure(self, wall: float) -> PoolReport:
        from ..service.launcher import service_state

        service_pid = service_state(self.service.layout.root).get("pid")  # a restarted one too
        try:
            service_stats = self.service.stats()
        except (OSError, ConnectionError):
            service_stats = None
        return measure_run(
            self.label,
            self.worker_pool,
            self.outcomes,
            wall,
            self._startup,
            service_pid=service_pid,
            service_stats=service_stats,
            workers_ready=self._workers_ready,
        )


def _chain(
    tick: Callable[[int], Any] | None, on_result: Callable[[int, TaskOutcome], None] | None
) -> Callable[[int, TaskOutcome], None] | None:
    """One on_result hook: advance the progress bar, then call the caller's hook."""
    if tick is None:
        return on_result

    def both(index: int, outcome: TaskOutcome) -> None:
        tick(1)
        if on_result is not None:
            on_result(index, outcome)

    return both


def measure_run(
    label: str,
    pool: WorkerPool,
    outcomes: list[TaskOutcome],
    wall: float,
    startup: float,
    service_pid: int | None = None,
    service_stats: StatsReply | None = None,
    workers_ready: float | None = None,
) -> PoolReport:
    """Measure a finished run while its workers are still alive (they hold their memory)."""
    with BareInterpreter(env=pool.env) as bare:
        memory = measure(
            {
                "service": [service_pid] if service_pid else [],
                "forkserver": [pool.forkserver_pid] if pool.forkserver_pid else [],
                "worker": pool.worker_pids(),
                "parent": [os.getpid()],
            }
        )
        bare_pss = bare.pss()
    return PoolReport(
        label=label,
        workers=pool.size,
        tasks=len(outcomes),
        failed=sum(not o.ok for o in outcomes),
        wall_seconds=wall,
        startup_seconds=startup,
        memory=memory,
        bare_interpreter_pss=bare_pss,
        worker_stats=pool.collect(worker_stats),
        service_stats=service_stats,
        crashes=list(pool.crashes),
        task_seconds=[o.value.seconds for o in outcomes if o.ok],
        workers_ready_seconds=workers_ready,
    )
