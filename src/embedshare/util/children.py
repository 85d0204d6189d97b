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

Not ``-I`` (isolated mode): it also ignores ``PYTHONPATH`` and the user's site-packages, where
users keep their own modules (preload helpers, a ``pip install --user`` embedshare); both are
the user's own choice, so they are kept.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
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
