"""Counting what a baseline design's model computes, across every process of a case.

Every embedder a baseline builds is wrapped in :class:`CountingEmbedder`, which counts the
calls and texts and remembers a short hash of every text, so that the benchmark can tell how
many *distinct* texts the model computed over the whole run. (embedshare's service counts
its own.)

Light on imports on purpose: this module is loaded in every worker.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..embedders.base import EmbedderDefaults
from ..util.digests import blake2b


def text_tag(text: str) -> bytes:
    """An 8-byte hash of a text, to count distinct texts across processes."""
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class CountingEmbedder(EmbedderDefaults):
    """Wraps an embedder: counts model (or API) calls, texts, and which texts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = int(inner.dim)
        # what sizes the service's work is the wrapped backend's (embedders/base.py)
        self.concurrency = inner.concurrency
        self.max_tokens = inner.max_tokens
        self.max_batch_tokens = inner.max_batch_tokens
        self.calls = 0
        self.texts = 0
        self.tags: set[bytes] = set()
        self._lock = threading.Lock()

    def load(self) -> None:
        self.inner.load()

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.inner.embed(texts)
        with self._lock:
            self.calls += 1
            self.texts += len(texts)
            self.tags.update(text_tag(t) for t in texts)
        return vectors

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "texts": self.texts, "tags": sorted(self.tags)}


_this_worker: CountingEmbedder | None = None  # this worker's embedder, when it has one


def counting_embedder(spec: str) -> CountingEmbedder:
    from ..embedders import create_embedder

    return CountingEmbedder(create_embedder(spec))


def count_this_worker(spec: str) -> CountingEmbedder:
    """A counting embedder for this worker's own model (not loaded yet), which ``worker_counts`` reports."""
    global _this_worker
    _this_worker = counting_embedder(spec)
    return _this_worker


def worker_counts() -> dict[str, Any] | None:
    """What this worker's own model computed; None where the worker has no model."""
    return _this_worker.counts() if _this_worker is not None else None
