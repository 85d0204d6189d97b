"""The package's public surface: every name it exports resolves, and a source of the user's own
plugs into the one manager class (the manager reads hits; the source only computes misses)."""

from __future__ import annotations

import threading
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


def _index_of(folder: Any, tools: int) -> ToolIndex:
    """An index of the bundled registry's first ``tools`` tools, in the hash:32 model."""
    import json

    from embedshare.registry import load_registry
    from embedshare.registry.loader import bundled_registry_path
    from embedshare.store.index_build import open_or_build_index

    data = dict(list(json.loads(bundled_registry_path().read_text()).items())[:tools])
    embedder = create_embedder("hash:32")
    return open_or_build_index(folder, load_registry(data), embedder.embed, embedder.model_id, embedder.dim)


class SlowIndexSource(EchoSource):
    """Its served index takes a while (an index build): ``opening`` is set while it does."""

    index_on_first_use = True  # opened by the first search, not by the constructor

    def __init__(self, store: Any, served: ToolIndex) -> None:
        super().__init__(store)
        self.served, self.opening, self.release = served, threading.Event(), threading.Event()

    def served_index(self, embed: Any) -> ToolIndex | None:
        self.opening.set()
        assert self.release.wait(30)
        return self.served


def test_an_index_chosen_while_the_default_one_opens_is_the_one_searched(tmp_path):
    """``use_index`` (or ``load_registry``) in one thread while another's first search opens
    the source's index: the choice is kept, not overwritten when the opening ends."""
    served, chosen = (_index_of(tmp_path / name, names) for name, names in (("a", 2), ("b", 3)))
    source = SlowIndexSource(tmp_path / "store", served)
    manager = EmbeddingManager(source=source)
    opened: list[ToolIndex] = []
    first_search = threading.Thread(target=lambda: opened.append(manager.index))
    first_search.start()
    assert source.opening.wait(30)
    manager.use_index(chosen)
    source.release.set()
    first_search.join(30)
    assert manager.index is chosen
    assert opened == [chosen]  # the first search too
