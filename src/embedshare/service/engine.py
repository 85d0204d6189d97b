"""The service's engine: the one front every listener (socket, TCP, HTTP) calls.

It holds what the service serves: the model, as a ``LocalSource`` (this process's embedder,
writing the store's cache), the tool index, and the ``Batcher`` that every client's misses go
through. The listeners only frame requests and answer them; whatever a request asks of the
model, the cache or the index, they ask here, through public methods only:

- ``load()`` builds the model and the index (in the service's load thread, which a stop does
  not wait for), ``start()`` starts the batcher in the loop, and from then on the engine is
  ready: ``ready()`` returns, ``is_ready`` is true;
- ``embed(texts)``, ``hello(model_id)`` and ``stats()`` answer requests; ``embed`` and
  ``hello`` wait while the model loads, so a client that comes early is answered late, not
  refused; ``embed_checked(texts)`` is ``embed`` for texts the listener has checked already;
- ``serve_client(pid, connection)``: the listener says who asks (the batcher is fair between
  clients);
- ``aclose()`` lets the batches under way finish and be cached.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
import sys
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..client import protocol
from ..embedders import validate_texts
from ..registry import load_registry
from ..sources.local import LocalSource
from ..sources.misspath import read_through
from ..store import StoreLayout, ToolIndex
from ..store.cache import lookup
from ..store.record import recorded_registry, registry_name, write_record
from ..util.heap import return_free_heap_to_the_os
from .batcher import Batcher
from .config import ServiceConfig
from .metrics import ServiceMetrics

# Who the running request is from: the batcher queues its misses as that client's and takes
# from every client in turn. A listener sets it once per connection (the tasks that answer
# its requests inherit it); a request with none shares one queue with every other such.
_client: contextvars.ContextVar[Hashable] = contextvars.ContextVar("embedshare_client", default=None)


class Engine:
    """The model, cache, index and batcher of one service; see the module docstring."""

    def __init__(self, config: ServiceConfig, metrics: ServiceMetrics) -> None:
        self.config = config  # as given, never changed
        # What a restart must serve: ``config`` with the registry found at load, if it named none.
        self.served_config = config
        self.layout = StoreLayout(config.store)
        self.metrics = metrics
        self._source: LocalSource | None = None
        self._index: ToolIndex | None = None
        self._registry: protocol.ServedRegistry | None = None  # what it serves
        self._batcher: Batcher | None = None
        self._ready = asyncio.Event()

    # -- loading (in the load thread), then starting (in the loop) ------------------------------

    def load(self) -> None:
        """Load the model, open or build the index, record what is served, preload texts."""
        config = self.config
        local = config.model.startswith("local")
        given = {"threads": config.threads, "max_batch_tokens": config.max_batch_tokens}
        options = {name: value for name, value in given.items() if value and local} or None
        self._source = source = LocalSource.open(self.layout, config.model, embedder_options=options)
        source.embedder.load()
        if config.registry:
            registry = load_registry(config.registry)
            self._index = source.index_for(registry, registry_name(config.registry), self._embed_own)
        else:  # no --registry: the one the store records, if any
            self._index = source.served_index(self._embed_own)
        self._record_served(source)
        if config.preload:
            self._embed_own(config.preload)
        # The load's burst (graph, index texts, preloads) is over and no client is answered yet:
        # its freed heap goes back now, not after the service's first idle second (util/heap.py).
        return_free_heap_to_the_os()

    def _embed_own(self, texts: Sequence[str]) -> np.ndarray:
        """Texts the service embeds for itself (the index build, preloads): cache, then model."""
        assert self._source is not None
        return read_through(self._source.cache, validate_texts(list(texts)), self._source.compute).vectors

    def _record_served(self, source: LocalSource) -> None:
        """Write the store's record (store/record.py): this service's model and registry."""
        index = self._index
        if index is not None:
            recorded = recorded_registry(self.layout) or {}
            registry_hash = index.manifest["registry_hash"]
            name = registry_name(self.config.registry) if self.config.registry else None
            if not name and recorded.get("hash") == registry_hash:
                name = recorded.get("source")
            if not self.config.registry and name:  # a restart serves the same
                self.served_config = dataclasses.replace(self.config, registry=name)
            self._registry = {"hash": registry_hash, "source": name, "index": str(index.path)}
        registry = self._registry
        write_record(  # unchanged when index_for has just written the same (record.py)
            self.layout,
            model=self.config.model,
            model_id=source.model_id,
            dim=source.dim,
            registry_hash=registry["hash"] if registry else None,
            registry_source=registry["source"] if registry else None,
            index=registry["index"] if registry else None,
            tools=len(index) if index is not None else None,
        )

    def start(self) -> None:
        """Start the batcher and answer (in the loop, once :meth:`load` has returned)."""
        self._batcher = Batcher(self.source, self.metrics, self.config.max_batch, self.config.max_wait_ms)
        self._batcher.start()
        self._ready.set()

    async def ready(self) -> None:
        """Return once the engine answers: at once after :meth:`start`, later while it loads."""
        await self._ready.wait()

    @property
    def is_ready(self) -> bool:
        """The model and index are loaded and requests are answered without waiting."""
        return self._ready.is_set()

    # -- what is loaded ---------------------------------------------------------------------------

    @property
    def source(self) -> LocalSource:
        """The model and cache the engine serves (once :meth:`load` has built them)."""
        if self._source is None:
            raise RuntimeError("the engine has not loaded its model yet")
        return self._source

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def index_path(self) -> str | None:
        """Folder of the tool index served, or None."""
        return str(self._index.path) if self._index is not None else None

    # -- answering ------------------------------------------------------------------------------

    @staticmethod
    def serve_client(peer_pid: int | None, connection: str | None = None) -> None:
        """Say who the requests of the current task (and the tasks it starts) come from.

        A local peer is its process (``SO_PEERCRED``'s pid): the client library shares one
        connection per process, and a process that opens more still gets one share, not one per
        connection. A TCP or HTTP peer, whose process we cannot know, is its connection.
        """
        _client.set(("pid", peer_pid) if peer_pid is not None else ("connection", connection))

    async def embed(self, texts: list[Any]) -> tuple[np.ndarray, int]:
        """The vectors of ``texts`` (each checked), and how many of them missed the cache."""
        await self._ready.wait()
        return await self.embed_checked(validate_texts(texts))

    async def embed_checked(self, clean: list[str]) -> tuple[np.ndarray, int]:
        """:meth:`embed` for texts a listener has already checked with ``validate_text`` (the
        HTTP endpoint's ``input``): each is not encoded and checked a second time."""
        await self._ready.wait()
        assert self._batcher is not None
        found = lookup(self.source.cache, clean)
        misses = int(found.missing.size)
        self.metrics.add(embed_requests=1, texts=len(clean), hits=len(clean) - misses, misses=misses)
        if misses:
            found.fill(await self._batcher.embed(found.miss_keys, found.miss_texts, _client.get()))
        return found.vectors, misses

    async def hello(self, wanted_model_id: Any) -> protocol.HelloReply:
        """What a client checks before its first request; refused if it wants another model."""
        await self._ready.wait()  # a client that comes while the model loads waits here
        if wanted_model_id is not None and wanted_model_id != self.model_id:
            raise protocol.ProtocolError(
                "model_mismatch",
                f"this service embeds with {self.model_id!r}, the client asked for {wanted_model_id!r}",
            )
        return {
            "version": protocol.VERSION,
            "model_id": self.model_id,
            "dim": self.dim,
            "cache": str(self.layout.cache),
            "index": self.index_path,
            "registry": self._registry,
            "pid": os.getpid(),
            "max_texts": protocol.MAX_TEXTS_PER_REQUEST,
        }

    def stats(self) -> protocol.EngineStats:
        """The counters; while the model loads (``ready`` false) model fields are the spec's."""
        snapshot = self.metrics.snapshot()
        source = self._source if self.is_ready else None
        # Texts the service embedded for itself (the index build, preloads) count as well:
        # the model calls of a whole run are the batcher's plus these.
        own = source.stats() if source is not None else {"model_calls": 0, "texts_embedded": 0}
        snapshot["model_calls"] += own["model_calls"]
        snapshot["texts_embedded"] += own["texts_embedded"]
        snapshot["cache_write_failures"] += own.get("cache_write_failures", 0)
        return {
            **snapshot,
            "startup_model_calls": own["model_calls"],
            "startup_texts_embedded": own["texts_embedded"],
            # damaged values it replaced
            "corrupt_vectors": source.cache.corrupt_vectors if source is not None else 0,
            "old_format_vectors": source.cache.old_format_vectors if source is not None else 0,
            "ready": source is not None,
            "pid": os.getpid(),
            "model_id": source.model_id if source is not None else self.config.model,
            "dim": source.dim if source is not None else None,
            "store": str(self.layout.root),
            "index": self.index_path if source is not None else None,
            "tools": len(self._index) if source is not None and self._index is not None else 0,
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            # the ONNX backend's promise (issue 13): a `local` service never loads torch
            "torch_imported": "torch" in sys.modules,
            "embedder": repr(source.embedder) if source is not None else None,
        }

    async def aclose(self) -> None:
        """Let the batches under way finish and be cached."""
        if self._batcher is not None:
            await self._batcher.aclose()
