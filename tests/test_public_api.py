"""The package's public surface: every name it exports resolves, and a source of the user's own
plugs into the one manager class (the manager reads hits; the source only computes misses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

import embedshare
from embedshare import EmbeddingManager, NoIndexError, VectorSource
from embedshare.embedders import create_embedder
from embedshare.registry import Registry
from embedshare.store import EmbeddingCache, StoreLayout, ToolIndex


def test_every_exported_name_resolves():
    for name in embedshare.__all__:
        assert getattr(embedshare, name) is not None, name


class EchoSource(VectorSource):
    """A source of a user's own: the hashing model, with every batch it was asked recorded."""

    mode = "echo"

    def __init__(self, store: Any) -> None:
        self.embedder = create_embedder("hash:32")
        self.model_id, self.dim = self.embedder.model_id, self.embedder.dim
        self.layout = StoreLayout(store)
        self.layout.make_private_root()
        self.cache = EmbeddingCache(self.layout.cache, self.model_id, self.dim)
        self.asked: list[list[str]] = []

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        self.asked.append(list(texts))
        vectors = self.embedder.embed(texts)
        self.cache.put_many_keys(keys, vectors)
        return vectors

    def served_index(self, embed: Any) -> ToolIndex | None:
        return None

    def index_for(self, registry: Registry, name: str, embed: Any, progress: Any = None) -> ToolIndex:
        raise ValueError("this source serves no registry")

    def no_index_advice(self) -> str:
        return "this source serves no registry"


def test_a_source_of_your_own_gets_only_the_misses_each_once(tmp_path):
    source = EchoSource(tmp_path / "store")
    manager = EmbeddingManager(source=source)
    texts: Sequence[str] = ["read a file", "send a request", "read a file"]
    vectors = manager.get_embeddings(texts)
    assert source.asked == [["read a file", "send a request"]]  # the misses, each once
    assert vectors.tobytes() == source.embedder.embed(list(texts)).tobytes()
    assert manager.get_embedding("send a request").tobytes() == vectors[1].tobytes()  # a hit
    assert source.asked == [["read a file", "send a request"]]  # nothing more was computed
    stats = manager.stats()
    assert (stats["mode"], stats["hits"], stats["misses"]) == ("echo", 1, 3)  # misses count asks
    with pytest.raises(NoIndexError, match="this source serves no registry"):
        manager.search("read a file")


def test_a_source_and_a_store_to_build_a_local_one_from_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        EmbeddingManager(tmp_path / "store", source=EchoSource(tmp_path / "other"))
