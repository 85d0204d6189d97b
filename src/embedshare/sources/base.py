"""``VectorSource``: where the vectors of cache misses come from. One interface, several kinds.

What a source does is compute misses (``compute``). The manager (``manager.py``) reads every
cache hit itself, from the source's ``cache`` (any ``VectorCache``: an LMDB memory map, no
call, no copy), and asks its source only for the misses, each distinct text once per call. The
kinds, as httpx puts transports behind one interface (``_transports/``):

- ``LocalSource`` (``local.py``): this process's embedder, writing the store's cache;
- ``ServiceSource`` (``service.py``): the store's service, over its socket;
- ``FailoverSource`` (``failover.py``): wraps a service source with the failure policy
  (restart the service, fall back to a local source, or raise);
- ``RayNodeSource`` (``embedshare/ray/source.py``): the Ray node's service, and the nodes that
  own the other texts.

What the store serves is another concern, behind its own protocol, ``IndexProvider``: the tool
index used when the manager was given none (``served_index``) and what asking for a registry
means (``index_for``: a local source builds and records it; a service's source checks it is
the one served). The package's sources are their own index providers; a source of a user's
that is not gets ``StoreIndexes`` (``indexes.py``): registries indexed in its store's folder.

A source of your own: subclass ``VectorSource``, set ``model_id``, ``dim``, ``layout`` and
``cache``, and write ``compute`` (and write its vectors to ``cache`` if they should be hits
next time).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..registry import Registry
from ..store import EmbeddingCache, StoreLayout, ToolIndex
from ..store.vector_cache import VectorCache

EmbedFn = Callable[[Sequence[str]], np.ndarray]  # texts -> vectors, through the cache
Progress = Callable[[int, int], None]


@runtime_checkable
class IndexProvider(Protocol):
    """What a store serves: its tool index, and what asking for a registry means."""

    #: ``served_index`` may have work to do (open or build the store's recorded index): the
    #: manager asks for it on first use rather than at construction.
    index_on_first_use: bool

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        """The tool index searched when the manager was given none (None: there is none).

        ``embed`` embeds through the manager, for a provider that must build the index first.
        """
        ...

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        """The index of ``registry`` (named ``name`` in errors): built, checked or refused."""
        ...

    def no_index_advice(self) -> str:
        """What to do when a search finds no index (for ``NoIndexError``)."""
        ...


class VectorSource(ABC):
    """The miss path of one manager: computes misses; see the module docstring. Thread-safe."""

    #: What ``stats()["mode"]`` reports: ``local``, ``shared``, ``ray`` (or a source's own).
    mode: str = "custom"
    model_id: str
    dim: int
    #: The store whose cache and indexes go with this source's vectors.
    layout: StoreLayout
    #: Where the manager reads hits. A plain attribute: the hit path reads it on every call.
    cache: VectorCache
    #: ``IndexProvider.index_on_first_use``, for a source that is its own index provider.
    index_on_first_use: bool = False

    @abstractmethod
    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Vectors of texts the cache did not have: ``(len(texts), dim)`` float32, one row each.

        ``keys`` are the texts' cache keys, each once.
        """

    def stats(self) -> dict[str, Any]:
        """This source's counters, merged into ``EmbeddingManager.stats()``."""
        return {}

    def close(self) -> None:  # noqa: B027 - a default, not abstract: most sources hold no connection
        """Let go of connections (the cache belongs to whoever opened it)."""


class ServiceBackedSource(VectorSource):
    """A source whose vectors come from a service process: it can be asked to connect again.

    Its service says what it serves, so it is an ``IndexProvider`` too.
    """

    cache: EmbeddingCache  # a handle on the service's LMDB cache (reads; a fallback writes it)

    @abstractmethod
    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        """See ``IndexProvider``."""

    @abstractmethod
    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        """See ``IndexProvider``."""

    @abstractmethod
    def no_index_advice(self) -> str:
        """See ``IndexProvider``."""

    @abstractmethod
    def connected(self) -> bool:
        """True if a live connection to the service exists now (none is attempted)."""

    @abstractmethod
    def reconnect(self, failed: Any = None) -> bool:
        """True once a live connection to the service exists (replacing ``failed``, the
        connection a request failed on); False if no service answers."""
