"""The designs the benchmark compares: one class each, on a common base.

Every design gives the worker an ``EmbeddingManager`` (the one API: get_embedding, search,
find_similar_tools, ...), installed as the process's ``get_embedding_manager()``, so the same
task code (``bench.workload.run_task``) runs on all of them; what differs is the manager's
*source* of vectors for cache misses, and the cache it reads hits from (``embedshare.sources``):

1. ``per-process``: the seed's "now". Each worker builds its own ``EmbeddingManager``: its own
   model, its own cache (LMDB in a folder of its own) and its own index.
2. ``option-c``: the seed's singleton. A few processes, each with one ``EmbeddingManager``
   shared by many threads.
3. ``option-a``: the seed's Option A. A ``multiprocessing.Manager().dict()`` is the shared
   cache; a miss is computed in the worker by its own embedder and put in the dict.
4. ``hybrid``: the seed's best design. The Manager dict is pre-filled with the common texts by
   the main process; a miss is sent to the main process on a request queue, which computes it
   with its embedder, puts it in the dict and answers on the worker's own response queue.
5. ``embedshare``: ``SharedPool``'s workers (``pool.attach``): the service and the zero-copy
   client.

Designs 3 and 4 open the tool index the main process built (a memory-mapped folder), which
costs them nothing per worker; designs 1 and 2 build their own, as the seed's managers do.

What a case asks of a design (:class:`Design`): ``start`` it (its processes and workers),
``worker_manager`` (the initializer that installs a worker's manager), the
``processes_to_measure`` by role, what its model computed (``model_counts``), and ``stop``.
Everything else a case does (the task set, hits, misses, memory) is the same for all.

Workers load this module to run ``worker_manager``: its top-level imports are what every
worker loads before its attach clock starts (the manager, the Manager-dict sources, the
counters, the probes it runs after the tasks), as they did when all of it was this one
module, so that a worker's memory counts the same code as in ``bench/results``; nothing of
the main process's side (pools, the service, Manager servers) is imported at the top.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..manager import EmbeddingManager
from ..pool import attach
from .counting import CountingEmbedder, count_this_worker, counting_embedder
from .dict_sources import HybridSource, OptionASource, serve_hybrid_misses
from .probes import run_chunk  # loaded with the design: every worker runs the probes after its tasks

if TYPE_CHECKING:  # what the main process of a case runs; workers never import these
    from ..pool.outcomes import TaskOutcome
    from ..pool.shared import SharedPool
    from ..pool.worker import Timed
    from ..pool.workers import WorkerPool
    from ..service.launcher import EmbeddingService


# Workers that run a model of their own get one BLAS/torch thread: the per-process designs'
# best case on a machine with fewer cores than workers (as in pool/demo.py).
OWN_MODEL_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LEAN_ENV = {"HF_HUB_OFFLINE": "1"}


def option_c_shape(workers: int) -> tuple[int, int]:
    """Option C runs ``workers`` threads in all: ceil(sqrt(W)) processes of ceil(W/P) threads."""
    processes = max(1, math.ceil(math.sqrt(workers)))
    return processes, math.ceil(workers / processes)


def _install_timed(build: Callable[[], EmbeddingManager]) -> None:
    """Install the manager ``build`` makes as this worker's ``get_embedding_manager()``; the
    time that took is the worker's attach time (``pool.attach`` records embedshare's)."""
    from ..access import set_embedding_manager

    started = time.perf_counter()
    set_embedding_manager(build())
    attach._attach_seconds = time.perf_counter() - started


class Design:
    """One design as a benchmark case runs it, in the case's main process.

    ``start`` builds what the design needs and its workers (returning their pool); ``stop``
    ends all of it, whatever ``start`` got through. ``roles`` names the design's own
    processes (the case measures them with the workers).
    """

    name: ClassVar[str]
    preloads_common: ClassVar[bool] = False  # the common texts are cached before the tasks

    def __init__(self, model: str, registry: str, workers: int, workdir: Path, common: list[str]) -> None:
        self.model, self.registry, self.workers, self.workdir = model, registry, workers, workdir
        self.preload = common if self.preloads_common else []
        self.processes, self.threads = workers, 1  # worker processes, threads in each
        self.roles: dict[str, list[int]] = {"main": [os.getpid()]}
        self.main_embedder: CountingEmbedder | None = None  # a model in the main process, if any
        self.service: EmbeddingService | None = None  # embedshare's service, if any
        self._pool: WorkerPool | None = None

    @staticmethod
    def worker_manager(*args: Any) -> None:
        """The workers' initializer: install this process's ``get_embedding_manager()``."""
        raise NotImplementedError

    def start(self) -> WorkerPool:
        self._pool = self._start()
        return self._pool

    def _start(self) -> WorkerPool:
        raise NotImplementedError

    def _worker_pool(self, initargs: tuple[Any, ...], env: dict[str, str]) -> WorkerPool:
        from ..pool.workers import WorkerPool

        return WorkerPool(
            self.processes, initializer=type(self).worker_manager, initargs=initargs, start_method="spawn", env=env
        )

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._stop_main()

    def _stop_main(self) -> None:
        """End what the main process runs besides the workers (after the workers)."""

    def processes_to_measure(self) -> dict[str, list[int]]:
        assert self._pool is not None, "the design was not started"
        return {**self.roles, "worker": self._pool.worker_pids()}

    def task_items(self, tasks: list[dict[str, Any]]) -> tuple[Callable[..., Any], list[Any]]:
        """What the workers' pool maps to run the task set: one task an item."""
        from ..pool.worker import timed_call
        from .workload import run_task

        return timed_call, [(run_task, t) for t in tasks]

    def timed(self, outcomes: list[TaskOutcome]) -> list[Timed]:
        """Each task's result and seconds, from the outcomes of ``task_items``."""
        return [o.value for o in outcomes]

    def model_counts(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """Model calls, texts and distinct texts of the task set, from the workers' reports."""
        counted = [r["embedder"] for r in reports if r["embedder"]]
        if self.main_embedder is not None:
            counted.append(self.main_embedder.counts())
        calls, texts = sum(c["calls"] for c in counted), sum(c["texts"] for c in counted)
        return {
            "model_calls": calls,
            "texts_embedded": texts,
            "distinct_texts_embedded": len({tag for c in counted for tag in c["tags"]}),
            "mean_batch": texts / calls if calls else None,
        }


class PerProcess(Design):
    """1. Each worker builds its own manager: model, cache and index."""

    name = "per-process"

    @staticmethod
    def worker_manager(store_root: str, spec: str, registry: str) -> None:
        def build() -> EmbeddingManager:
            embedder = count_this_worker(spec)
            manager = EmbeddingManager(Path(store_root) / str(os.getpid()), model=embedder, registry=registry)
            embedder.load()  # the seed's manager is ready once built
            return manager

        _install_timed(build)

    def _start(self) -> WorkerPool:
        return self._worker_pool((str(self.workdir / "stores"), self.model, self.registry), OWN_MODEL_ENV)


class OptionC(PerProcess):
    """2. A few processes with a manager each (as in design 1), shared by many threads."""

    name = "option-c"

    def __init__(self, model: str, registry: str, workers: int, workdir: Path, common: list[str]) -> None:
        super().__init__(model, registry, workers, workdir, common)
        self.processes, self.threads = option_c_shape(workers)

    def task_items(self, tasks: list[dict[str, Any]]) -> tuple[Callable[..., Any], list[Any]]:
        """Chunks of tasks, each run on a process's threads (four chunks a process)."""
        per_chunk = max(1, math.ceil(len(tasks) / (self.processes * 4)))
        return run_chunk, [(tasks[i : i + per_chunk], self.threads) for i in range(0, len(tasks), per_chunk)]

    def timed(self, outcomes: list[TaskOutcome]) -> list[Timed]:
        return [t for o in outcomes for t in o.value]


class _ManagerDictDesign(Design):
    """3 and 4: the main process holds a real manager (it builds the index once, which the
    workers then open) and a ``multiprocessing.Manager()`` whose dict is the shared cache."""

    def __init__(self, model: str, registry: str, workers: int, workdir: Path, common: list[str]) -> None:
        super().__init__(model, registry, workers, workdir, common)
        self._manager_server: Any = None

    def _start_main(self) -> tuple[EmbeddingManager, Any]:
        """The main process's manager and the Manager dict's proxy."""
        import multiprocessing

        self.main_embedder = counting_embedder(self.model)
        self.main_embedder.load()
        main_manager = EmbeddingManager(self.workdir / "main", model=self.main_embedder, registry=self.registry)
        self._manager_server = multiprocessing.get_context("spawn").Manager()
        # SyncManager keeps its server process private
        self.roles["manager-server"] = [self._manager_server._process.pid]
        return main_manager, self._manager_server.dict()

    def _stop_main(self) -> None:
        if self._manager_server is not None:
            self._manager_server.shutdown()


class OptionA(_ManagerDictDesign):
    """3. A miss is computed in the worker, by its own model, and put in the dict."""

    name = "option-a"

    @staticmethod
    def worker_manager(proxy: Any, index_path: str, spec: str) -> None:
        def build() -> EmbeddingManager:
            embedder = count_this_worker(spec)
            embedder.load()
            return EmbeddingManager(source=OptionASource(proxy, index_path, embedder))

        _install_timed(build)

    def _start(self) -> WorkerPool:
        main_manager, proxy = self._start_main()
        return self._worker_pool((proxy, main_manager.index_path, self.model), OWN_MODEL_ENV)


class Hybrid(_ManagerDictDesign):
    """4. The dict is pre-filled with the common texts; a miss is asked of the main process."""

    name = "hybrid"
    preloads_common = True
    SPARE_SLOTS = 4  # response queues for replaced workers

    def __init__(self, model: str, registry: str, workers: int, workdir: Path, common: list[str]) -> None:
        super().__init__(model, registry, workers, workdir, common)
        self._requests: Any = None
        self._answering: Any = None  # the main process's thread answering misses

    @staticmethod
    def worker_manager(
        proxy: Any, requests: Any, responses: list[Any], slots: Any, index_path: str, model_id: str, dim: int
    ) -> None:
        def build() -> EmbeddingManager:
            slot = slots.get()  # which response queue is this worker's
            return EmbeddingManager(
                source=HybridSource(proxy, requests, responses[slot], slot, index_path, model_id, dim)
            )

        _install_timed(build)

    def _start(self) -> WorkerPool:
        import threading

        from ..pool.blas import blas_thread_env
        from ..store.cache import cache_key

        main_manager, proxy = self._start_main()
        vectors = main_manager.get_embeddings(self.preload)  # pre-fill with the common texts
        proxy.update(
            {cache_key(main_manager.model_id, t): v.tobytes() for t, v in zip(self.preload, vectors, strict=True)}
        )
        server = self._manager_server
        self._requests = requests = server.Queue()
        responses = [server.Queue() for _ in range(self.workers + self.SPARE_SLOTS)]
        slots = server.Queue()
        for slot in range(len(responses)):
            slots.put(slot)
        self._answering = threading.Thread(
            target=serve_hybrid_misses,
            args=(requests, responses, proxy, self.main_embedder),
            daemon=True,
            name="hybrid-main",
        )
        self._answering.start()
        initargs = (proxy, requests, responses, slots, main_manager.index_path, main_manager.model_id, main_manager.dim)
        return self._worker_pool(initargs, {**LEAN_ENV, **blas_thread_env(self.workers)})

    def _stop_main(self) -> None:
        if self._answering is not None:
            self._requests.put(None)
            self._answering.join(timeout=30)
        super()._stop_main()


class Embedshare(Design):
    """5. ``SharedPool``: the service, and workers attached to it (``pool.attach``)."""

    name = "embedshare"
    preloads_common = True
    worker_manager = staticmethod(attach.attach_worker)  # what SharedPool's workers run

    def __init__(self, model: str, registry: str, workers: int, workdir: Path, common: list[str]) -> None:
        super().__init__(model, registry, workers, workdir, common)
        self._shared: SharedPool | None = None

    def _start(self) -> WorkerPool:
        from ..pool.shared import SharedPool
        from .workload import run_task

        self._shared = SharedPool(
            self.workers,
            self.workdir / "store",
            model=self.model,
            registry=self.registry,
            preload=self.preload,
            progress=False,
            preload_modules=[run_task.__module__, __name__],  # what the workers run (the probes with it)
        )
        self._shared.__enter__()
        pool, self.service = self._shared.worker_pool, self._shared.service
        self.roles["service"] = [self.service.pid] if self.service.pid is not None else []
        self.roles["forkserver"] = [pool.forkserver_pid] if pool.forkserver_pid is not None else []
        return pool

    def stop(self) -> None:
        if self._shared is not None:
            self._shared.__exit__(None, None, None)

    def model_counts(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """The service's own counters; distinct texts are the entries of its cache."""
        from ..store import EmbeddingCache

        assert self.service is not None, "the design was not started"
        stats = self.service.stats()
        assert stats["dim"] is not None  # the service is ready
        cache = EmbeddingCache(self.service.layout.cache, stats["model_id"], stats["dim"], readonly=True)
        distinct = cache.count()  # every text the service embedded, once each
        cache.close()
        return {
            "model_calls": int(stats["model_calls"]),
            "texts_embedded": int(stats["texts_embedded"]),
            "distinct_texts_embedded": distinct,
            "mean_batch": stats["batch_size"]["mean"],
        }


DESIGN_CLASSES: dict[str, type[Design]] = {d.name: d for d in (PerProcess, OptionC, OptionA, Hybrid, Embedshare)}
DESIGNS = tuple(DESIGN_CLASSES)


def design_class(name: str) -> type[Design]:
    try:
        return DESIGN_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown design {name!r}") from None
