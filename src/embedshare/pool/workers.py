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

Transport: messages between the parent and its workers are pickled (like concurrent.futures)
and travel over anonymous ``multiprocessing`` pipes. That is acceptable because only the
parent and its own child processes hold those pipe ends - there is no socket or named path
another process could connect to. Under the fork start method a child also inherits the parent
ends of its siblings' pipes; each forked worker closes those at once so that a dead parent or
sibling is seen as end-of-file rather than hanging.

Task functions and the initializer must be importable top-level functions (the pool must work
under the ``spawn`` and ``forkserver`` start methods). Side effects of a task whose worker was
killed mid-run may happen more than once; its *result* is delivered exactly once.

The pool is not thread-safe: use one pool from one thread at a time.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # imported before our atexit hook is registered; see _shutdown_all
import os
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Iterable, Sequence

from .. import settings

__all__ = [
    "PoolError",
    "TaskFailed",
    "TaskOutcome",
    "WorkerCrash",
    "WorkerCrashed",
    "WorkerInitError",
    "WorkerPool",
]

# Seconds a worker gets to leave after a stop message, and after SIGTERM, before escalation.
_STOP_TIMEOUT = 5.0
_TERM_TIMEOUT = 2.0
# Exit code of a worker whose initializer raised (it has already reported the traceback).
_INIT_FAILED_EXIT = 3


class PoolError(RuntimeError):
    """Base class for errors raised by :class:`WorkerPool`."""


class WorkerCrashed(PoolError):
    """A task's worker process died on every allowed attempt (the name used in outcomes)."""


class WorkerInitError(PoolError):
    """A worker's initializer failed; retrying would only fail again, so the pool gives up."""


class TaskFailed(PoolError):
    """Raised by the convenience calls when at least one task failed; carries the failures."""

    def __init__(self, message: str, failures: Sequence["TaskOutcome"]):
        super().__init__(message)
        self.failures = list(failures)


@dataclass
class TaskOutcome:
    """What happened to one input item: a value, or an error description (never both)."""

    index: int
    ok: bool
    value: Any = None
    error: str | None = None  # "TypeName: message"
    attempts: int = 0  # how many times the task was handed to a worker
    worker_pid: int | None = None  # the worker that produced this outcome (None: never ran)
    error_type: str | None = None  # e.g. "ValueError", or "WorkerCrashed"
    traceback: str | None = None  # the worker-side traceback text, when there is one


@dataclass(frozen=True)
class WorkerCrash:
    """One worker death, for the run report."""

    pid: int
    exitcode: int | None  # negative: killed by that signal number
    signal: str | None  # e.g. "SIGKILL" when killed by a signal
    task_index: int | None  # the map() item the worker held, if any
    attempt: int | None  # which attempt of that task died with it
    during_startup: bool  # died before its initializer finished
    timed_out: bool = False  # killed by the pool: its task ran past task_timeout

    def describe(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exited with code {self.exitcode}"
        if self.timed_out:
            how = "killed by the pool (its task ran past task_timeout)"
        where = (
            "during its initializer"
            if self.during_startup
            else f"while running task {self.task_index} (attempt {self.attempt})"
            if self.task_index is not None
            else "while idle"
        )
        return f"worker pid {self.pid} {how} {where}"


# --------------------------------------------------------------------------------------------
# Worker side


def _describe_exception(exc: BaseException) -> dict[str, str]:
    """A picklable description of an exception: exception objects themselves may not pickle."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the report
        message = f"<unprintable {type(exc).__name__}>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = ""
    return {"type": type(exc).__qualname__, "message": message, "traceback": tb}


def _dumps(obj: object) -> memoryview:
    return ForkingPickler.dumps(obj)


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_thread_env(workers: int) -> dict[str, str]:
    """BLAS threads for each of ``workers`` processes that share this machine's cores.

    numpy's BLAS starts a thread per core in every process; 25 workers on 2 cores would run
    50 threads that wait for each other in every large matrix product (a search on a big
    index). Variables the user set are left as they are.
    """
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return {name: threads for name in BLAS_THREAD_VARIABLES if name not in os.environ}


def _worker_main(
    conn: Connection,
    init_blob: bytes,
    env: dict[str, str],
    inherited: list[Connection],
) -> None:
    """Body of a worker process: initialize, then run one message at a time until told to stop."""
    # Parent ends of sibling pipes inherited through fork: close them, or the parent dying
    # would not show up as EOF here (and our own death not as EOF there).
    for c in inherited:
        try:
            c.close()
        except OSError:
            pass
    # Ctrl-C reaches the whole process group; the parent decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The environment is applied before the initializer (and, under spawn/forkserver, before
    # its module) is even unpickled, so variables like OMP_NUM_THREADS take effect on import.
    os.environ.update(env)
    try:
        initializer, initargs = ForkingPickler.loads(init_blob)
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in an initializer is a failure too
        try:
            conn.send_bytes(_dumps(("init_error", _describe_exception(exc))))
        except Exception:
            pass
        sys.exit(_INIT_FAILED_EXIT)
    try:
        conn.send_bytes(_dumps(("ready", os.getpid())))
    except OSError:
        return

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            msg = ForkingPickler.loads(data)
            if msg[0] == "stop":
                return
            _, _tag, fn, args = msg
            reply: tuple = ("ok", fn(*args))
        except Exception as exc:  # a task error is a result, not a crash
            reply = ("err", _describe_exception(exc))
        try:
            payload = _dumps(reply)
        except Exception as exc:  # the return value does not pickle
            reply = ("err", _describe_exception(exc))
            reply[1]["message"] = f"task result could not be pickled: {reply[1]['message']}"
            payload = _dumps(reply)
        del reply
        try:
            conn.send_bytes(payload)
        except OSError:
            return


# --------------------------------------------------------------------------------------------
# Parent side


@dataclass(eq=False)
class _Job:
    kind: str  # "task" (a map item) or "call" (a collect call)
    index: int
    attempts: int = 0


@dataclass(eq=False)
class _Worker:
    proc: BaseProcess
    conn: Connection
    sentinel: int
    pid: int
    ready: bool = False  # initializer finished
    job: _Job | None = None  # what it is running now
    eof: bool = False  # its pipe reached end-of-file (it is exiting)
    unusable: bool = False  # sending to it failed; wait for its sentinel
    dead: bool = False
    deadline: float | None = None  # time.monotonic() by which its task must answer
    timed_out: bool = False  # killed for passing the deadline; its sentinel comes next


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _reap(proc: BaseProcess, timeout: float) -> int | None:
    """Join ``proc``, escalating to SIGTERM then SIGKILL, so it never lingers as a zombie.

    Returns its exit code (negative: the signal that killed it).
    """
    proc.join(timeout)
    if proc.exitcode is None:
        proc.terminate()
        proc.join(_TERM_TIMEOUT)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    exitcode = proc.exitcode
    proc.close()  # releases the sentinel fd
    return exitcode


def _kill_workers(workers: list[_Worker]) -> None:
    """Last-resort cleanup (garbage collection or interpreter exit without close())."""
    for w in workers:
        try:
            if w.proc.exitcode is None:
                w.proc.kill()
        except (ValueError, OSError):
            pass
    for w in workers:
        try:
            w.proc.join()
            w.proc.close()
        except (ValueError, OSError):
            pass
        try:
            w.conn.close()
        except OSError:
            pass
    workers.clear()


_live_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


def _shutdown_all() -> None:
    # multiprocessing's own exit hook joins every non-daemonic child, which would hang on idle
    # workers of a pool nobody closed. atexit runs hooks last-in first-out and
    # multiprocessing.util registered its hook at import (above), so this one runs first.
    for pool in list(_live_pools):
        pool.terminate()


atexit.register(_shutdown_all)


class WorkerPool:
    """A fixed number of worker processes that run top-level functions on items.

    Use as a context manager. The constructor returns once every worker has run the
    initializer (so :meth:`worker_pids` reports initialized workers), or raises
    :class:`WorkerInitError`.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        start_method: str | None = None,
        max_retries: int = 2,
        env: dict[str, str] | None = None,
        task_timeout: float | None = None,
    ) -> None:
        workers = settings.whole_number("workers", workers, 1)
        max_retries = settings.whole_number("max_retries", max_retries, 0)
        self.task_timeout = settings.optional_seconds("task_timeout", task_timeout)
        self._ctx = multiprocessing.get_context(start_method)
        self._start_method = self._ctx.get_start_method()
        self.size = workers
        self.max_retries = max_retries
        self.crashes: list[WorkerCrash] = []
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        # Pickled once here: a non-importable initializer fails now, in the caller's frame.
        self._init_blob = bytes(_dumps((initializer, tuple(initargs))))
        self._init_name = (
            "(none)" if initializer is None else getattr(initializer, "__qualname__", repr(initializer))
        )
        self._workers: list[_Worker] = []
        self._startup_failures = 0  # workers in a row that died before becoming ready
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_workers, self._workers)
        self._finalizer.atexit = False  # _shutdown_all handles exit, in the right order
        _live_pools.add(self)
        try:
            for _ in range(workers):
                self._start_worker()
            self._wait_until_ready()
        except BaseException:
            self.terminate()
            raise

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):  # type: ignore[arg-type]
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
        _dumps(fn)  # an unpicklable fn (lambda, closure) is a caller bug: raise it here, once
        seq = list(items)
        outcomes: list[TaskOutcome | None] = [None] * len(seq)
        queue: deque[_Job] = deque(_Job("task", i) for i in range(len(seq)))
        remaining = len(seq)

        def finish(outcome: TaskOutcome) -> None:
            nonlocal remaining
            if outcomes[outcome.index] is not None:  # cannot happen; never report twice
                return
            outcomes[outcome.index] = outcome
            remaining -= 1
            if on_result is not None:
                on_result(outcome.index, outcome)

        def on_reply(w: _Worker, job: _Job, msg: tuple) -> None:
            if msg[0] == "ok":
                finish(TaskOutcome(job.index, True, msg[1], None, job.attempts, w.pid))
            else:
                finish(_failure(job.index, msg[1], job.attempts, w.pid))

        def on_lost(job: _Job, crash: WorkerCrash) -> None:
            if job.attempts > self.max_retries:
                err = {
                    "type": "TaskTimedOut" if crash.timed_out else "WorkerCrashed",
                    "message": f"{crash.describe()}; gave up after {job.attempts} attempts",
                    "traceback": "",
                }
                finish(_failure(job.index, err, job.attempts, crash.pid))
            else:
                queue.appendleft(job)  # retried next, by the first idle worker

        try:
            while remaining:
                for w in self._workers:
                    if not queue:
                        break
                    if not w.ready or w.job is not None or w.eof or w.unusable:
                        continue
                    while queue:
                        job = queue.popleft()
                        try:
                            payload = _dumps(("run", job.index, fn, (seq[job.index],)))
                        except Exception as exc:  # fn or the item does not pickle
                            finish(_failure(job.index, _describe_exception(exc), job.attempts, None))
                            continue
                        if self._send(w, job, payload):
                            break
                        queue.appendleft(job)  # worker already gone: not an attempt
                        break
                if remaining:
                    self._step(on_reply, on_lost)
        except BaseException:
            self.terminate()
            raise
        return outcomes  # type: ignore[return-value]

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
        try:
            self._wait_until_ready()
            targets = list(self._workers)
            payload = _dumps(("run", -1, fn, ()))
            results: dict[int, TaskOutcome] = {}
            by_job: dict[int, int] = {}  # id(job) -> position in targets

            def on_reply(w: _Worker, job: _Job, msg: tuple) -> None:
                pos = by_job[id(job)]
                if msg[0] == "ok":
                    results[pos] = TaskOutcome(pos, True, msg[1], None, 1, w.pid)
                else:
                    results[pos] = _failure(pos, msg[1], 1, w.pid)

            def on_lost(job: _Job, crash: WorkerCrash) -> None:
                pos = by_job[id(job)]
                err = {"type": "WorkerCrashed", "message": crash.describe(), "traceback": ""}
                results[pos] = _failure(pos, err, 1, crash.pid)

            for pos, w in enumerate(targets):
                job = _Job("call", pos, attempts=1)
                by_job[id(job)] = pos
                if not self._send(w, job, payload):
                    err = {"type": "WorkerCrashed", "message": f"worker pid {w.pid} is gone",
                           "traceback": ""}
                    results[pos] = _failure(pos, err, 0, w.pid)
            while len(results) < len(targets):
                self._step(on_reply, on_lost)
                for pos, w in enumerate(targets):  # died before our message was sent
                    if w.dead and pos not in results:
                        err = {"type": "WorkerCrashed", "message": f"worker pid {w.pid} died",
                               "traceback": ""}
                        results[pos] = _failure(pos, err, 0, w.pid)
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
        """Pids of the live workers, after any replacement has finished its initializer."""
        self._check_open()
        try:
            self._wait_until_ready()
        except BaseException:
            self.terminate()
            raise
        return [w.pid for w in self._workers]

    def close(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Ask every worker to stop, wait up to ``timeout`` s, then terminate the stragglers."""
        if self._closed:
            return
        self._closed = True
        workers = list(self._workers)
        stop = _dumps(("stop",))
        for w in workers:
            try:
                w.conn.send_bytes(stop)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for w in workers:
            _reap(w.proc, max(0.0, deadline - time.monotonic()))
            w.conn.close()
        self._workers.clear()
        self._finalizer.detach()
        _live_pools.discard(self)

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL), without waiting for running tasks."""
        self._closed = True
        workers = list(self._workers)
        for w in workers:
            try:
                if w.proc.exitcode is None:
                    w.proc.terminate()
            except (ValueError, OSError):
                pass
        for w in workers:
            try:
                _reap(w.proc, _TERM_TIMEOUT)
            except (ValueError, OSError):
                pass
            w.conn.close()
        self._workers.clear()
        self._finalizer.detach()
        _live_pools.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the worker pool is closed")

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Only a forked child inherits our pipe ends (spawn/forkserver pass just child_conn).
        inherited = (
            [w.conn for w in self._workers] + [parent_conn] if self._start_method == "fork" else []
        )
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._init_blob, self.env, inherited),
            name="embedshare-pool-worker",
        )
        try:
            proc.start()
        finally:
            child_conn.close()  # the child has its own copy; keep none in the parent
        assert proc.pid is not None
        worker = _Worker(proc=proc, conn=parent_conn, sentinel=proc.sentinel, pid=proc.pid)
        self._workers.append(worker)
        return worker

    def _send(self, w: _Worker, job: _Job, payload: memoryview) -> bool:
        """Hand ``job`` to ``w``; False if the worker is already gone (its death comes next)."""
        try:
            w.conn.send_bytes(payload)
        except OSError:
            w.unusable = True
            return False
        if job.kind == "task":
            job.attempts += 1
            if self.task_timeout is not None:
                w.deadline = time.monotonic() + self.task_timeout
        w.job = job
        return True

    def _wait_until_ready(self) -> None:
        def unexpected(*_: object) -> None:
            raise AssertionError("no job should be in flight while waiting for workers")

        while any(not w.ready for w in self._workers):
            self._step(unexpected, unexpected)

    def _step(
        self,
        on_reply: Callable[[_Worker, _Job, tuple], None],
        on_lost: Callable[[_Job, WorkerCrash], None],
    ) -> None:
        """Block until some worker sends something or dies, and handle all of that."""
        waitables: list[Connection | int] = []
        for w in self._workers:
            if not w.eof:
                waitables.append(w.conn)
            waitables.append(w.sentinel)
        deadlines = [w.deadline for w in self._workers if w.deadline is not None and not w.timed_out]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready = set(multiprocessing.connection.wait(waitables, timeout))
        for w in list(self._workers):
            died = w.sentinel in ready
            if w.conn in ready or died:
                # Drain first: a result sent just before dying must count, not be re-run.
                while not w.eof and w.conn.poll():
                    msg = self._recv(w)
                    if msg is None:
                        break
                    self._handle_message(w, msg, on_reply)
            if died:
                self._handle_death(w, on_lost)
            elif w.deadline is not None and not w.timed_out and time.monotonic() >= w.deadline:
                w.timed_out = True  # its sentinel fires once it is gone: handled as a death
                w.proc.kill()
            elif w.eof:
                # The pipe closed, so the worker is exiting; make sure its sentinel fires.
                w.proc.join(_TERM_TIMEOUT)
                if w.proc.exitcode is None:
                    w.proc.kill()

    def _recv(self, w: _Worker) -> tuple | None:
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            w.eof = True
            return None
        try:
            return ForkingPickler.loads(data)
        except Exception as exc:  # e.g. the result's class is not importable in the parent
            err = _describe_exception(exc)
            err["message"] = f"task result could not be unpickled in the parent: {err['message']}"
            return ("err", err)

    def _handle_message(
        self, w: _Worker, msg: tuple, on_reply: Callable[[_Worker, _Job, tuple], None]
    ) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self._startup_failures = 0
        elif kind == "init_error":
            err = msg[1]
            raise WorkerInitError(
                f"initializer {self._init_name} failed in worker pid {w.pid}: "
                f"{err['type']}: {err['message']}\n--- worker traceback ---\n{err['traceback']}"
            )
        elif kind in ("ok", "err"):
            job, w.job, w.deadline = w.job, None, None
            if job is not None:
                on_reply(w, job, msg)

    def _handle_death(self, w: _Worker, on_lost: Callable[[_Job, WorkerCrash], None]) -> None:
        exitcode = _reap(w.proc, _TERM_TIMEOUT)  # the sentinel fired: returns at once
        w.conn.close()
        w.dead = True
        self._workers.remove(w)
        job = w.job
        w.job = None
        task_job = job if job is not None and job.kind == "task" else None
        crash = WorkerCrash(
            pid=w.pid,
            exitcode=exitcode,
            signal=_signal_name(exitcode),
            task_index=task_job.index if task_job else None,
            attempt=task_job.attempts if task_job else None,
            during_startup=not w.ready,
            timed_out=w.timed_out,
        )
        self.crashes.append(crash)
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures > self.max_retries:
                raise WorkerInitError(
                    f"worker startup (initializer {self._init_name}): {self._startup_failures} "
                    f"workers in a row died before it finished; last: {crash.describe()}"
                )
        self._start_worker()
        if job is not None:
            on_lost(job, crash)


def _failure(index: int, err: dict[str, str], attempts: int, pid: int | None) -> TaskOutcome:
    return TaskOutcome(
        index=index,
        ok=False,
        value=None,
        error=f"{err['type']}: {err['message']}",
        attempts=attempts,
        worker_pid=pid,
        error_type=err["type"],
        traceback=err.get("traceback") or None,
    )


def timed_call(payload: tuple[Callable[[Any], Any], Any]) -> tuple[Any, float]:
    """Run ``fn(item)`` and time it in the worker (for the pool's task latency report)."""
    fn, item = payload
    started = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - started
