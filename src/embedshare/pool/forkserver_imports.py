"""Imported by a pool's forkserver, and only there: what every worker forked from it shares.

Importing is all this does. It opens no store and starts no thread: a forked child inherits
only the thread that forked it, so a thread here (or a lock one holds) would be broken in every
worker, and an LMDB environment must not be used across a fork. numpy loads with one BLAS thread
for that reason (OpenBLAS starts its threads when it loads); the environment is put back at once,
and a worker that should run more threads sets them after the fork (``blas.use_blas_threads``).

The modules are the ones a worker loads to start, to attach and to run
``get_embedding_manager()``'s hits, misses and searches: multiprocessing's start-up (runpy, the
process class), its loop, the client, the store's readers and their libraries (lmdb, msgpack,
xxhash). Each one a worker imported itself would be private to it (~1 MB for runpy alone).
Not ``logging`` nor ``concurrent.futures``: a worker loads them only when it needs them, and so
it stays.
"""

from __future__ import annotations

import os
import sys

from ..util.children import forget_safe_path
from .blas import BLAS_THREAD_VARIABLES


def _parents_sys_path() -> list[str] | None:
    """The parent's sys.path, which multiprocessing hands to the forkserver's ``main``.

    Python 3.11 to 3.13 pass it but never apply it: the forkserver imports with the sys.path of
    ``python -c``, whose first entry is the working folder (a ``numpy.py`` there would be the
    numpy of every worker), and without the parent's script folder.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            value = frame.f_locals.get("sys_path")
            return list(value) if isinstance(value, list) else None
        frame = frame.f_back  # type: ignore[assignment]  # None past the outermost frame
    return None


# First, before anything is imported from it: the parent's sys.path, else at least not the
# working folder that ``-c`` put first.
sys.path[:] = _parents_sys_path() or [p for p in sys.path if p != ""]
forget_safe_path()  # the workers forked from here get the environment the user had

# The BLAS thread count numpy is loaded with here; what a forked worker starts from.
LOADED_BLAS_THREADS = 1

_saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
os.environ.update(dict.fromkeys(BLAS_THREAD_VARIABLES, str(LOADED_BLAS_THREADS)))
try:
    import numpy  # noqa: F401  (imported for the workers)
finally:
    for _name, _value in _saved.items():
        if _value is None:
            os.environ.pop(_name, None)
        else:
            os.environ[_name] = _value

import runpy  # noqa: E402, F401  (runs the parent's main module in each worker)

from .. import access  # noqa: E402, F401  (the client: manager, sources, store readers, lmdb)

# the worker's process class, its loop, its initializer
from . import attach, forkserver, worker  # noqa: E402, F401
