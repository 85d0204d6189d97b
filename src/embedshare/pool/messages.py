"""What a pool's parent and its workers say to each other, and how a failure is described.

Every message is a small named tuple, typed as loky's ``_CallItem`` / ``_ResultItem`` are: the
parent sends a :class:`CallItem` or :class:`Stop`; a worker answers :class:`Ready` or
:class:`InitFailed` once, then one :class:`ResultItem` or :class:`ErrorItem` per call. A worker
holds one call at a time, so the parent knows which job a reply belongs to without an id.

A failure travels as an :class:`ErrorInfo` (type name, message, traceback text), never as a
pickled exception object: exceptions may not pickle, and a plain record is all a report needs.
:meth:`ErrorInfo.from_exception` and :meth:`ErrorInfo.crash` are the only two ways one is made.

Transport: messages between the parent and its workers are pickled (like concurrent.futures)
and travel over anonymous ``multiprocessing`` pipes. That is acceptable because only the
parent and its own child processes hold those pipe ends - there is no socket or named path
another process could connect to. Under the fork start method a child also inherits the parent
ends of its siblings' pipes; each forked worker closes those at once so that a dead parent or
sibling is seen as end-of-file rather than hanging.

Every worker imports this module: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from traceback import format_exception
from typing import Any, NamedTuple

# The error types of a task that never finished: its worker kept dying (the name of
# outcomes.WorkerCrashed), or it ran past task_timeout every time.
CRASHED = "WorkerCrashed"
TIMED_OUT = "TaskTimedOut"


class ErrorInfo(NamedTuple):
    """A failure as plain text: what a task's outcome reports and the parent may raise."""

    type_name: str  # e.g. "ValueError", or CRASHED
    message: str
    traceback: str = ""  # the worker-side traceback text, when there is one

    @classmethod
    def from_exception(cls, exc: BaseException, context: str = "") -> ErrorInfo:
        """Describe ``exc``; ``context`` (e.g. "task result could not be pickled") goes first."""
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not lose the report
            message = f"<unprintable {type(exc).__name__}>"
        try:
            text = "".join(format_exception(exc))
        except Exception:
            text = ""
        return cls(type(exc).__qualname__, f"{context}: {message}" if context else message, text)

    @classmethod
    def crash(cls, message: str, *, timed_out: bool = False) -> ErrorInfo:
        """A job that never answered: its worker died, or was killed for passing task_timeout."""
        return cls(TIMED_OUT if timed_out else CRASHED, message)

    def summary(self) -> str:
        """``"TypeName: message"``."""
        return f"{self.type_name}: {self.message}"


class Initializer(NamedTuple):
    """What a new worker runs before its first call (pickled once, when the pool starts)."""

    fn: Callable[..., None] | None
    args: tuple[Any, ...]


# -- parent to worker ---------------------------------------------------------------------------


class CallItem(NamedTuple):
    """Run ``fn(*args)`` and answer with a :class:`ResultItem` or an :class:`ErrorItem`."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def __call__(self) -> Any:
        return self.fn(*self.args)


class Stop(NamedTuple):
    """Leave the loop and exit."""


# -- worker to parent ---------------------------------------------------------------------------


class Ready(NamedTuple):
    """The initializer finished: the worker takes calls."""


class InitFailed(NamedTuple):
    """The initializer raised; the worker exits next."""

    error: ErrorInfo


class ResultItem(NamedTuple):
    """A call returned ``value``."""

    value: Any


class ErrorItem(NamedTuple):
    """A call raised (a result, not a crash: never retried), or its result did not pickle."""

    error: ErrorInfo


Reply = ResultItem | ErrorItem
FromWorker = Ready | InitFailed | ResultItem | ErrorItem
ToWorker = CallItem | Stop


def dumps(obj: object) -> memoryview:
    """Pickle for the private pipe (``ForkingPickler`` also sends connections and fds)."""
    return ForkingPickler.dumps(obj)


def loads(data: bytes) -> Any:
    return ForkingPickler.loads(data)
