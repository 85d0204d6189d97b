"""Workers forked from a forkserver that has imported, once, what every worker needs.

A spawned worker is a new interpreter that imports numpy and embedshare's client itself: none
of those pages are shared, and 25 such workers cost ~19 MB each. A worker forked from a process
that has already imported them shares those pages copy-on-write with its siblings, and is ready
sooner (issue 20 measured 25 workers at 476 MB spawned against 181 MB plus 20 MB for the
forkserver, ready in 0.6 s instead of 2.9 s).

Each pool starts its own forkserver (multiprocessing's ``ForkServer``, not the process-wide one)
and stops it when it closes:

* the modules are the pool's, even where the program's own forkserver already runs (Python 3.14
  starts workers from one by default on Linux) or imports other things;
* it starts with the pool, so it carries the environment of that moment. A forkserver started
  earlier hands its workers the environment of then (another service's EMBEDSHARE_ADDRESS, say);
  the pool's own variables are also given to each worker explicitly (``worker_main``'s ``env``);
* nothing of the pool stays behind: no process, and no pool settings in the program's forkserver.

What it holds: ``forkserver_imports`` and the user's ``preload_modules``, imported; no thread,
no open store. It imports them with the parent's ``sys.path`` (``forkserver_imports`` applies it
first, where multiprocessing does not), so nothing from the working folder is added. A worker
forked from it gets the parent's sys.path and working folder and runs the parent's main module
again, as a spawned worker does (so the task functions of a script are found).
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing
import os
import signal
import warnings
from collections.abc import Callable, Sequence
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import BaseContext, ForkServerProcess, set_spawning_popen
from typing import Any

from ..errors import PoolError
from .worker import FORKSERVER_IMPORTS


def preferred_start_method() -> str:
    """``forkserver`` where this platform has it (Linux, macOS), else ``spawn``."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def check_preload(modules: Sequence[str]) -> tuple[str, ...]:
    """The module names, each checked to exist here: the forkserver skips a missing one silently."""
    if isinstance(modules, str):
        raise TypeError(f"preload_modules must be a list of module names, not the string {modules!r}")
    names = tuple(modules)
    for name in names:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"preload_modules: {name!r} is not a module name")
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            raise ValueError(f"preload_modules: no module named {name!r} on this sys.path")
    return names


def warn_if_texts_name_modules(texts: Sequence[str]) -> None:
    """Warn when a pool's ``preload`` (texts to embed at the service's start) holds only names of
    importable modules: almost surely meant as ``preload_modules``, which would otherwise be a
    silent mistake (the names embedded as texts, the workers' forkserver without the modules)."""
    if not isinstance(texts, list | tuple) or not 0 < len(texts) <= 32:  # a generator is not read here
        return
    for text in texts:
        if not isinstance(text, str) or not all(part.isidentifier() for part in text.split(".")):
            return
        try:  # the top-level name only: finding a dotted name imports its parents
            if importlib.util.find_spec(text.split(".")[0]) is None:
                return
        except (ImportError, ValueError):
            return
    warnings.warn(
        f"SharedPool(preload={list(texts)!r}) embeds these as texts when the service starts; "
        "to import modules in the workers' forkserver, pass preload_modules=[...]",
        UserWarning,
        stacklevel=3,
    )


class PreloadedForkServer(BaseContext):
    """A start method: workers forked from this pool's own forkserver, which imported ``modules``.

    The supervisor uses what it uses of any multiprocessing context: ``Process``, ``Pipe`` and
    ``get_start_method``. :meth:`stop` ends the forkserver once the pool's workers are gone.
    """

    _name = "forkserver"

    def __init__(self, modules: Sequence[str] = ()) -> None:
        self._server = forkserver.ForkServer()
        self._server.set_forkserver_preload([FORKSERVER_IMPORTS, *modules])  # the user's, checked by the pool

    def Process(self, target: Callable[..., object], args: tuple[Any, ...], name: str) -> ServerForkedProcess:
        process = ServerForkedProcess(target=target, args=args, name=name)
        process.server = self._server
        return process

    @property
    def pid(self) -> int | None:
        """The forkserver's pid once it runs (multiprocessing keeps it private: None if not found)."""
        pid = getattr(self._server, "_forkserver_pid", None)
        return pid if isinstance(pid, int) else None

    def stop(self) -> None:
        """End the forkserver (its workers are gone: nothing else forks from it)."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # not only the "alive" pipe: a worker's child may hold it
        except ProcessLookupError:
            pass
        stop = getattr(self._server, "_stop", None)  # reaps it and removes its socket file
        if stop is not None:
            try:
                stop()
            except ChildProcessError:  # reaped already
                pass


class ServerForkedProcess(ForkServerProcess):
    """A process the pool's own forkserver forks (``server``), not the process-wide one."""

    server: forkserver.ForkServer

    @staticmethod
    def _Popen(process_obj: ServerForkedProcess) -> ServerPopen:  # type: ignore[override]
        return ServerPopen(process_obj)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("server", None)  # the parent's handle on the server: not the child's business
        return state


class ServerPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver launch, asking the process's own ``server`` to fork it.

    The protocol is multiprocessing's: the preparation data and the pickled process go down a
    pipe to the forked child, whose pid comes back on the status pipe (the sentinel).
    """

    _fds: list[int]  # the fds the child gets (set by multiprocessing's Popen; not in its stub)

    def _launch(self, process_obj: ServerForkedProcess) -> None:
        data = io.BytesIO()
        set_spawning_popen(self)  # lets the pipes among the args register their fds (self._fds)
        try:
            reduction.dump(spawn.get_preparation_data(process_obj.name), data)
            reduction.dump(process_obj, data)
        finally:
            set_spawning_popen(None)
        try:
            self.sentinel, data_w = process_obj.server.connect_to_new_process(self._fds)
        except OSError as exc:
            raise PoolError(f"the pool's forkserver could not be reached: {exc}") from exc
        # The child sees its parent gone when this copy of the data pipe closes.
        parent_w = os.dup(data_w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(data_w, "wb", closefd=True) as pipe:
            pipe.write(data.getbuffer())
        try:
            self.pid = forkserver.read_signed(self.sentinel)
        except EOFError:
            raise PoolError(
                "the pool's forkserver exited before it forked a worker: a module it imports "
                "(preload_modules, or embedshare's own) failed; its traceback is on stderr"
            ) from None
