"""``EmbeddingManager``: the one API every user sees, whatever computes the vectors.

A manager answers everything it can inside the calling process: a cache hit is a lookup in
the LMDB memory map of its source's ``cache`` (about a microsecond, no copy, no call), a search
is a matrix product on the memory-mapped tool index. Only cache misses leave it, all the misses
of one call together, for its *source* (``sources/``): this process's own model
(``LocalSource``, the default), the machine's service (``SharedEmbeddingManager`` in
``access.py``), or a Ray node's (``embedshare.ray``). Thread-safe: one manager serves every
thread of a process.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import settings
from .embedders import Embedder, validate_text, validate_texts
from .env import default_store
from .errors import NoIndexError, ToolIndexError
from .registry import Registry, load_registry
from .sources.base import IndexProvider, VectorSource
from .sources.indexes import StoreIndexes
from .sources.misspath import read_through
from .store import EmbeddingCache, ToolIndex
from .store.index import Hits, SearchResult
from .store.layout import StoreLayout
from .store.record import registry_name
from .util import arguments
from .util.latency import Histogram

if TYPE_CHECKING:  # imported where a local source is built: a service's worker never builds one
    from .sources.local import LocalSource

__all__ = ["DEFAULT_MODEL", "EmbeddingManager", "NoIndexError", "normalise_query"]

DEFAULT_MODEL = "local"
_CALLS = ("get_embeddings", "search", "find_similar_tools")


def normalise_query(query: str) -> str:
    """Queries that differ only in case and spacing share one embedding and one result."""
    return " ".join(query.lower().split())


class EmbeddingManager:
    """Embeddings, tool search and counters over one :class:`~embedshare.sources.base.VectorSource`.

    ``EmbeddingManager(store, model, registry)`` embeds in this process (a ``LocalSource`` on
    the store's cache; ``embedder_options``, ``cache_options`` and ``cache`` are its);
    ``EmbeddingManager(source=...)`` uses any other source. ``registry``
    (a JSON file, ``'bundled'`` or a loaded :class:`Registry`) is indexed and searched; with
    none, the source's (the store's recorded one, or the one its service serves).
    """

    def __init__(
        self,
        store: str | Path | None = None,
        model: str | Embedder = DEFAULT_MODEL,
        registry: str | Path | Registry | None = None,
        *,
        source: VectorSource | None = None,
        search_cache_size: int = 1024,
        embedder_options: dict[str, Any] | None = None,
        cache_options: dict[str, Any] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        search_cache_size = settings.whole_number("search_cache_size", search_cache_size, 0)
        if source is None:
            source = _local_source(store, model, embedder_options, cache_options, cache)
        elif store is not None or cache is not None or embedder_options or cache_options:
            raise ValueError("give EmbeddingManager a source, or a store and model to build a local one from, not both")
        self._source = source
        # What the store serves: the source's say if it has one, else the store's index folder.
        self._indexes: IndexProvider = (
            source if isinstance(source, IndexProvider) else StoreIndexes(source.layout, source.model_id, source.dim)
        )
        self.cache = source.cache
        self.model_id = source.model_id
        self.dim = int(source.dim)
        self.layout = source.layout
        self._index: ToolIndex | None = None  # chosen (use_index, load_registry) or resolved
        self._index_lock = threading.Lock()
        self._index_resolved = False  # the source's default index is looked up once, lazily
        # Compact hits (rows, scores), not result objects: ~100 bytes an entry.
        self._search_cache: OrderedDict[tuple[Any, ...], Hits] = OrderedDict()
        self._search_cache_size = search_cache_size
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {
            "embed_calls": 0,
            "texts": 0,
            "hits": 0,
            "misses": 0,
            "searches": 0,
            "search_cache_hits": 0,
            "similar_calls": 0,
        }
        # Wall time of each public call in this process, for the pool's report.
        self._latency = {call: Histogram() for call in _CALLS}
        self._embed_latency = self._latency["get_embeddings"]
        self._single_hits = 0  # get_embedding calls answered from the cache (see get_embedding)
        if registry is not None:
            self.load_registry(registry)
        elif not self._indexes.index_on_first_use:
            self._resolve_index()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={str(self.layout.root)!r}, model={self.model_id!r})"

    @property
    def source(self) -> VectorSource:
        """Where this manager's misses are computed (see ``embedshare.sources``)."""
        return self._source

    @property
    def mode(self) -> str:
        """``local``, ``shared`` or ``ray``: the kind of source (``stats()["mode"]``)."""
        return self._source.mode

    @property
    def embedder(self) -> Embedder:
        """The model of a manager that embeds in this process (AttributeError otherwise)."""
        embedder: Embedder | None = getattr(self._source, "embedder", None)
        if embedder is None:
            raise AttributeError(f"a {type(self._source).__name__} embeds outside this process: no embedder here")
        return embedder

    # -- embeddings --------------------------------------------------------------------------

    def get_embedding(self, text: str) -> np.ndarray:
        """The vector of one text: float32, shape ``(dim,)``, unit length."""
        started = time.perf_counter()
        cache = self.cache
        vector = cache.get_one(cache.key(validate_text(text)))
        if vector is None:  # a miss: the general path computes it once
            computed: np.ndarray = self.get_embeddings([text])[0]
            return computed
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
        found = read_through(self.cache, clean, self._source.compute)
        misses = found.missing.size
        self._count(embed_calls=1, texts=len(clean), hits=len(clean) - misses, misses=misses)
        self._observe("get_embeddings", started)
        return found.vectors

    def preload(self, texts: Sequence[str]) -> int:
        """Make sure ``texts`` are cached (e.g. the common queries); returns how many were new."""
        clean = list(dict.fromkeys(validate_texts(list(texts))))
        _, found = self.cache.get_many(clean)
        self.get_embeddings(clean)
        return int((~found).sum())

    # -- the tool index ----------------------------------------------------------------------

    def load_registry(self, registry: str | Path | Registry, progress: Any = None) -> ToolIndex:
        """Search ``registry`` from now on; what that takes is the source's rule: a local
        manager indexes it (embedding through this manager) and records it as the store's; a
        service's client checks that it is the registry the service serves."""
        loaded = registry if isinstance(registry, Registry) else load_registry(registry)
        index = self._indexes.index_for(loaded, registry_name(registry), self.get_embeddings, progress)
        self.use_index(index)
        return index

    @property
    def index(self) -> ToolIndex:
        """The tool index searched: the one loaded, else the source's (NoIndexError if none)."""
        index = self._index if self._index_resolved else self._resolve_index()
        if index is None:
            raise NoIndexError(f"no tool registry is loaded: {self._indexes.no_index_advice()}")
        return index

    def _resolve_index(self) -> ToolIndex | None:
        with self._index_lock:  # one thread opens (or builds) the source's index
            if not self._index_resolved:
                served = self._indexes.served_index(self.get_embeddings)
                with self._lock:  # an index chosen meanwhile (use_index) is kept
                    if not self._index_resolved:
                        self._index, self._index_resolved = served, True
        return self._index

    @property
    def index_path(self) -> str | None:
        """Folder of the index in use, or None (none loaded or looked up yet)."""
        return str(self._index.path) if self._index is not None else None

    def use_index(self, index: ToolIndex) -> None:
        """Search ``index`` from now on (e.g. another registry's, built through this manager)."""
        if (index.model_id, index.dim) != (self.model_id, self.dim):
            raise ToolIndexError(
                f"tool index {index.path} holds {index.model_id!r} vectors, this manager embeds with {self.model_id!r}"
            )
        with self._lock:
            self._index = index
            self._index_resolved = True
            self._search_cache.clear()

    def clear_search_cache(self) -> None:
        """Forget the cached search results of this process (the embedding cache stays)."""
        with self._lock:
            self._search_cache.clear()

    def search(self, query: str, k: int = 5, category: str | None = None, threshold: float = 0.0) -> list[SearchResult]:
        """The ``k`` tools that best match ``query``, with score, category, protocol, reason."""
        started = time.perf_counter()
        query = validate_text(query, "query")
        k, category = arguments.result_count(k), arguments.category_filter(category)
        threshold = arguments.score_threshold(threshold)
        index = self.index
        norm = normalise_query(query)
        key = (norm, k, category, threshold, index.path)
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
        name, k = arguments.tool_name(name), arguments.result_count(k)
        same_category_only = arguments.flag("same_category_only", same_category_only)
        started = time.perf_counter()
        self._count(similar_calls=1)
        results = self.index.similar(name, k=k, same_category_only=same_category_only)
        self._observe("find_similar_tools", started)
        return results

    def get_tool_protocols(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The MCP protocols of the named tools, keyed by name."""
        return self.index.protocols(arguments.tool_names(names))

    # -- counters ----------------------------------------------------------------------------

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counters[name] = self._counters.get(name, 0) + int(amount)

    def _observe(self, call: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self._latency[call].observe(elapsed)

    def stats(self, latency_samples: bool = False) -> dict[str, Any]:
        """Counters of this manager (this process) and its source, latencies, what it uses."""
        with self._lock:
            counters: dict[str, Any] = dict(self._counters)
            for name in ("embed_calls", "texts", "hits"):
                counters[name] += self._single_hits
            counters["latency"] = {
                call: hist.summary(with_samples=latency_samples) for call, hist in self._latency.items()
            }
        index = self._index
        counters.update(self._source.stats())
        counters.update(
            mode=self.mode,
            model_id=self.model_id,
            dim=self.dim,
            pid=os.getpid(),
            index=str(index.path) if index is not None else None,
            tools=len(index) if index is not None else 0,
            # stored vectors that failed verification when this process read them (recomputed)
            corrupt_vectors=getattr(self.cache, "corrupt_vectors", 0),
            old_format_vectors=getattr(self.cache, "old_format_vectors", 0),
        )
        return counters

    def close(self) -> None:
        """Let go of what the source holds: a connection, or a local source's cache handle."""
        self._source.close()


def _local_source(
    store: str | Path | None,
    model: str | Embedder,
    embedder_options: dict[str, Any] | None,
    cache_options: dict[str, Any] | None,
    cache: EmbeddingCache | None,
) -> LocalSource:
    """The default source: this process's model on the store's cache."""
    from .sources.local import LocalSource

    layout = StoreLayout(store or default_store())
    return LocalSource.open(layout, model, embedder_options=embedder_options, cache_options=cache_options, cache=cache)
