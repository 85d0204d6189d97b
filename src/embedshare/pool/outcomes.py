"""What a :class:`~embedshare.pool.workers.WorkerPool` reports: each item's outcome, each
worker death; the errors it raises are defined in ``errors.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PoolError, TaskFailed, WorkerCrashed, WorkerInitError
from .messages import ErrorInfo, Reply, ResultItem

__all__ = ["PoolError", "TaskFailed", "TaskOutcome", "WorkerCrash", "WorkerCrashed", "WorkerInitError"]


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

    @classmethod
    def failed(cls, index: int, error: ErrorInfo, attempts: int, worker_pid: int | None) -> TaskOutcome:
        return cls(
            index=index,
            ok=False,
            error=error.summary(),
            attempts=attempts,
            worker_pid=worker_pid,
            error_type=error.type_name,
            traceback=error.traceback or None,
        )

    @classmethod
    def of_reply(cls, index: int, reply: Reply, attempts: int, worker_pid: int) -> TaskOutcome:
        """The outcome a worker's answer to a call means."""
        if isinstance(reply, ResultItem):
            return cls(index=index, ok=True, value=reply.value, attempts=attempts, worker_pid=worker_pid)
        return cls.failed(index, reply.error, attempts, worker_pid)


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
