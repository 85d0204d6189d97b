"""``LocalSource``: this process embeds its misses itself and writes them to the store's cache.

The source of a local manager, of a client that fell back to local, and of the service itself
(which serves every client through it). Each text is computed once at a time in the process:
a text another thread is computing is awaited (``util/singleflight.py``). Building a
registry's index records it as the store's (``store/record.py``), so every later entry point
given no registry finds it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders import Embedder, create_embedder
from ..errors import NoIndexError
from ..registry import Registry
from ..store import EmbeddingCache, StoreLayout, ToolIndex
from ..store.index_build import open_or_build_index
from ..store.record import no_registry_advice, recorded_registry, write_record
from ..util.counters import Counters
from ..util.singleflight import Promise, SingleFlight
from .base import EmbedFn, Progress, VectorSource
from .misspath import MissPath


class LocalSource(VectorSource):
    """Misses embedded by ``embedder`` in this process, written to ``cache``."""

    mode = "local"
    index_on_first_use = True
    cache: EmbeddingCache  # the store's LMDB cache, which this source writes and closes

    def __init__(self, layout: StoreLayout, embedder: Embedder, cache: EmbeddingCache, spec: str | None = None) -> None:
        if (cache.model_id, cache.dim) != (embedder.model_id, int(embedder.dim)):
            raise ValueError(f"cache is for {cache.model_id!r}, the model is {embedder.model_id!r}")
        self.layout = layout
        self.embedder = embedder
        self.cache = cache
        self.model_id = embedder.model_id
        self.dim = int(embedder.dim)
        self.spec = spec  # recorded in store.json, so that a later process can build the same model
        self._flights: SingleFlight[Promise] = SingleFlight(Promise)
        self._counters = Counters("model_calls", "texts_embedded", "model_seconds_ms", "cache_write_failures")
        self._misses = MissPath(cache, self._embed, self._counters.add)

    @classmethod
    def open(
        cls,
        layout: StoreLayout,
        model: str | Embedder,
        *,
        embedder_options: dict[str, Any] | None = None,
        cache_options: dict[str, Any] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> LocalSource:
        """``model`` (a spec or an embedder) on the store's cache (or ``cache``, already open)."""
        layout.make_private_root()  # 0700, or refused if another user could write it
        embedder = create_embedder(model, **(embedder_options or {}))
        embedder.keep_graphs_in(layout.root / "graphs")  # a local model's built graph, for the next load
        if cache is None:
            cache = EmbeddingCache(layout.cache, embedder.model_id, int(embedder.dim), **(cache_options or {}))
        return cls(layout, embedder, cache, spec=model if isinstance(model, str) else None)

    def __repr__(self) -> str:
        return f"LocalSource(store={str(self.layout.root)!r}, model={self.model_id!r})"

    # -- the miss path ------------------------------------------------------------------------

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Embed the texts no other thread of this process is computing; await the others."""
        return self._misses.compute_and_store(self._flights, keys, texts)

    def _embed(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """The model's vectors of claimed texts, counted."""
        started = time.perf_counter()
        vectors = self.embedder.embed(texts)
        self._counters.add(
            model_calls=1, texts_embedded=len(texts), model_seconds_ms=int((time.perf_counter() - started) * 1000)
        )
        return vectors

    # -- what the store serves ----------------------------------------------------------------

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        """Open (or build, embedding through ``embed``) the registry's index; record it as the
        store's, so that every later entry point given no registry finds it."""
        index = open_or_build_index(self.layout.indexes, registry, embed, self.model_id, self.dim, progress=progress)
        write_record(
            self.layout,
            model=self.spec,
            model_id=self.model_id,
            dim=self.dim,
            registry_hash=registry.content_hash,
            registry_source=name,
            index=str(index.path),
            tools=len(index),
        )
        return index

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        """The registry the store records (``store/record.py``); its callers ask once.

        Its index folder is opened as is when it was built with this model (it keeps its own
        copy of the tools); with another model it is built again from the recorded source.
        """
        recorded = recorded_registry(self.layout)
        return None if recorded is None else self._open_recorded(recorded, embed)

    def _open_recorded(self, recorded: dict[str, Any], embed: EmbedFn) -> ToolIndex:
        from ..registry import load_registry

        folder = recorded.get("index")
        if folder and Path(folder, "manifest.json").exists():
            index = ToolIndex(folder, verify=True)
            if index.model_id == self.model_id and index.manifest["registry_hash"] == recorded["hash"]:
                return index
        source = recorded.get("source")
        if not source:
            raise NoIndexError(
                f"the store {self.layout.root} records a registry whose index "
                f"{folder} is gone and whose source is unknown: "
                f"{no_registry_advice(self.layout.root)}"
            )
        return self.index_for(load_registry(source), source, embed)

    def no_index_advice(self) -> str:
        return no_registry_advice(self.layout.root)

    def stats(self) -> dict[str, Any]:
        return self._counters.snapshot()

    def close(self) -> None:
        self.cache.close()
