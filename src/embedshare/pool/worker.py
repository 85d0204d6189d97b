"""The body of a pool's worker process: initialize, then run one call at a time until told to stop;
and ``timed_call``, how a task is run to be timed.

Imports only the messages and the BLAS settings (standard library): a module a worker imports
costs its memory in every worker, and its import time in the worker's first task.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..util.children import forget_safe_path
from .blas import use_blas_threads
from .messages import (
    ErrorInfo,
    ErrorItem,
    InitFailed,
    Initializer,
    Ready,
    Reply,
    ResultItem,
    Stop,
    ToWorker,
    dumps,
    loads,
)

# The module a pool's forkserver imports first (forkserver.py): a worker forked from it has it.
FORKSERVER_IMPORTS = "embedshare.pool.forkserver_imports"
# Exit code of a worker whose initializer raised (it has already reported the traceback).
INIT_FAILED_EXIT = 3


def worker_main(
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
    forget_safe_path()  # set only while the pool started this process (util/children.py)
    # Forked from the pool's forkserver: numpy's BLAS was loaded there with one thread.
    preloaded = sys.modules.get(FORKSERVER_IMPORTS)
    try:
        if preloaded is not None:
            # What the forkserver imported stays shared only while nothing writes to its pages. A
            # full collection writes to every object it tracks (6.8 MB of pages copied in a worker,
            # measured; 0.3 MB once frozen): from now on it leaves the inherited ones alone.
            gc.freeze()
            use_blas_threads(preloaded.LOADED_BLAS_THREADS)
        init: Initializer = loads(init_blob)
        if init.fn is not None:
            init.fn(*init.args)
    except BaseException as exc:  # SystemExit in an initializer is a failure too
        try:
            conn.send_bytes(dumps(InitFailed(ErrorInfo.from_exception(exc))))
        except Exception:
            pass
        sys.exit(INIT_FAILED_EXIT)
    try:
        conn.send_bytes(dumps(Ready()))
    except OSError:
        return

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        try:
            message: ToWorker = loads(data)
            if isinstance(message, Stop):
                return
            reply: Reply = ResultItem(message())
        except Exception as exc:  # a task error is a result, not a crash
            reply = ErrorItem(ErrorInfo.from_exception(exc))
        try:
            payload = dumps(reply)
        except Exception as exc:  # the return value does not pickle
            payload = dumps(ErrorItem(ErrorInfo.from_exception(exc, "task result could not be pickled")))
        del reply
        try:
            conn.send_bytes(payload)
        except OSError:
            return


# -- what a pool's task runs as, to be timed (SharedPool, the demo and the benchmarks) ------------
# Here, with the worker's loop, and not beside WorkerPool: a worker unpickling ``timed_call``
# imports this module, which it has already, and not the parent's side of the pool.


class Timed(NamedTuple):
    """A task's result and the seconds it ran in its worker (the pool's task latency)."""

    value: Any
    seconds: float


def timed_call(payload: tuple[Callable[[Any], Any], Any]) -> Timed:
    """Run ``fn(item)`` and time it in the worker (for the pool's task latency report)."""
    fn, item = payload
    started = time.perf_counter()
    value = fn(item)
    return Timed(value, time.perf_counter() - started)
