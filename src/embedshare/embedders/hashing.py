"""A deterministic feature-hashing embedder: no model, no dependencies beyond numpy.

Word unigrams, word bigrams and character trigrams are hashed (blake2b, so the result is the
same in every process and on every machine, unlike Python's salted ``hash``) into ``dim``
signed buckets, then L2-normalised. Texts that share words get similar vectors, which is
enough for tests, CI and benchmarks that must not depend on a model.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from ..util.digests import blake2b
from .base import EmbedderDefaults, check_vectors

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder(EmbedderDefaults):
    """Feature hashing of word and character n-grams into ``dim`` dimensions."""

    def __init__(self, dim: int = 384) -> None:
        if not isinstance(dim, int) or not 8 <= dim <= 65536:
            raise ValueError(f"hash embedder dim must be an integer from 8 to 65536, got {dim!r}")
        self.dim = dim
        self.model_id = f"hash:{dim}:v1"

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in _features(text):
                digest = blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self.dim] += sign * weight
            if not out[row].any():
                out[row, 0] = 1.0  # e.g. a text of punctuation only: still a valid unit vector
        return check_vectors(out, len(texts), self.dim, "hash embedder")


def _features(text: str) -> list[tuple[str, float]]:
    words = _WORD.findall(text.lower())
    features = [("w:" + w, 1.0) for w in words]
    features += [("b:" + a + " " + b, 0.5) for a, b in itertools.pairwise(words)]
    for w in words:
        padded = f"<{w}>"
        features += [("c:" + padded[i : i + 3], 0.25) for i in range(len(padded) - 2)]
    return features
