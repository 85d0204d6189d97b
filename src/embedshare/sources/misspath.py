"""The miss path: what every computer of vectors does with the texts the cache did not have.

One copy, for the three places that compute vectors for many callers at once: the threads of
a process (``LocalSource``), the service's clients (``service/batcher.py``) and a Ray node's
workers (``ray/node.py``). Each claims its keys (``util/singleflight.py``: a key being computed
is awaited, not computed again), looks in the cache once more (another process may have
written a key since the caller's lookup), computes the rest, writes them, and settles.

The one rule for a failed cache write (full disk, size limit, I/O error): **the vectors are
still correct, so every waiter gets them**; the failure is counted (``cache_write_failures``)
and logged as a warning when writes start failing (the first failure, and the first after a
write that worked again), not once per batch of a full cache. A failed *computation* is the
only thing that fails the waiters.

The batcher runs these steps on three threads (the model thread computes, the writer thread
commits, the event loop settles, so that a commit overlaps the next forward), so it calls
:meth:`MissPath.store` and settles itself; the threaded callers call
:meth:`MissPath.compute_and_store`, which does every step in order.

``read_through`` is the cache-then-source read of a batch of texts that the manager and the
service's own embeds (index builds, preloads) share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..store import CacheError
from ..store.cache import Lookup, lookup
from ..store.vector_cache import VectorCache
from ..util.lazylog import LazyLogger
from ..util.singleflight import Promise, SingleFlight

log = LazyLogger("embedshare.cache")  # logging is imported only if something is logged

#: Keys and texts (each once) -> their vectors, ``(len(texts), dim)`` float32.
Compute = Callable[[list[bytes], list[str]], np.ndarray]
#: Adds to named counters (``Counters.add``, ``ServiceMetrics.add``).
Count = Callable[..., None]


class MissPath:
    """Misses computed by ``compute`` and written to ``cache``; failed writes counted by ``count``."""

    def __init__(self, cache: VectorCache, compute: Compute, count: Count) -> None:
        self.cache = cache
        self.compute = compute
        self._count = count
        self._failing = False  # the last write failed: the next failure is not logged again

    def store(self, keys: list[bytes], vectors: np.ndarray) -> bool:
        """Write computed vectors; False if the cache refused them (counted, see the module doc)."""
        try:
            self.cache.put_many_keys(keys, vectors)
        except CacheError as exc:
            self._count(cache_write_failures=1)
            if not self._failing:
                self._failing = True
                log.warning("embedding cache write failed; serving the vectors uncached: %s", exc)
            return False
        self._failing = False
        return True

    def compute_and_store(
        self, flights: SingleFlight[Promise], keys: list[bytes], texts: list[str], joined: str | None = None
    ) -> np.ndarray:
        """Vectors of distinct ``keys``: computed here once in the process, or awaited from the
        thread computing them; ``(len(keys), dim)`` float32. ``joined``: the counter of keys
        found under way."""
        claim = flights.claim(keys)
        if joined and claim.joined:
            self._count(**{joined: claim.joined})
        if claim.mine:
            mine = [keys[i] for i in claim.mine]
            try:
                self._compute_claimed(flights, mine, [texts[i] for i in claim.mine])
            except BaseException as exc:  # the computation failed: so does every waiter
                flights.fail(mine, exc)
                raise
        out = np.empty((len(keys), self.cache.dim), dtype=np.float32)
        for row, future in enumerate(claim.futures):
            out[row] = future.result()
        return out

    def _compute_claimed(self, flights: SingleFlight[Promise], keys: list[bytes], texts: list[str]) -> None:
        """Settle claimed keys: those another process cached meanwhile from the cache, the
        rest computed and stored."""
        cached = np.empty((len(keys), self.cache.dim), dtype=np.float32)
        found = self.cache.get_many_into(keys, cached)
        if found.any():
            flights.settle([k for k, f in zip(keys, found, strict=True) if f], cached[found])
        todo = np.flatnonzero(~found).tolist()
        if not todo:
            return
        todo_keys = [keys[i] for i in todo]
        vectors = self.compute(todo_keys, [texts[i] for i in todo])
        self.store(todo_keys, vectors)
        flights.settle(todo_keys, vectors)


def read_through(cache: VectorCache, texts: Sequence[str], compute: Compute) -> Lookup:
    """The vectors of (checked) ``texts``: the cache's, the misses from ``compute`` (each once)."""
    found = lookup(cache, texts)
    if found.missing.size:
        found.fill(compute(found.miss_keys, found.miss_texts))
    return found
