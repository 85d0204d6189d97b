"""How embedshare starts a Python interpreter of its own: never importing from a folder that
another user may write.

``python -m X`` and ``python -c CODE`` put the working folder first on ``sys.path``: started from
a shared folder (a 1777 one under /tmp), a ``numpy.py`` planted there by another user would run
as whoever started embedshare. Every child (the service, the ONNX graph build, bench and demo
children) is started through :func:`python_child`, which closes each way in:

- ``-P`` (Python 3.11+): the script's folder or the working folder is not prepended to
  ``sys.path``. ``multiprocessing`` passes it on to the processes such a child spawns.
- An empty entry in ``PYTHONPATH`` (``PYTHONPATH=$PYTHONPATH:/x`` with ``PYTHONPATH`` unset)
  means the working folder, even under ``-P``: it is dropped, and a relative entry is made
  absolute against the caller's working folder, the one it was written for.
- The child runs in a folder the user owns that no one else may write (:func:`private_cwd`).

multiprocessing starts its own children (a pool's spawned workers, its forkserver) as
``python -c``, which also puts the working folder first, and they import stdlib modules
(``socket``, ``selectors``, ``runpy``) and the forkserver's preloads before they apply the
parent's ``sys.path``. The pool starts each one inside :func:`safe_path_while_starting`
(``PYTHONSAFEPATH=1``, which is ``-P``), and the child takes the variable out of its own
environment again (:func:`forget_safe_path`), so the user's tasks run in the environment they had.

Not ``-I`` (isolated mode): it also ignores ``PYTHONPATH`` and the user's site-packages, where
users keep their own modules (preload helpers, a ``pip install --user`` embedshare); both are
the user's own choice, so they are kept.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypedDict


class PythonChild(TypedDict):
    """The ``subprocess.Popen`` / ``subprocess.run`` arguments of a child interpreter."""

    args: list[str]
    cwd: str
    env: dict[str, str]


def python_child(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> PythonChild:
    """``python -P ARGS`` to run in ``cwd`` if it is private to us (else :func:`private_cwd`),
    with ``env`` (default ``os.environ``) minus the ``PYTHONPATH`` entries that mean "here".
    ``python`` is this interpreter unless another is named (the bench's baseline checkout).

    Use as ``subprocess.run(**python_child("-m", "module", ...), ...)``.
    """
    child_env = dict(os.environ if env is None else env)
    if "PYTHONPATH" in child_env:
        child_env["PYTHONPATH"] = safe_python_path(child_env["PYTHONPATH"])
    return {"args": [python or sys.executable, "-P", *args], "cwd": private_cwd(cwd), "env": child_env}


def safe_python_path(value: str) -> str:
    """``value`` without empty entries (the working folder), its relative entries made absolute."""
    entries = [entry for entry in value.split(os.pathsep) if entry]
    return os.pathsep.join(os.path.abspath(entry) for entry in entries)


def private_cwd(preferred: str | os.PathLike[str] | None = None) -> str:
    """``preferred`` if it is a folder of ours that no one else may write, else the home folder
    if it is, else ``/`` (only root may write it)."""
    for candidate in (preferred, os.path.expanduser("~")):
        if candidate is not None and _owned_and_closed(Path(candidate)):
            return str(Path(candidate).resolve())
    return "/"


def _owned_and_closed(folder: Path) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


SAFE_PATH = "PYTHONSAFEPATH"
SAFE_PATH_SET_BY_US = "EMBEDSHARE_SAFE_PATH_SET"  # the child knows the variable was ours, not the user's
_environ_lock = threading.Lock()


@contextlib.contextmanager
def safe_path_while_starting() -> Iterator[None]:
    """``PYTHONSAFEPATH=1`` in this process's environment while multiprocessing starts a child.

    multiprocessing takes neither arguments nor an environment for the interpreters it starts;
    they inherit this process's. Another thread that starts a process meanwhile gets the
    variable too, which only keeps its working folder off its ``sys.path``.
    """
    if os.environ.get(SAFE_PATH):
        yield  # the user's own: children inherit it anyway
        return
    with _environ_lock:
        os.environ[SAFE_PATH] = os.environ[SAFE_PATH_SET_BY_US] = "1"
        try:
            yield
        finally:
            del os.environ[SAFE_PATH], os.environ[SAFE_PATH_SET_BY_US]


def forget_safe_path() -> None:
    """In a child started under :func:`safe_path_while_starting`: the environment as the user had
    it, so that what the child starts in turn (a task's own ``python -m``) behaves as it would."""
    if os.environ.pop(SAFE_PATH_SET_BY_US, None):
        os.environ.pop(SAFE_PATH, None)
