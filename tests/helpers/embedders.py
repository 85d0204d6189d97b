"""``RecordingEmbedder``: the hashing model behind the Embedder interface, recording every batch.

The tests of the manager, the index and the batcher need to see what reached the model, to
hold a batch at a chosen moment, or to make the model fail. One embedder does all three, so
those tests share one fake instead of each writing its own.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import numpy as np

from embedshare.embedders.base import EmbedderDefaults
from embedshare.embedders.hashing import HashingEmbedder


class RecordingEmbedder(EmbedderDefaults):
    """An ``Embedder`` (embedshare/embedders/base.py) around ``HashingEmbedder(dim)``.

    - ``calls``: every batch it was asked to embed, in order, recorded as it is asked.
    - ``before_embed(n, texts)``: runs before batch n (from 1) is computed; a test holds the
      batch there (on an Event, a Barrier) or notes that it started.
    - ``failure``: while set, raised instead of computing (set it to None to heal the model).
    - ``salt``: prefixed to every text, so that the vectors are another model's; ``model_id``
      defaults to the hashing model's. ``concurrency`` is what the service's batcher reads
      (above 1 for a network-bound embedder); ``max_tokens`` and ``max_batch_tokens`` are the
      neutral ones of ``EmbedderDefaults`` until a test sets them.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        model_id: str | None = None,
        salt: str = "",
        concurrency: int = 1,
        before_embed: Callable[[int, list[str]], object] | None = None,
        failure: BaseException | None = None,
    ) -> None:
        self.model = HashingEmbedder(dim)
        self.dim = dim
        self.model_id = model_id or self.model.model_id
        self.salt = salt
        self.concurrency = concurrency
        self.before_embed = before_embed
        self.failure = failure
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecordingEmbedder({self.model_id!r}, {len(self.calls)} calls)"

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
            n = len(self.calls)
        if self.before_embed is not None:
            self.before_embed(n, list(texts))
        if self.failure is not None:
            raise self.failure
        return self.model.embed([self.salt + t for t in texts])

    @property
    def embedded(self) -> Counter[str]:
        """How many times each text was asked of the model."""
        with self._lock:
            return Counter(t for call in self.calls for t in call)

    def reset(self) -> None:
        """Forget the batches recorded so far."""
        with self._lock:
            self.calls.clear()
