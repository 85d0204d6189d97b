"""The persistent embedding cache: LMDB, shared by every process of a machine.

Why LMDB: readers in any number of processes read the same memory map with no lock and no
copy, writers commit whole transactions (a process killed mid-write leaves the last committed
state), and a get in a read transaction costs about a microsecond.

- Key: 16-byte blake2b of ``model_id`` and the text, so vectors of one model are never found
  for another. Value: the float32 bytes of one L2-normalised vector and their checksum
  (``cache_format``). A value that fails its checksum, is of the old unchecked format or has
  the wrong length is a miss, counted, recomputed and rewritten: never returned.
- A data file shorter than its own metadata says is refused at open (``CacheDamagedError``),
  and LMDB's own errors about damaged pages become ``CacheDamagedError`` too, naming the path
  and ``embedshare cache reset``.
- Reads are zero-copy: ``np.frombuffer`` straight on the map inside a read transaction, copied
  once into the caller's result array (a buffer must not outlive its transaction: LMDB reuses
  freed pages).
- After ``fork`` the child must not use its parent's environment (LMDB's rule); every call
  checks whether the process forked since the handle opened it, and reopens. Handles of one
  folder share the process's one environment, opened with the checks of ``cache_env``.
- When the map is full it grows (doubling) instead of failing; other processes adopt the new
  size when LMDB tells them (``MapResizedError``).
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import lmdb
import numpy as np

from ..errors import CacheError, CacheFullError
from ..util.digests import blake2b
from ..util.lazylog import LazyLogger
from . import cache_format
from .cache_env import EnvKey, TxnGuard, acquire_shared_env, open_environment, release_shared_env
from .cache_errors import damaged, disk_full, read_error, readers_full

if TYPE_CHECKING:
    from .vector_cache import VectorCache

log = LazyLogger(__name__)  # logging is imported only if something is logged

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB of address space; the file only grows as data is written
DEFAULT_MAX_MAP_SIZE = 1 << 40
DEFAULT_MAX_READERS = 4096  # slots for concurrent read transactions: processes x threads
_FLOAT32 = np.dtype(np.float32)
_digest = cache_format.digest


def cache_key(model_id: str, text: str) -> bytes:
    """The LMDB key of ``text`` embedded by ``model_id``."""
    h = blake2b(digest_size=16)
    h.update(model_id.encode("utf-8"))
    h.update(b"\x00")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


# Forks this process descends from. A handle remembers the value it opened under; when it
# differs, the process is a forked child and must open its own environment. Cheaper than
# comparing os.getpid() (a system call) on every cache hit; a global of this module because
# get_one reads it on every hit.
_forks = 0


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class Lookup:
    """A batch of texts looked up in the cache: the vectors found, and the misses, each once.

    Compute ``miss_texts`` (whoever computes: a model, the service), then ``fill`` puts the
    vectors in every row that asked for them.
    """

    vectors: np.ndarray  # (n, dim): cached rows filled, miss rows filled by fill()
    keys: list[bytes]
    missing: np.ndarray  # row indices not found
    miss_keys: list[bytes]  # the distinct keys of the misses, in first-seen order
    miss_texts: list[str]

    def fill(self, computed: np.ndarray) -> np.ndarray:
        row_of = {key: row for row, key in enumerate(self.miss_keys)}
        for i in self.missing:
            self.vectors[i] = computed[row_of[self.keys[i]]]
        return self.vectors


def lookup(cache: VectorCache, texts: Sequence[str]) -> Lookup:
    """Read the cached vectors of ``texts`` and list their misses, de-duplicated.

    Any ``VectorCache`` (``vector_cache.py``): the benchmarks' Manager-dict cache too.
    """
    keys = [cache.key(t) for t in texts]
    out = np.empty((len(keys), cache.dim), dtype=np.float32)
    found = cache.get_many_into(keys, out) if keys else np.zeros(0, dtype=bool)
    missing = np.flatnonzero(~found)
    unique: dict[bytes, str] = {}
    for i in missing.tolist():
        unique.setdefault(keys[i], texts[i])
    return Lookup(out, keys, missing, list(unique), list(unique.values()))


class EmbeddingCache:
    """A process- and thread-safe cache of vectors for one model.

    ``readonly=True`` opens it for readers only (workers of a shared service, which never
    write); the service or a local manager opens it read-write.
    """

    def __init__(
        self,
        path: str | Path,
        model_id: str,
        dim: int,
        *,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        max_readers: int = DEFAULT_MAX_READERS,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.model_id = model_id
        self.dim = int(dim)
        self.readonly = readonly
        self._nbytes = self.dim * 4
        self._value_nbytes = cache_format.sealed_size(self.dim)
        self._shape = (self.dim,)
        # Stored values this handle replaced because they failed verification (put_many_keys):
        # each damaged value is counted once, when it is repaired, however often it was read.
        self.corrupt_vectors = 0  # checksum mismatch or a wrong length
        self.old_format_vectors = 0  # written before values carried a checksum
        self._damage_lock = threading.Lock()
        # The model half of every key, hashed once: a key is then one copy, update and digest.
        self._key_prefix = blake2b(model_id.encode("utf-8") + b"\x00", digest_size=16)
        self._map_size = map_size
        self._max_map_size = max_map_size
        self._max_readers = max_readers
        self._durable = durable
        self._guard: TxnGuard  # the shared environment's: _env_for_this_process() below sets it
        self._open_lock = threading.Lock()
        self._env: lmdb.Environment | None = None
        self._opened_at_fork = -1  # the value of _forks when this process opened it
        self._release: weakref.finalize[[EnvKey, lmdb.Environment], EmbeddingCache] | None = None
        self._env_for_this_process()

    # -- opening -------------------------------------------------------------------------

    def _env_for_this_process(self) -> lmdb.Environment:
        env = self._env
        if env is not None and self._opened_at_fork == _forks:
            return env
        with self._open_lock:
            if self._env is not None and self._opened_at_fork == _forks:
                return self._env
            if self._env is not None:
                # Inherited through fork: LMDB forbids using it here. Closing it in the child
                # releases nothing of the parent's (its reader slots carry the parent's PID and
                # fcntl locks are not inherited), and py-lmdb refuses a second open otherwise.
                self._env.close()
                self._env = None
                if self._release is not None:
                    self._release.detach()  # the parent's entry is not this process's
            key, shared = acquire_shared_env(
                self.path,
                self.readonly,
                functools.partial(
                    open_environment,
                    self.path,
                    readonly=self.readonly,
                    map_size=self._map_size,
                    max_readers=self._max_readers,
                    durable=self._durable,
                ),
            )
            self._release = weakref.finalize(self, release_shared_env, key, shared.env)
            self._guard = shared.guard
            self._env = shared.env
            self._opened_at_fork = _forks
            return self._env

    def close(self) -> None:
        with self._open_lock:
            if self._env is not None and self._opened_at_fork == _forks and self._release is not None:
                self._release()  # runs once, whether here or when the handle is collected
            self._env = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------

    def key(self, text: str) -> bytes:
        h = self._key_prefix.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def get_one(self, key: bytes) -> np.ndarray | None:
        """The vector of one key (a fresh array), or None: the hot path of a cache hit.

        What :meth:`get_many_into` does for one key, written out without context managers
        (they cost more than the LMDB lookup itself).
        """
        env = self._env
        if env is None or self._opened_at_fork != _forks:
            env = self._env_for_this_process()
        guard = self._guard
        vector, resized = None, False
        guard.enter()
        try:
            try:
                txn = env.begin(buffers=True)
            except lmdb.MapResizedError:
                resized = True
            except lmdb.ReadersFullError:
                raise readers_full(self.path, self._max_readers) from None
            except lmdb.Error as exc:
                raise read_error(self.path, exc) from None
            else:
                try:
                    data = self._verified(txn.get(key))
                    if data is not None:
                        # a writable copy in one step (twice as fast as frombuffer().copy())
                        vector = np.ndarray(self._shape, _FLOAT32, bytearray(data))
                except lmdb.Error as exc:
                    raise read_error(self.path, exc) from None
                finally:
                    txn.abort()
        finally:
            guard.leave()
        if resized:  # another process grew the map: the general path adopts its size
            out = np.empty((1, self.dim), dtype=np.float32)
            return out[0] if self.get_many_into([key], out)[0] else None
        return vector

    def _verified(self, value: memoryview | bytes | None) -> memoryview | bytes | None:
        """The float32 bytes of a stored value, or None (a miss): the one place values are read.

        A value that fails its checksum, has another length or is of the old format (no
        checksum) is a miss; the miss brings about a ``put_many_keys`` of its text, which
        replaces it and counts it.
        """
        if value is not None and len(value) == self._value_nbytes:
            nbytes = self._nbytes
            data = value[:nbytes]
            if _digest(data) == value[nbytes:]:  # no helper call: this runs on every cache hit
                return data
        return None

    def _count_repairs(self, corrupt: int, old_format: int) -> None:
        with self._damage_lock:
            first = corrupt and not self.corrupt_vectors
            self.corrupt_vectors += corrupt
            self.old_format_vectors += old_format
        if first:
            log.warning(
                "embedding cache at %s: a stored vector failed its checksum; it was recomputed "
                "and replaced (counted as corrupt_vectors in stats)",
                self.path,
            )

    def get(self, text: str) -> np.ndarray | None:
        """The cached vector of ``text`` (a fresh array), or ``None``."""
        return self.get_one(self.key(text))

    def get_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Look up many texts: ``(vectors (n, dim), found (n,) bool)``; rows not found are 0."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = self.get_many_into([self.key(t) for t in texts], out)
        return out, found

    def get_many_into(self, keys: Sequence[bytes], out: np.ndarray) -> np.ndarray:
        """Copy the vectors of ``keys`` straight from the map into rows of ``out``."""
        found = np.zeros(len(keys), dtype=bool)
        verified = self._verified
        with self._transaction(write=False) as txn:
            for i, key in enumerate(keys):
                data = verified(txn.get(key))
                if data is not None:
                    out[i] = np.frombuffer(data, dtype=np.float32)
                    found[i] = True
        return found

    def __contains__(self, text: str) -> bool:
        with self._transaction(write=False) as txn:
            return self._verified(txn.get(self.key(text))) is not None

    def count(self) -> int:
        """Entries in the whole cache file (all models)."""
        with self._transaction(write=False) as txn:
            return txn.stat()["entries"]

    # -- writing -------------------------------------------------------------------------

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Store vectors for texts in one transaction; returns how many were new."""
        return self.put_many_keys([self.key(t) for t in texts], vectors)

    def put_many_keys(self, keys: Sequence[bytes], vectors: np.ndarray) -> int:
        if self.readonly:
            raise CacheError("this cache handle is read-only (writes go through the service)")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise CacheError(f"vectors of shape {vectors.shape} for {len(keys)} keys of dim {self.dim}")
        while True:
            try:
                with self._transaction(write=True) as txn:
                    added = corrupt = old_format = 0
                    for key, row in zip(keys, vectors, strict=True):
                        value = cache_format.seal(row.tobytes())
                        if txn.put(key, value, overwrite=False):
                            added += 1
                            continue
                        # A value that fails verification (damaged, old format, another
                        # dimension) is a miss for every reader; replace it, or it misses forever.
                        existing = txn.get(key)
                        assert existing is not None  # put refused it: the key is there
                        if self._verified(existing) is None:
                            if len(existing) == self._nbytes:
                                old_format += 1
                            else:
                                corrupt += 1
                            txn.put(key, value)
                            added += 1
                if corrupt or old_format:  # committed
                    self._count_repairs(corrupt, old_format)
                return added
            except lmdb.MapFullError:
                self._grow()
            except cache_format.DAMAGE_ERRORS as exc:
                raise damaged(self.path, str(exc)) from None
            except lmdb.Error as exc:
                if disk_full(self.path, exc):
                    raise CacheFullError(f"embedding cache at {self.path}: disk full ({exc})") from None
                raise CacheError(f"cannot write embedding cache at {self.path}: {exc}") from None

    def _grow(self) -> None:
        env = self._env_for_this_process()
        current = env.info()["map_size"]
        if current >= self._max_map_size:
            size = f"{current >> 20} MiB" if current >= 1 << 20 else f"{current >> 10} KiB"
            raise CacheFullError(
                f"embedding cache at {self.path} reached its size limit ({size}); raise max_map_size or clear the cache"
            )
        new_size = min(current * 2, self._max_map_size)
        with self._guard.exclusive():
            env.set_mapsize(new_size)
        log.info("embedding cache map grown to %d MiB", new_size >> 20)

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[lmdb.Transaction]:
        env = self._env_for_this_process()
        guard = self._guard
        for _ in range(10):
            with guard.txn():
                try:
                    txn = env.begin(write=write, buffers=True)
                except lmdb.MapResizedError:
                    txn = None
                except lmdb.ReadersFullError:
                    raise readers_full(self.path, self._max_readers) from None
                except lmdb.Error as exc:
                    if write:
                        raise
                    raise read_error(self.path, exc) from None
                if txn is not None:
                    try:
                        with txn:
                            yield txn
                    except lmdb.Error as exc:
                        if write:  # put_many_keys tells a full map or disk from damage itself
                            raise
                        raise read_error(self.path, exc) from None
                    return
            # Another process grew the map: adopt its size (no transaction of ours is open).
            with guard.exclusive():
                env.set_mapsize(0)
        raise CacheError(f"embedding cache at {self.path} keeps being resized; giving up")
