"""The parent's side of a pool's worker processes: start them, hand each one job, watch, replace.

:class:`WorkerSupervisor` knows processes, pipes and sentinels; which jobs to run and what a
lost job means is :class:`~embedshare.pool.workers.WorkerPool`'s business (its callbacks).
"""

from __future__ import annotations

import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from ..errors import WorkerInitError
from ..util.children import safe_path_while_starting
from .messages import (
    ErrorInfo,
    ErrorItem,
    FromWorker,
    InitFailed,
    Ready,
    Reply,
    ResultItem,
    Stop,
    dumps,
    loads,
)
from .outcomes import WorkerCrash
from .worker import worker_main

# Seconds a worker gets to leave after a stop message, and after SIGTERM, before escalation.
STOP_TIMEOUT = 5.0
TERM_TIMEOUT = 2.0


@dataclass(eq=False)
class Job:
    """Something a worker runs for the parent; a worker holds at most one."""

    index: int
    attempts: int = 0  # how many times it was handed to a worker


class Task(Job):
    """A ``map()`` item: its attempts are counted, it has a deadline, it is retried after a crash."""


class Call(Job):
    """A ``collect()`` call, run once in one given worker (``index``: its place in the list)."""


@dataclass(eq=False)
class WorkerHandle:
    """The parent's view of one worker process."""

    proc: BaseProcess
    conn: Connection
    sentinel: int
    pid: int
    ready: bool = False  # initializer finished
    job: Job | None = None  # what it is running now
    eof: bool = False  # its pipe reached end-of-file (it is exiting)
    unusable: bool = False  # sending to it failed; wait for its sentinel
    dead: bool = False
    deadline: float | None = None  # time.monotonic() by which its task must answer
    timed_out: bool = False  # killed for passing the deadline; its sentinel comes next


OnReply = Callable[[WorkerHandle, Job, Reply], None]
OnLost = Callable[[Job, WorkerCrash], None]


def signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def reap(proc: BaseProcess, timeout: float) -> int | None:
    """Join ``proc``, escalating to SIGTERM then SIGKILL, so it never lingers as a zombie.

    Returns its exit code (negative: the signal that killed it).
    """
    proc.join(timeout)
    if proc.exitcode is None:
        proc.terminate()
        proc.join(TERM_TIMEOUT)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    exitcode = proc.exitcode
    proc.close()  # releases the sentinel fd
    return exitcode


def kill_workers(workers: list[WorkerHandle]) -> None:
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


class WorkerSupervisor:
    """The live workers of one pool, each started with the same initializer and environment.

    ``max_startup_retries``: how many workers in a row may die before their initializer
    finishes before :class:`WorkerInitError` is raised (instead of restarting forever).
    """

    def __init__(
        self,
        ctx: BaseContext,
        init_blob: bytes,
        init_name: str,
        env: dict[str, str],
        max_startup_retries: int,
        task_timeout: float | None,
    ) -> None:
        self._ctx = ctx
        self._start_method = ctx.get_start_method()
        self._init_blob = init_blob
        self._init_name = init_name
        self._env = env
        self._max_startup_retries = max_startup_retries
        self._task_timeout = task_timeout
        self.workers: list[WorkerHandle] = []
        self.crashes: list[WorkerCrash] = []
        self._startup_failures = 0  # workers in a row that died before becoming ready
        self._stepping = 0  # step() calls under way: >0 while a callback of one runs

    def start_worker(self) -> WorkerHandle:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Only a forked child inherits our pipe ends (spawn/forkserver pass just child_conn).
        inherited = [w.conn for w in self.workers] + [parent_conn] if self._start_method == "fork" else []
        # Every concrete context has Process; typeshed's BaseContext does not say so.
        proc: BaseProcess = self._ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_conn, self._init_blob, self._env, inherited),
            name="embedshare-pool-worker",
        )
        try:
            with safe_path_while_starting():  # multiprocessing's `python -c` would put the working folder first
                proc.start()
        finally:
            child_conn.close()  # the child has its own copy; keep none in the parent
        assert proc.pid is not None
        worker = WorkerHandle(proc=proc, conn=parent_conn, sentinel=proc.sentinel, pid=proc.pid)
        self.workers.append(worker)
        return worker

    def send(self, w: WorkerHandle, job: Job, payload: memoryview) -> bool:
        """Hand ``job`` to ``w``; False if the worker is already gone (its death comes next)."""
        try:
            w.conn.send_bytes(payload)
        except OSError:
            w.unusable = True
            return False
        if isinstance(job, Task):
            job.attempts += 1
            if self._task_timeout is not None:
                w.deadline = time.monotonic() + self._task_timeout
        w.job = job
        return True

    @property
    def in_step(self) -> bool:
        """True inside :meth:`step`, i.e. in a callback of one (``map``'s ``on_result``): jobs
        may be in flight, and another step would hand their replies to the wrong callbacks."""
        return self._stepping > 0

    def wait_until_ready(self) -> None:
        def unexpected(*_: object) -> None:
            raise AssertionError("no job should be in flight while waiting for workers")

        while any(not w.ready for w in self.workers):
            self.step(unexpected, unexpected)

    def step(self, on_reply: OnReply, on_lost: OnLost) -> None:
        """Block until some worker sends something or dies, and handle all of that."""
        self._stepping += 1
        try:
            self._step(on_reply, on_lost)
        finally:
            self._stepping -= 1

    def _step(self, on_reply: OnReply, on_lost: OnLost) -> None:
        waitables: list[Connection | int] = []
        for w in self.workers:
            if not w.eof:
                waitables.append(w.conn)
            waitables.append(w.sentinel)
        deadlines = [w.deadline for w in self.workers if w.deadline is not None and not w.timed_out]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready = set(multiprocessing.connection.wait(waitables, timeout))
        for w in list(self.workers):
            died = w.sentinel in ready
            if w.conn in ready or died:
                # Drain first: a result sent just before dying must count, not be re-run.
                while not w.eof and w.conn.poll():
                    message = self._recv(w)
                    if message is None:
                        break
                    self._handle_message(w, message, on_reply)
            if died:
                self._handle_death(w, on_lost)
            elif w.deadline is not None and not w.timed_out and time.monotonic() >= w.deadline:
                w.timed_out = True  # its sentinel fires once it is gone: handled as a death
                w.proc.kill()
            elif w.eof:
                # The pipe closed, so the worker is exiting; make sure its sentinel fires.
                w.proc.join(TERM_TIMEOUT)
                if w.proc.exitcode is None:
                    w.proc.kill()

    def stop(self, timeout: float) -> None:
        """Ask every worker to stop, wait up to ``timeout`` s, then terminate the stragglers."""
        workers = list(self.workers)
        stop = dumps(Stop())
        for w in workers:
            try:
                w.conn.send_bytes(stop)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for w in workers:
            reap(w.proc, max(0.0, deadline - time.monotonic()))
            w.conn.close()
        self.workers.clear()

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM, then SIGKILL), without waiting for running jobs."""
        workers = list(self.workers)
        for w in workers:
            try:
                if w.proc.exitcode is None:
                    w.proc.terminate()
            except (ValueError, OSError):
                pass
        for w in workers:
            try:
                reap(w.proc, TERM_TIMEOUT)
            except (ValueError, OSError):
                pass
            w.conn.close()
        self.workers.clear()

    # -- internals ----------------------------------------------------------------------------

    def _recv(self, w: WorkerHandle) -> FromWorker | None:
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            w.eof = True
            return None
        try:
            message: FromWorker = loads(data)
        except Exception as exc:  # e.g. the result's class is not importable in the parent
            return ErrorItem(ErrorInfo.from_exception(exc, "task result could not be unpickled in the parent"))
        return message

    def _handle_message(self, w: WorkerHandle, message: FromWorker, on_reply: OnReply) -> None:
        if isinstance(message, Ready):
            w.ready = True
            self._startup_failures = 0
        elif isinstance(message, InitFailed):
            error = message.error
            raise WorkerInitError(
                f"initializer {self._init_name} failed in worker pid {w.pid}: "
                f"{error.summary()}\n--- worker traceback ---\n{error.traceback}"
            )
        elif isinstance(message, (ResultItem, ErrorItem)):
            job, w.job, w.deadline = w.job, None, None
            if job is not None:
                on_reply(w, job, message)

    def _handle_death(self, w: WorkerHandle, on_lost: OnLost) -> None:
        exitcode = reap(w.proc, TERM_TIMEOUT)  # the sentinel fired: returns at once
        w.conn.close()
        w.dead = True
        self.workers.remove(w)
        job = w.job
        w.job = None
        task = job if isinstance(job, Task) else None
        crash = WorkerCrash(
            pid=w.pid,
            exitcode=exitcode,
            signal=signal_name(exitcode),
            task_index=task.index if task else None,
            attempt=task.attempts if task else None,
            during_startup=not w.ready,
            timed_out=w.timed_out,
        )
        self.crashes.append(crash)
        if not w.ready:
            self._startup_failures += 1
            if self._startup_failures > self._max_startup_retries:
                raise WorkerInitError(
                    f"worker startup (initializer {self._init_name}): {self._startup_failures} "
                    f"workers in a row died before it finished; last: {crash.describe()}"
                )
        self.start_worker()
        if job is not None:
            on_lost(job, crash)
