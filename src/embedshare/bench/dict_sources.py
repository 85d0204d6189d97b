"""Designs 3 and 4's parts in a worker: a ``multiprocessing.Manager().dict()`` as the cache.

- ``option-a``: a miss is computed in the worker by its own embedder and put in the dict
  (:class:`OptionASource`);
- ``hybrid``: the dict is pre-filled by the main process; a miss is asked of the main process
  on a request queue and answered on the worker's own response queue (:class:`HybridSource`,
  :func:`serve_hybrid_misses` is the main process's side).

Both open the tool index the main process built (a memory-mapped folder).

Light on imports on purpose: this module is loaded in every worker of those designs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import Registry
from ..sources.base import EmbedFn, Progress, VectorSource
from ..store import StoreLayout
from ..store.cache import cache_key
from ..store.index import ToolIndex
from .counting import CountingEmbedder


class DictCache:
    """The part of ``EmbeddingCache`` a manager uses, on a ``Manager().dict()`` proxy.

    Values are the raw float32 bytes of a vector (cheaper through a proxy than an ndarray).
    Every lookup is one round trip to the Manager's server process.
    """

    def __init__(self, proxy: Any, model_id: str, dim: int) -> None:
        self.proxy = proxy
        self.model_id = model_id
        self.dim = dim

    def key(self, text: str) -> bytes:
        return cache_key(self.model_id, text)

    def get_one(self, key: bytes) -> np.ndarray | None:
        value = self.proxy.get(key)
        return None if value is None else np.frombuffer(value, dtype=np.float32).copy()

    def get_many_into(self, keys: list[bytes], out: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            value = self.proxy.get(key)
            if value is not None:
                out[i] = np.frombuffer(value, dtype=np.float32)
                found[i] = True
        return found

    def get_many(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        return out, self.get_many_into([self.key(t) for t in texts], out)

    def put_many_keys(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.proxy.update(
            {k: np.ascontiguousarray(v, dtype=np.float32).tobytes() for k, v in zip(keys, vectors, strict=True)}
        )

    def count(self) -> int:
        return len(self.proxy)

    def close(self) -> None:
        pass


class DictSource(VectorSource):
    """Designs 3 and 4: hits from a Manager dict (``DictCache``), the main process's index."""

    def __init__(self, mode: str, proxy: Any, index_path: str, model_id: str, dim: int) -> None:
        self.mode = mode
        self.model_id = model_id
        self.dim = dim
        # what the hit path calls of an EmbeddingCache, over a Manager dict
        self.cache = DictCache(proxy, model_id, dim)
        self.index = ToolIndex(index_path)
        self.layout = StoreLayout(Path(index_path).parent.parent)  # <store>/indexes/<index>

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        return self.index

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        raise ValueError(f"the {self.mode} design searches the index the main process built, no other")

    def no_index_advice(self) -> str:
        return "the main process builds the index"


class OptionASource(DictSource):
    """Option A: the cache is a Manager dict; a miss is computed here and put in the dict."""

    def __init__(self, proxy: Any, index_path: str, embedder: CountingEmbedder) -> None:
        super().__init__("option-a", proxy, index_path, embedder.model_id, embedder.dim)
        self.embedder = embedder

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        vectors = self.embedder.embed(texts)
        self.cache.put_many_keys(keys, vectors)
        return vectors


class HybridSource(DictSource):
    """The hybrid: hits from the pre-filled Manager dict; a miss is asked of the main process."""

    def __init__(
        self, proxy: Any, requests: Any, responses: Any, slot: int, index_path: str, model_id: str, dim: int
    ) -> None:
        super().__init__("hybrid", proxy, index_path, model_id, dim)
        self._requests, self._responses, self._slot = requests, responses, slot
        self._ask_lock = threading.Lock()  # one question at a time on this worker's queue
        self._next_id = 0

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        with self._ask_lock:
            self._next_id += 1
            asked = self._next_id
            self._requests.put((self._slot, asked, list(texts)))
            request_id, values = self._responses.get()
        if request_id != asked:
            raise RuntimeError(f"hybrid: answer {request_id} to question {asked}")
        return np.stack([np.frombuffer(v, dtype=np.float32) for v in values])


def serve_hybrid_misses(requests: Any, responses: list[Any], proxy: Any, embedder: CountingEmbedder) -> None:
    """The main process's side of the hybrid: answer one question at a time until ``None``.

    The main process remembers what it computed, so a text two workers ask for is computed
    once; it writes every answer to the shared dict too, so other workers then hit it.
    """
    computed: dict[bytes, bytes] = {}
    while True:
        message = requests.get()
        if message is None:
            return
        slot, request_id, texts = message
        keys = [cache_key(embedder.model_id, t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in computed}
        if todo:
            vectors = embedder.embed(list(todo.values()))
            fresh = {k: v.tobytes() for k, v in zip(todo, vectors, strict=True)}
            computed.update(fresh)
            proxy.update(fresh)
        responses[slot].put((request_id, [computed[k] for k in keys]))
