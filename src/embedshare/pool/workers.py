"""A small process pool that survives worker crashes without losing or duplicating tasks.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (SIGKILL from
the OOM killer, a segfault in native code, ``os._exit``) it marks the whole pool broken, fails
every pending future, and cannot say which task the dead worker was running. For long batch
runs we need the opposite: re-run exactly the task the dead worker held, start a replacement
worker, and carry on. The design follows loky's idea of a crash-aware pool, kept much smaller:

* Every worker is a ``multiprocessing`` Process with its own duplex Pipe. The parent hands
  each idle worker exactly one task at a time, so it always knows which task a worker holds.
* The parent blocks in ``multiprocessing.connection.wait`` on every pipe *and* every process
  sentinel; nothing polls with sleep. A fired sentinel means the worker died: the parent first
  drains any result the worker finished sending (so a completed task is never re-run), then
  records a :class:`WorkerCrash`, re-queues the task it held with one more attempt and starts
  a replacement worker (which runs the initializer again).
* A task that *raises* is a normal result, not a crash: it is reported once, never retried,
  as a plain dict (type name, message, traceback text), never as a pickled exception object.
* A task whose worker died more than ``max_retries`` times is reported failed with a
  ``WorkerCrashed`` error. With ``task_timeout``, a task still running after that many seconds
  is killed with its worker and counted the same way (its last failure is ``TaskTimedOut``):
  a task stuck in native code cannot hold a run forever. A failing initializer raises
  :class:`WorkerInitError` in the parent with the worker's traceback, instead of restarting
  workers forever.

Transport: the typed messages of :mod:`embedshare.pool.messages`, pickled over anonymous pipes
that only the parent and its own children hold (that module says why pickle is acceptable
there). The worker's loop is :mod:`embedshare.pool.worker`; starting, watching and replacing
worker processes is :mod:`embedshare.pool.supervisor`; this module decides what to run.

Task functions and the initializer must be importable top-level functions (the pool must work
under the ``spawn`` and ``forkserver`` start methods). Side effects of a task whose worker was
killed mid-run may happen more than once; its *result* is delivered exactly once.

The pool is not thread-safe: use one pool from one thread at a time.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # imported before our atexit hook is registered; see _shutdown_all
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

from .. import settings
from ..errors import PoolError, TaskFailed
from .forkserver import PreloadedForkServer, check_preload
from .messages import CallItem, ErrorInfo, Initializer, Reply, dumps
from .outcomes import TaskOutcome, WorkerCrash
from .supervisor import (
    STOP_TIMEOUT,
    Call,
    Job,
    Task,
    WorkerHandle,
    WorkerSupervisor,
    kill_workers,
)

__all__ = ["MAX_RETRIES", "MAX_WORKERS", "WorkerPool"]

# Upper bounds of a pool's sizes (every setting has one, docs/reliability.md "Limits of settings").
MAX_WORKERS = 4096
MAX_RETRIES = 1000

_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _shutdown_all() -> None:
    # multiprocessing's own exit hook joins every non-daemonic child, which would hang on idle
    # workers of a pool nobody closed. atexit runs hooks last-in first-out and
    # multiprocessing.util registered its hook at import (above), so this one runs first.
    for pool in list(_live_pools):
        pool.terminate()


atexit.register(_shutdown_all)


def _kill_all(workers: list[WorkerHandle], forkserver: PreloadedForkServer | None) -> None:
    """Last-resort cleanup of a pool nobody closed: its workers, then its forkserver."""
    kill_workers(workers)
    if forkserver is not None:
        forkserver.stop()


class WorkerPool:
    """A fixed number of worker processes that run top-level functions on items.

    Use as a context manager. The constructor returns once every worker has run the
    initializer (so :meth:`worker_pids` reports initialized workers), or raises
    :class:`WorkerInitError`.

    ``start_method``: multiprocessing's name (None: its default). ``forkserver`` means a
    forkserver of this pool's own that has imported numpy, embedshare's client and the
    ``preload_modules`` (names) before forking any worker: its workers share those pages instead
    of importing them each (see :mod:`embedshare.pool.forkserver`). Other start methods import
    nothing ahead; the names are checked all the same.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
        start_method: str | None = None,
        max_retries: int = 2,
        env: dict[str, str] | None = None,
        task_timeout: float | None = None,
        preload_modules: Sequence[str] = (),
    ) -> None:
        workers = settings.whole_number("workers", workers, 1, MAX_WORKERS)
        max_retries = settings.whole_number("max_retries", max_retries, 0, MAX_RETRIES)
        self.task_timeout = settings.optional_seconds("task_timeout", task_timeout)
        self.size = workers
        self.max_retries = max_retries
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        # Pickled once here: a non-importable initializer fails now, in the caller's frame.
        init_blob = bytes(dumps(Initializer(initializer, tuple(initargs))))
        init_name = "(none)" if initializer is None else getattr(initializer, "__qualname__", repr(initializer))
        preload_modules = check_preload(preload_modules)
        context = multiprocessing.get_context(start_method)
        # forkserver: this pool's own, which imports what workers need once (forkserver.py)
        self._forkserver = PreloadedForkServer(preload_modules) if context.get_start_method() == "forkserver" else None
        self._supervisor = WorkerSupervisor(
            self._forkserver or context,
            init_blob,
            init_name,
            self.env,
            max_startup_retries=max_retries,
            task_timeout=self.task_timeout,
        )
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._supervisor.workers, self._forkserver)
        self._finalizer.atexit = False  # _shutdown_all handles exit, in the right order
        _live_pools.add(self)
        try:
            for _ in range(workers):
                self._supervisor.start_worker()
            self._supervisor.wait_until_ready()
        except BaseException:
            self.terminate()
            raise

    @property
    def crashes(self) -> list[WorkerCrash]:
        """Every worker death so far, in order."""
        return self._supervisor.crashes

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.terminate()
        else:
            self.close()

    # -- public API -----------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        on_result: Callable[[int, TaskOutcome], None] | None = None,
    ) -> list[TaskOutcome]:
        """Run ``fn(item)`` for every item; return one :class:`TaskOutcome` per item, in order.

        ``on_result(index, outcome)`` is called in the parent as each task finishes (success or
        failure), e.g. to advance a progress bar. If anything raises out of this call (including
        KeyboardInterrupt or an exception from ``on_result``) the workers are terminated and the
        pool is closed, since tasks in flight can no longer be accounted for.
        """
        self._check_open()
        dumps(fn)  # an unpicklable fn (lambda, closure) is a caller bug: raise it here, once
        seq = list(items)
        outcomes: list[TaskOutcome | None] = [None] * len(seq)
        queue: deque[Job] = deque(Task(i) for i in range(len(seq)))
        remaining = len(seq)

        def finish(outcome: TaskOutcome) -> None:
            nonlocal remaining
            if outcomes[outcome.index] is not None:  # cannot happen; never report twice
                return
            outcomes[outcome.index] = outcome
            remaining -= 1
            if on_result is not None:
                on_result(outcome.index, outcome)

        def on_reply(w: WorkerHandle, job: Job, reply: Reply) -> None:
            finish(TaskOutcome.of_reply(job.index, reply, job.attempts, w.pid))

        def on_lost(job: Job, crash: WorkerCrash) -> None:
            if job.attempts > self.max_retries:
                error = ErrorInfo.crash(
                    f"{crash.describe()}; gave up after {job.attempts} attempts", timed_out=crash.timed_out
                )
                finish(TaskOutcome.failed(job.index, error, job.attempts, crash.pid))
            else:
                queue.appendleft(job)  # retried next, by the first idle worker

        supervisor = self._supervisor
        try:
            while remaining:
                for w in supervisor.workers:
                    if not queue:
                        break
                    if not w.ready or w.job is not None or w.eof or w.unusable:
                        continue
                    while queue:
                        job = queue.popleft()
                        try:
                            payload = dumps(CallItem(fn, (seq[job.index],)))
                        except Exception as exc:  # fn or the item does not pickle
                            finish(TaskOutcome.failed(job.index, ErrorInfo.from_exception(exc), job.attempts, None))
                            continue
                        if supervisor.send(w, job, payload):
                            break
                        queue.appendleft(job)  # worker already gone: not an attempt
                        break
                if remaining:
                    supervisor.step(on_reply, on_lost)
        except BaseException:
            self.terminate()
            raise
        return outcomes  # type: ignore[return-value]  # no None left: remaining reached 0

    def map_values(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        on_result: Callable[[int, TaskOutcome], None] | None = None,
    ) -> list[Any]:
        """Like :meth:`map` but returns plain values, raising :class:`TaskFailed` if any failed."""
        outcomes = self.map(fn, items, on_result=on_result)
        failures = [o for o in outcomes if not o.ok]
        if failures:
            first = failures[0]
            raise TaskFailed(
                f"{len(failures)} of {len(outcomes)} tasks failed; first: item {first.index}: "
                f"{first.error}\n{first.traceback or ''}",
                failures,
            )
        return [o.value for o in outcomes]

    def collect(self, fn: Callable[[], Any]) -> list[Any]:
        """Run ``fn()`` once in every live worker and return the results, one per worker.

        Used to gather per-worker statistics at the end of a run. Raises :class:`TaskFailed`
        if ``fn`` raised in a worker or a worker died meanwhile (after all others answered).
        """
        self._check_open()
        supervisor = self._supervisor
        if supervisor.in_step:  # the workers are busy with map()'s tasks: no reply could be told apart
            raise PoolError("collect() cannot run inside a callback of map(); call it after map() returns")
        try:
            supervisor.wait_until_ready()
            targets = list(supervisor.workers)
            payload = dumps(CallItem(fn, ()))
            results: dict[int, TaskOutcome] = {}  # by position in targets

            def on_reply(w: WorkerHandle, job: Job, reply: Reply) -> None:
                results[job.index] = TaskOutcome.of_reply(job.index, reply, 1, w.pid)

            def on_lost(job: Job, crash: WorkerCrash) -> None:
                results[job.index] = TaskOutcome.failed(job.index, ErrorInfo.crash(crash.describe()), 1, crash.pid)

            for pos, w in enumerate(targets):
                if not supervisor.send(w, Call(pos, attempts=1), payload):
                    error = ErrorInfo.crash(f"worker pid {w.pid} is gone")
                    results[pos] = TaskOutcome.failed(pos, error, 0, w.pid)
            while len(results) < len(targets):
                supervisor.step(on_reply, on_lost)
                for pos, w in enumerate(targets):  # died before our message was sent
                    if w.dead and pos not in results:
                        error = ErrorInfo.crash(f"worker pid {w.pid} died")
                        results[pos] = TaskOutcome.failed(pos, error, 0, w.pid)
        except BaseException:
            self.terminate()
            raise
        ordered = [results[i] for i in range(len(targets))]
        failures = [o for o in ordered if not o.ok]
        if failures:
            raise TaskFailed(
                f"collect failed in {len(failures)} of {len(ordered)} workers; first: "
                f"pid {failures[0].worker_pid}: {failures[0].error}\n{failures[0].traceback or ''}",
                failures,
            )
        return [o.value for o in ordered]

    def worker_pids(self) -> list[int]:
        """Pids of the live workers, after any replacement has finished its initializer.

        From a callback of :meth:`map` (``on_result``), while tasks are in flight, it answers
        the pids known now, a replacement still starting included: waiting for it there would
        take the in-flight tasks' replies away from ``map``.
        """
        self._check_open()
        if self._supervisor.in_step:
            return [w.pid for w in self._supervisor.workers]
        try:
            self._supervisor.wait_until_ready()
        except BaseException:
            self.terminate()
            raise
        return [w.pid for w in self._supervisor.workers]

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask every worker to stop, wait up to ``timeout`` s, then terminate the stragglers."""
        if self._closed:
            return
        self._closed = True
        self._supervisor.stop(timeout)
        self._stop_forkserver()
        self._finalizer.detach()
        _live_pools.discard(self)

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL), without waiting for running tasks."""
        self._closed = True
        self._supervisor.terminate()
        self._stop_forkserver()
        self._finalizer.detach()
        _live_pools.discard(self)

    @property
    def forkserver_pid(self) -> int | None:
        """The pid of the forkserver this pool's workers are forked from (None: no forkserver)."""
        return self._forkserver.pid if self._forkserver is not None else None

    def _stop_forkserver(self) -> None:
        if self._forkserver is not None:
            self._forkserver.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the worker pool is closed")
