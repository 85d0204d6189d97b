"""The cache's LMDB environment: opened safely, once per process and folder, shared by handles.

- LMDB forbids opening one environment twice in a process (py-lmdb refuses it), yet two
  managers of one store (two models, or a manager and the fallback of a shared one) each hold
  a cache handle. Handles of the same folder in the same process share one environment
  (:func:`acquire_shared_env`); the last to let go closes it (:func:`release_shared_env`).
- A map resize must wait until no transaction of the process is open (:class:`TxnGuard`, one
  per environment, so it covers every handle's transactions).
- Opening (:func:`open_environment`) refuses files another user could read or swap, a data
  file shorter than its own metadata, and a new lock file on a full disk, each with a clear
  ``CacheError`` instead of a SIGBUS.

How a handle notices that its process forked, and reopens, is ``cache.EmbeddingCache``'s part:
that check runs on every cache hit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import lmdb

from ..errors import CacheError, CacheFullError, UnsafeStoreError
from . import cache_format
from .cache_errors import damaged
from .files import PRIVATE_FILE_MODE, private_dir, private_file

_OPEN_ATTEMPTS = 100  # opens that lose the race against a growing map (see open_environment)
_READER_SLOT_BYTES = 64  # LMDB's reader table: one cache line per reader slot


class TxnGuard:
    """Lets any number of transactions run, or one map resize, never both.

    LMDB requires that no transaction of this process is open while the map size changes;
    py-lmdb does not check it, so we do. ``lock`` is a plain ``threading.Lock`` that the cache
    hit path takes directly (``enter``/``leave``): two uncontended acquires cost a quarter of
    what two ``with condition:`` blocks cost, which was a third of a hit.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self.active = 0
        self.resizing = False

    def enter(self) -> None:
        self.lock.acquire()
        while self.resizing:  # rare: the condition shares the lock we hold
            self._cond.wait()
        self.active += 1
        self.lock.release()

    def leave(self) -> None:
        self.lock.acquire()
        self.active -= 1
        if self.resizing and not self.active:
            self._cond.notify_all()
        self.lock.release()

    @contextmanager
    def txn(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self.resizing:
                self._cond.wait()
            self.resizing = True
            while self.active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self.resizing = False
                self._cond.notify_all()


# -- one environment per process and folder ---------------------------------------------------


class EnvKey(NamedTuple):
    """Which environment: a forked child opens its own, so the process is part of the key."""

    pid: int
    folder: str  # resolved


class SharedEnv:
    """One open LMDB environment of this process, and the handles using it."""

    def __init__(self, env: lmdb.Environment, readonly: bool) -> None:
        self.env = env
        self.guard = TxnGuard()  # shared: a resize must wait for every handle's transactions
        self.readonly = readonly
        self.handles = 0


_shared_envs: dict[EnvKey, SharedEnv] = {}
_shared_envs_lock = threading.RLock()  # re-entrant: a finalizer may run during an open


def _after_fork_in_child() -> None:
    global _shared_envs_lock
    _shared_envs_lock = threading.RLock()  # another thread may have held it when the process forked


os.register_at_fork(after_in_child=_after_fork_in_child)


def acquire_shared_env(
    path: Path, readonly: bool, open_env: Callable[[], lmdb.Environment]
) -> tuple[EnvKey, SharedEnv]:
    """This process's environment of ``path``, opened with ``open_env`` if it has none yet.

    The caller counts as one more handle until it calls :func:`release_shared_env` with the
    returned key. A folder open read-only in this process cannot also be opened for writing.
    """
    pid = os.getpid()
    key = EnvKey(pid, str(path.resolve()))
    with _shared_envs_lock:
        shared = _shared_envs.get(key)
        if shared is None:
            # An environment of this folder inherited through fork is still open as far as
            # py-lmdb is concerned, which refuses a new open: close it (this releases nothing of
            # the parent's: its reader slots carry the parent's PID, fcntl locks are not inherited).
            for other in [k for k in _shared_envs if k.folder == key.folder and k.pid != pid]:
                _shared_envs.pop(other).env.close()
            shared = _shared_envs[key] = SharedEnv(open_env(), readonly)
        elif shared.readonly and not readonly:
            raise CacheError(
                f"cannot open embedding cache at {path} for writing: this process already has it open read-only"
            )
        shared.handles += 1
    return key, shared


def release_shared_env(key: EnvKey, env: lmdb.Environment) -> None:
    """A handle is done with ``env`` (closed or garbage-collected); close it after the last."""
    with _shared_envs_lock:
        shared = _shared_envs.get(key)
        if shared is None or shared.env is not env:
            return
        shared.handles -= 1
        if shared.handles <= 0:
            del _shared_envs[key]
            env.close()


# -- opening ----------------------------------------------------------------------------------


def open_environment(path: Path, *, readonly: bool, map_size: int, max_readers: int, durable: bool) -> lmdb.Environment:
    """Open the environment, retrying while other processes grow the data under us.

    LMDB sizes a new map to at least the data committed when it opens; py-lmdb then begins
    a transaction to open the main database, and a commit by another process in between
    that grew the data past that size makes it fail with ``MapResizedError``. A new open
    maps the new size, so it is retried (each retry means another process made progress).
    """
    try:  # owner-only: another user must neither read the vectors nor swap data.mdb
        private_dir(path, create=not readonly)
    except UnsafeStoreError:
        raise
    except OSError as exc:
        verb = "open" if readonly else "create"
        raise CacheError(f"cannot {verb} embedding cache folder {path}: {exc}") from None
    if not readonly:
        _check_room_for_a_new_lock_file(path, max_readers)
    _check_files(path)  # before LMDB reads a byte of them
    for _ in range(_OPEN_ATTEMPTS):
        try:
            env = lmdb.open(
                str(path),
                map_size=map_size,
                max_readers=max_readers,
                readonly=readonly,
                lock=True,
                sync=durable,
                metasync=durable,
                readahead=False,
                max_dbs=0,
                mode=PRIVATE_FILE_MODE,  # data.mdb and lock.mdb are born 0600
            )
        except lmdb.MapResizedError:
            continue
        except cache_format.DAMAGE_ERRORS as exc:
            raise damaged(path, str(exc)) from None
        except lmdb.Error as exc:
            raise CacheError(f"cannot open embedding cache at {path}: {exc}") from None
        problem = cache_format.truncation(env, path / "data.mdb")
        if problem is not None:  # reading past the end of the map would be a SIGBUS
            env.close()
            raise damaged(path, problem)
        try:
            _check_files(path)  # the new ones too, whatever the umask made of them
            env.reader_check()  # free reader slots left by processes that died
        except lmdb.Error as exc:
            env.close()
            raise CacheError(f"cannot open embedding cache at {path}: {exc}") from None
        except BaseException:
            env.close()
            raise
        return env
    raise CacheError(
        f"cannot open embedding cache at {path}: other processes kept growing it "
        f"during {_OPEN_ATTEMPTS} attempts to open it"
    )


def _check_room_for_a_new_lock_file(path: Path, max_readers: int) -> None:
    """Refuse to create a cache on a full disk: LMDB maps its new lock file, sized for
    ``max_readers``, and writes into it, and a page the disk has no room for is a SIGBUS
    that kills the process instead of an error."""
    if (path / "lock.mdb").exists():
        return
    needed = max_readers * _READER_SLOT_BYTES + (1 << 16)
    free = os.statvfs(path)
    available = free.f_bavail * free.f_frsize
    if available < needed:
        raise CacheFullError(
            f"cannot create embedding cache at {path}: the disk is full "
            f"({available} bytes free, {needed} needed for its lock file)"
        )


def _check_files(path: Path) -> None:
    """data.mdb and lock.mdb: ours and 0600 (an older store's 0644 is closed), else refused."""
    for name in ("data.mdb", "lock.mdb"):
        try:
            private_file(path / name)
        except FileNotFoundError:
            pass
