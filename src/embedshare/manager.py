"""The embedding manager: the one API every user sees.

``EmbeddingManager`` is the in-process manager: it owns an embedder, writes the cache and
builds the index itself. ``SharedEmbeddingManager`` (service/client.py) has exactly the same
API but sends cache misses to the machine's service. Both share everything else through
``ManagerBase``: text validation, zero-copy cache lookups, search, the search-result cache
and the counters.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import settings
from .embedders import Embedder, create_embedder, validate_text, validate_texts
from .util.latency import Histogram
from .util.lazylog import LazyLogger
from .registry import Registry, load_registry
from .store import CacheError, EmbeddingCache, ToolIndex, ToolIndexError, open_or_build_index
from .store.cache import lookup
from .store.index import Hits, SearchResult
from .store.layout import StoreLayout
from .store.record import no_registry_advice, recorded_registry, write_record

if TYPE_CHECKING:
    from concurrent.futures import Future

log = LazyLogger(__name__)  # logging is imported only if something is logged

DEFAULT_MODEL = "local"


def default_store() -> Path:
    """``$EMBEDSHARE_STORE``, else ``~/.cache/embedshare``."""
    env = os.environ.get("EMBEDSHARE_STORE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embedshare"


def normalise_query(query: str) -> str:
    """Queries that differ only in case and spacing share one embedding and one result."""
    return " ".join(query.lower().split())


class NoIndexError(RuntimeError):
    """A search was asked of a manager that has no tool registry loaded."""


class ManagerBase(ABC):
    """Everything the local and the shared manager have in common. Thread-safe."""

    cache: EmbeddingCache
    model_id: str
    dim: int

    def __init__(self, search_cache_size: int = 1024) -> None:
        self._index: ToolIndex | None = None
        search_cache_size = settings.whole_number("search_cache_size", search_cache_size, 0)
        # Compact hits (rows, scores), not result objects: ~100 bytes an entry.
        self._search_cache: OrderedDict[tuple, Hits] = OrderedDict()
        self._search_cache_size = search_cache_size
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {
            "embed_calls": 0, "texts": 0, "hits": 0, "misses": 0,
            "searches": 0, "search_cache_hits": 0, "similar_calls": 0,
        }
        # Wall time of each public call in this process, for the pool's report.
        self._latency = {"get_embeddings": Histogram(), "search": Histogram(), "find_similar_tools": Histogram()}
        self._embed_latency = self._latency["get_embeddings"]
        self._single_hits = 0  # get_embedding calls answered from the cache (see get_embedding)

    def _observe(self, call: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self._latency[call].observe(elapsed)

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Vectors for texts the cache did not have (unique keys)."""

    # -- embeddings --------------------------------------------------------------------------

    def get_embedding(self, text: str) -> np.ndarray:
        """The vector of one text: float32, shape ``(dim,)``, unit length."""
        started = time.perf_counter()
        vector = self.cache.get_one(self.cache.key(validate_text(text)))
        if vector is None:  # a miss: the general path computes it once
            return self.get_embeddings([text])[0]
        # The hot path of every worker: one counter (stats() adds it to embed_calls, texts and
        # hits) and the lock taken without a ``with`` block, which costs more than the lookup.
        lock = self._lock
        lock.acquire()
        self._single_hits += 1
        self._embed_latency.observe(time.perf_counter() - started)
        lock.release()
        return vector

    def get_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of many texts, ``(n, dim)`` float32; cache misses are computed once."""
        started = time.perf_counter()
        clean = validate_texts(list(texts) if not isinstance(texts, (str, bytes)) else texts)
        found = lookup(self.cache, clean)
        misses = found.missing.size
        self._count(embed_calls=1, texts=len(clean), hits=len(clean) - misses, misses=misses)
        if misses:
            found.fill(self._compute(found.miss_keys, found.miss_texts))
        self._observe("get_embeddings", started)
        return found.vectors

    def preload(self, texts: Sequence[str]) -> int:
        """Make sure ``texts`` are cached (e.g. the common queries); returns how many were new."""
        clean = list(dict.fromkeys(validate_texts(list(texts))))
        _, found = self.cache.get_many(clean)
        self.get_embeddings(clean)
        return int((~found).sum())

    # -- tool search -------------------------------------------------------------------------

    @property
    def index_path(self) -> str | None:
        """Folder of the loaded tool index, or None."""
        return str(self._index.path) if self._index is not None else None

    @property
    def index(self) -> ToolIndex:
        index = self._index
        if index is None:
            index = self._default_index()
            if index is None:
                raise NoIndexError(f"no tool registry is loaded: {self._no_index_advice()}")
        return index

    def _default_index(self) -> ToolIndex | None:
        """The index to use when none was loaded (the local manager: the store's)."""
        return None

    def _no_index_advice(self) -> str:
        return "pass registry= (a JSON file or 'bundled') or call load_registry()"

    def use_index(self, index: ToolIndex) -> None:
        """Search ``index`` from now on (e.g. another registry's, built through this manager)."""
        if (index.model_id, index.dim) != (self.model_id, self.dim):
            raise ToolIndexError(
                f"tool index {index.path} holds {index.model_id!r} vectors, this manager embeds "
                f"with {self.model_id!r}"
            )
        with self._lock:
            self._index = index
            self._search_cache.clear()

    def clear_search_cache(self) -> None:
        """Forget the cached search results of this process (the embedding cache stays)."""
        with self._lock:
            self._search_cache.clear()

    def search(
        self, query: str, k: int = 5, category: str | None = None, threshold: float = 0.0
    ) -> list[SearchResult]:
        """The ``k`` tools that best match ``query``, with score, category, protocol, reason."""
        started = time.perf_counter()
        query = validate_text(query, "query")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        index = self.index
        norm = normalise_query(query)
        key = (norm, k, category, float(threshold), index.path)
        self._count(searches=1)
        with self._lock:
            hits = self._search_cache.get(key)
            if hits is not None:
                self._search_cache.move_to_end(key)
                self._counters["search_cache_hits"] += 1
        if hits is None:
            hits = index.search_hits(self.get_embedding(norm), k=k, category=category, threshold=threshold)
            with self._lock:
                self._search_cache[key] = hits
                if len(self._search_cache) > self._search_cache_size:
                    self._search_cache.popitem(last=False)
        results = index.results(hits)
        self._observe("search", started)
        return results

    def find_similar_tools(self, name: str, k: int = 5, same_category_only: bool = False) -> list[SearchResult]:
        """The ``k`` tools closest to tool ``name`` (itself excluded)."""
        if not isinstance(name, str):
            raise TypeError(f"tool name must be a str, got {type(name).__name__}")
        started = time.perf_counter()
        self._count(similar_calls=1)
        results = self.index.similar(name, k=k, same_category_only=same_category_only)
        self._observe("find_similar_tools", started)
        return results

    def get_tool_protocols(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The MCP protocols of the named tools, keyed by name."""
        if isinstance(names, str):
            names = [names]
        return self.index.protocols(list(names))

    # -- counters ----------------------------------------------------------------------------

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counters[name] = self._counters.get(name, 0) + int(amount)

    def stats(self, latency_samples: bool = False) -> dict[str, Any]:
        """Counters of this manager (this process), latencies, and what it is attached to."""
        with self._lock:
            counters = dict(self._counters)
            for name in ("embed_calls", "texts", "hits"):
                counters[name] += self._single_hits
            counters["latency"] = {
                call: hist.summary(with_samples=latency_samples) for call, hist in self._latency.items()
            }
        counters.update(
            mode=self.mode,
            model_id=self.model_id,
            dim=self.dim,
            pid=os.getpid(),
            index=self.index_path,
            tools=len(self._index) if self._index is not None else 0,
            # stored vectors that failed verification when this process read them (recomputed)
            corrupt_vectors=getattr(self.cache, "corrupt_vectors", 0),
            old_format_vectors=getattr(self.cache, "old_format_vectors", 0),
        )
        return counters

    mode = "base"


class EmbeddingManager(ManagerBase):
    """The local, in-process manager: its own embedder, cache writes and index.

    Use it alone in one process with many threads, or let ``get_embedding_manager()`` pick
    the shared one when a service runs on this machine.
    """

    mode = "local"

    def __init__(
        self,
        store: str | Path | None = None,
        model: str | Embedder = DEFAULT_MODEL,
        registry: str | Path | Registry | None = None,
        *,
        search_cache_size: int = 1024,
        embedder_options: dict[str, Any] | None = None,
        cache_options: dict[str, Any] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        super().__init__(search_cache_size=search_cache_size)
        self.layout = StoreLayout(store or default_store())
        self.layout.make_private_root()  # 0700, or refused if another user could write it
        self.embedder = create_embedder(model, **(embedder_options or {}))
        self.model_id = self.embedder.model_id
        self.dim = int(self.embedder.dim)
        if cache is not None and (cache.model_id, cache.dim) != (self.model_id, self.dim):
            raise ValueError(f"cache is for {cache.model_id!r}, the model is {self.model_id!r}")
        self.cache = cache or EmbeddingCache(
            self.layout.cache, self.model_id, self.dim, **(cache_options or {})
        )
        self._inflight: dict[bytes, Future] = {}
        self._inflight_lock = threading.Lock()
        self._cache_full_warned = False
        self._counters.update(model_calls=0, texts_embedded=0, model_seconds_ms=0)
        self._model_spec = model if isinstance(model, str) else None
        self._index_lock = threading.Lock()
        self._record_checked = False  # the store's recorded registry is looked up once, lazily
        if registry is not None:
            self.load_registry(registry)

    def __repr__(self) -> str:
        return f"EmbeddingManager(store={str(self.layout.root)!r}, model={self.model_id!r})"

    def load_registry(self, registry: str | Path | Registry, progress: Any = None) -> ToolIndex:
        """Open (or build, embedding through this manager's cache) the registry's index."""
        reg = registry if isinstance(registry, Registry) else load_registry(registry)
        index = open_or_build_index(
            self.layout.indexes, reg, self.get_embeddings, self.model_id, self.dim, progress=progress
        )
        self.use_index(index)
        # The store now serves this registry: every later entry point given none finds it.
        source = "bundled" if str(registry) == "bundled" else (
            reg.source if isinstance(registry, Registry) else str(Path(registry).resolve()))
        write_record(self.layout, model=self._model_spec, model_id=self.model_id, dim=self.dim,
                     registry_hash=reg.content_hash, registry_source=source, index=str(index.path),
                     tools=len(index))
        return index

    def _default_index(self) -> ToolIndex | None:
        """The registry the store records (see store/record.py), opened once on first use.

        Its index folder is opened as is when it was built with this model (it keeps its own
        copy of the tools); with another model it is built again from the recorded source.
        """
        if self._record_checked:
            return self._index
        with self._index_lock:
            if not self._record_checked and self._index is None:
                recorded = recorded_registry(self.layout)
                if recorded is not None:
                    self._index = self._open_recorded(recorded)
            self._record_checked = True
        return self._index

    def _open_recorded(self, recorded: dict[str, Any]) -> ToolIndex:
        folder = recorded.get("index")
        if folder and Path(folder, "manifest.json").exists():
            index = ToolIndex(folder, verify=True)
            if index.model_id == self.model_id and index.manifest["registry_hash"] == recorded["hash"]:
                return index
        source = recorded.get("source")
        if not source:
            raise NoIndexError(f"the store {self.layout.root} records a registry whose index "
                               f"{folder} is gone and whose source is unknown: "
                               f"{no_registry_advice(self.layout.root)}")
        return self.load_registry(source)

    def _no_index_advice(self) -> str:
        return no_registry_advice(self.layout.root)

    def _compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Embed misses once per process: a text another thread is computing is awaited."""
        from concurrent.futures import Future  # here: a shared client's workers never need it

        mine: list[tuple[int, bytes, str, Future]] = []
        waiting: list[tuple[int, Future]] = []
        with self._inflight_lock:
            for i, (key, text) in enumerate(zip(keys, texts)):
                future = self._inflight.get(key)
                if future is None:
                    future = self._inflight[key] = Future()
                    mine.append((i, key, text, future))
                else:
                    waiting.append((i, future))
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        if mine:
            try:
                self._embed_and_store(mine, out)
            except BaseException as exc:
                for _, _, _, future in mine:
                    if not future.done():  # rows found in the cache on the re-check are done
                        future.set_exception(exc)
                raise
            finally:
                with self._inflight_lock:
                    for _, key, _, _ in mine:
                        self._inflight.pop(key, None)
        for i, future in waiting:
            out[i] = future.result()
        return out

    def _embed_and_store(self, mine: list[tuple[int, bytes, str, Future]], out: np.ndarray) -> None:
        # Another thread may have stored some of these between our lookup and our claim.
        found_vectors = np.empty((len(mine), self.dim), dtype=np.float32)
        found = self.cache.get_many_into([key for _, key, _, _ in mine], found_vectors)
        todo = [m for m, f in zip(mine, found) if not f]
        for (i, _, _, future), vector, f in zip(mine, found_vectors, found):
            if f:
                out[i] = vector
                future.set_result(out[i])
        if not todo:
            return
        started = time.perf_counter()
        vectors = self.embedder.embed([text for _, _, text, _ in todo])
        self._count(
            model_calls=1, texts_embedded=len(todo),
            model_seconds_ms=int((time.perf_counter() - started) * 1000),
        )
        try:
            self.cache.put_many_keys([key for _, key, _, _ in todo], vectors)
        except CacheError as exc:  # full disk, size limit, I/O error: the vectors are still good
            if not self._cache_full_warned:
                log.warning("embedding cache write failed; serving vectors without caching them: %s", exc)
                self._cache_full_warned = True
        for (i, _, _, future), vector in zip(todo, vectors):
            out[i] = vector
            future.set_result(out[i])

    def close(self) -> None:
        self.cache.close()
