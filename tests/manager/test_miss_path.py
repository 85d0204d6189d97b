"""The one miss path (sources/misspath.py) and its one rule for a failed cache write.

A cache that refuses writes (full, at its size limit) must not cost anyone their vectors: on
each of the three paths that compute misses for many callers (a process's threads, the
service's batcher, a Ray node's fetch) every waiter gets the correct vectors, the failure is
counted as ``cache_write_failures`` and logged once per run of failures, not per batch.
A user's own minimal source keeps working behind ``EmbeddingManager(source=...)``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
import types
from types import SimpleNamespace

import numpy as np
import pytest

from embedshare import EmbeddingManager
from embedshare.embedders import create_embedder
from embedshare.service.batcher import Batcher
from embedshare.service.metrics import ServiceMetrics
from embedshare.store import CacheFullError, EmbeddingCache
from embedshare.util.counters import Counters
from embedshare.util.singleflight import Promise, SingleFlight

pytestmark = pytest.mark.timeout(120)

HASH = create_embedder("hash:32")
FULL = {"map_size": 1 << 16, "max_map_size": 1 << 18}  # fills after a few thousand vectors


def _texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def _full_cache(path) -> EmbeddingCache:
    """An LMDB cache at its size limit: every further write raises CacheFullError."""
    cache = EmbeddingCache(path, HASH.model_id, HASH.dim, **FULL)
    with pytest.raises(CacheFullError):
        for b in range(1000):
            batch = _texts(f"filler {b}", 50)
            cache.put_many(batch, HASH.embed(batch))
    return cache


def _write_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cache write failed" in r.getMessage()]


def test_a_local_manager_on_a_full_cache_answers_counts_and_warns_once(tmp_path, caplog):
    manager = EmbeddingManager(tmp_path / "store", model="hash:32", cache_options=FULL)
    caplog.set_level(logging.WARNING, logger="embedshare")
    batches = [_texts(f"local batch {b}", 200) for b in range(60)]  # 12k vectors: past 256 KiB
    for batch in batches:
        assert manager.get_embeddings(batch).tobytes() == HASH.embed(batch).tobytes()
    failures = manager.stats()["cache_write_failures"]
    assert failures > 1  # the cache filled up and refused several writes
    assert len(_write_warnings(caplog)) == 1  # one warning for the run of failures
    manager.close()


def test_threads_waiting_for_a_text_whose_write_failed_get_its_vector(tmp_path):
    """The waiters of a key another thread computes (single-flight) are answered, not failed."""
    from embedshare.sources.local import LocalSource
    from embedshare.store import StoreLayout

    release = threading.Event()

    class Gated:
        model_id, dim = HASH.model_id, HASH.dim

        def embed(self, texts):
            assert release.wait(20), "the test never released the model"
            return HASH.embed(texts)

    source = LocalSource(StoreLayout(tmp_path / "store"), Gated(), _full_cache(tmp_path / "cache"))
    texts = _texts("shared miss", 400)  # more than the full cache has room for
    keys = [source.cache.key(t) for t in texts]
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(source.compute(keys, texts))) for _ in range(4)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and all(r.tobytes() == HASH.embed(texts).tobytes() for r in results)
    assert source.stats()["cache_write_failures"] >= 1
    assert source.stats()["texts_embedded"] == len(texts)  # computed once, for every thread


def test_the_batcher_on_a_full_cache_answers_counts_and_warns_once(tmp_path, caplog):
    cache = _full_cache(tmp_path / "cache")
    batcher = Batcher(SimpleNamespace(embedder=HASH, cache=cache), ServiceMetrics(), 400, 0.0)
    caplog.set_level(logging.WARNING, logger="embedshare")
    batches = [_texts(f"batcher batch {b}", 400) for b in range(5)]  # each more than there is room for

    async def main():
        batcher.start()
        try:
            out = []
            for batch in batches:  # one after the other: one commit each
                out.append(await batcher.embed([cache.key(t) for t in batch], batch))
            return out
        finally:
            await batcher.aclose()

    for got, batch in zip(asyncio.run(main()), batches, strict=True):
        assert got.tobytes() == HASH.embed(batch).tobytes()
    assert batcher.metrics.snapshot()["cache_write_failures"] == len(batches)
    assert len(_write_warnings(caplog)) == 1


@pytest.fixture
def node_service_class(monkeypatch):
    """``NodeService`` importable without Ray: a stand-in ``ray`` module, removed afterwards."""
    fake = types.ModuleType("ray")
    fake.remote = lambda cls: cls
    exceptions = types.ModuleType("ray.exceptions")
    exceptions.RayActorError = type("RayActorError", (Exception,), {})
    exceptions.ActorUnschedulableError = type("ActorUnschedulableError", (Exception,), {})
    fake.exceptions = exceptions
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.exceptions", exceptions)
    monkeypatch.delitem(sys.modules, "embedshare.ray.node", raising=False)
    module = importlib.import_module("embedshare.ray.node")
    yield module.NodeService
    sys.modules.pop("embedshare.ray.node", None)
    package = sys.modules["embedshare.ray"]
    if getattr(package, "node", None) is module:  # or a later `from embedshare.ray import node` gets it
        delattr(package, "node")


def test_a_ray_node_on_a_full_cache_answers_its_workers_and_counts(tmp_path, node_service_class):
    """On main a failed write on the node failed every waiter of the fetch."""
    from embedshare.sources.misspath import MissPath

    node = object.__new__(node_service_class)  # no service process: the owners are a stand-in
    node._cache = _full_cache(tmp_path / "cache")
    node._inflight = SingleFlight(Promise)
    node._counters = Counters(
        *("fetch_requests", "fetch_texts", "fetch_cache_hits", "fetch_joined", "cache_write_failures")
    )
    node._ask_owners = lambda keys, texts: HASH.embed(texts)
    node._misses = MissPath(node._cache, node._ask_owners, node._counters.add)
    texts = _texts("owned elsewhere", 400)
    assert node.fetch(texts).tobytes() == HASH.embed(texts).tobytes()
    assert node._counters.snapshot()["cache_write_failures"] == 1


def test_a_source_of_your_own_needs_only_compute_and_gets_registries_indexed(tmp_path):
    """The narrowed VectorSource: compute (and model_id, dim, layout, cache); no index policy
    of its own, so a registry is indexed in its store's folder. On main it had to write
    served_index, index_for and no_index_advice too (a TypeError without them)."""
    from embedshare.sources.base import VectorSource
    from embedshare.store import StoreLayout

    class MinimalSource(VectorSource):
        def __init__(self, store) -> None:
            self.model_id, self.dim = HASH.model_id, HASH.dim
            self.layout = StoreLayout(store)
            self.layout.make_private_root()
            self.cache = EmbeddingCache(self.layout.cache, self.model_id, self.dim)
            self.asked: list[str] = []

        def compute(self, keys, texts):
            self.asked += texts
            vectors = HASH.embed(texts)
            self.cache.put_many_keys(keys, vectors)
            return vectors

    source = MinimalSource(tmp_path / "store")
    manager = EmbeddingManager(source=source)
    assert manager.stats()["mode"] == "custom"
    with pytest.raises(Exception, match="load_registry"):
        manager.search("read a file")
    manager.load_registry("bundled")
    assert manager.search("read a csv file", k=3)  # indexed with the source's vectors
    assert manager.index.model_id == HASH.model_id
    asked = len(source.asked)
    manager.get_embeddings(source.asked[:5])  # every text embedded once is a hit now
    assert len(source.asked) == asked
    source.cache.close()
