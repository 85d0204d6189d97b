"""``VectorCache``: what the users of a cache call of it, so that another store fits.

The manager reads hits through it, the miss path (``sources/misspath.py``) writes through it.
``EmbeddingCache`` (LMDB) is the one the package opens; the benchmarks' shared-dict cache is
another (``bench/designs.py``).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VectorCache(Protocol):
    """Vectors of one model by cache key (``key(text)``); float32 rows of ``dim``."""

    model_id: str
    dim: int

    def key(self, text: str) -> bytes: ...

    def get_one(self, key: bytes) -> np.ndarray | None: ...

    def get_many(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)`` for texts; the rows not found are left as they were."""
        ...

    def get_many_into(self, keys: list[bytes], out: np.ndarray) -> np.ndarray:
        """Fill the rows of ``out`` found; the boolean mask of those found."""
        ...

    def put_many_keys(self, keys: list[bytes], vectors: np.ndarray) -> object:
        """Store vectors (raises ``CacheError`` when it cannot)."""
        ...

    def count(self) -> int:
        """Vectors stored."""
        ...
