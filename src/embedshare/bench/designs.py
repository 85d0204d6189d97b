"""The designs the benchmark compares, as they run inside a worker process.

Every design gives the worker an ``EmbeddingManager`` (the one API: get_embedding, search,
find_similar_tools, ...), installed as the process's ``get_embedding_manager()``, so the same
task code (``bench.workload.run_task``) runs on all of them; what differs is the manager's
*source* of vectors for cache misses, and the cache it reads hits from (``embedshare.sources``):

1. ``per-process``: the seed's "now". Each worker builds its own ``EmbeddingManager``: its own
   model, its own cache (LMDB in a folder of its own) and its own index.
2. ``option-c``: the seed's singleton. A few processes, each with one ``EmbeddingManager``
   shared by many threads.
3. ``option-a``: the seed's Option A. A ``multiprocessing.Manager().dict()`` is the shared
   cache; a miss is computed in the worker by its own embedder and put in the dict.
4. ``hybrid``: the seed's best design. The Manager dict is pre-filled with the common texts by
   the main process; a miss is sent to the main process on a request queue, which computes it
   with its embedder, puts it in the dict and answers on the worker's own response queue.
5. ``embedshare``: ``SharedPool``'s workers (``pool.attach``): the service and the zero-copy
   client.

Designs 3 and 4 open the tool index the main process built (a memory-mapped folder), which
costs them nothing per worker; designs 1 and 2 build their own, as the seed's managers do.

Every embedder a baseline builds is wrapped in :class:`CountingEmbedder`, which counts the
calls and texts and remembers a short hash of every text, so that the benchmark can tell how
many *distinct* texts the model computed over the whole run.

Light on imports on purpose: this module is loaded in every worker.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedders.base import EmbedderDefaults
from ..manager import EmbeddingManager
from ..pool import attach
from ..registry import Registry
from ..sources.base import EmbedFn, Progress, VectorSource
from ..store import StoreLayout
from ..store.cache import cache_key
from ..store.index import ToolIndex
from ..util.digests import blake2b

if TYPE_CHECKING:  # pool.workers is imported where it runs: this module loads in every worker
    from ..pool.worker import Timed

DESIGNS = ("per-process", "option-c", "option-a", "hybrid", "embedshare")


def text_tag(text: str) -> bytes:
    """An 8-byte hash of a text, to count distinct texts across processes."""
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class CountingEmbedder(EmbedderDefaults):
    """Wraps an embedder: counts model (or API) calls, texts, and which texts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = int(inner.dim)
        self.calls = 0
        self.texts = 0
        self.tags: set[bytes] = set()
        self._lock = threading.Lock()

    def load(self) -> None:
        load = getattr(self.inner, "load", None)
        if load:
            load()

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


_counting: CountingEmbedder | None = None  # this worker's embedder, when it has one


def counting_embedder(spec: str) -> CountingEmbedder:
    from ..embedders import create_embedder

    return CountingEmbedder(create_embedder(spec))


# -- 1 and 2: a manager of its own in each process -------------------------------------------


def init_own_manager(store_root: str, spec: str, registry: str) -> None:
    """Initializer of designs 1 and 2: this process builds its own manager, model loaded."""
    global _counting
    from ..access import set_embedding_manager

    started = time.perf_counter()
    _counting = counting_embedder(spec)
    manager = EmbeddingManager(Path(store_root) / str(os.getpid()), model=_counting, registry=registry)
    _counting.load()  # the seed's manager is ready once built
    set_embedding_manager(manager)
    attach._attach_seconds = time.perf_counter() - started


# -- 3 and 4: a multiprocessing.Manager dict as the shared cache -----------------------------


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


def init_option_a(proxy: Any, index_path: str, spec: str) -> None:
    global _counting
    from ..access import set_embedding_manager

    started = time.perf_counter()
    _counting = counting_embedder(spec)
    _counting.load()
    set_embedding_manager(EmbeddingManager(source=OptionASource(proxy, index_path, _counting)))
    attach._attach_seconds = time.perf_counter() - started


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


def init_hybrid(
    proxy: Any, requests: Any, responses: list[Any], slots: Any, index_path: str, model_id: str, dim: int
) -> None:
    from ..access import set_embedding_manager

    started = time.perf_counter()
    slot = slots.get()  # which response queue is this worker's
    set_embedding_manager(
        EmbeddingManager(source=HybridSource(proxy, requests, responses[slot], slot, index_path, model_id, dim))
    )
    attach._attach_seconds = time.perf_counter() - started


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


# -- what every worker runs, whatever the design ---------------------------------------------


def worker_report() -> dict[str, Any]:
    """Counters, latencies and attach time of this worker (after the task phase)."""
    from ..access import get_embedding_manager

    manager = get_embedding_manager()
    stats = manager.stats(latency_samples=True)
    return {
        "pid": os.getpid(),
        "dim": manager.dim,
        "attach_seconds": attach._attach_seconds,
        "hits": stats["hits"],
        "misses": stats["misses"],
        "search_samples": stats["latency"]["search"].get("samples", []),
        "similar_samples": stats["latency"]["find_similar_tools"].get("samples", []),
        "embedder": _counting.counts() if _counting is not None else None,
    }


def hit_latencies(texts: list[str], calls: int) -> dict[str, list[int]]:
    """``get_embedding`` of texts that are cached, timed one call at a time (ns).

    Where the cache is LMDB, also the parts of a hit: ``get_one`` (a read transaction, the
    lookup, a copy into a fresh array) and the floor design.md quotes, a lookup in a long-lived
    read transaction, zero-copy. The three are timed in turn in one loop, so they meet the same
    load from the other workers (which run this phase at the same moment).
    """
    from ..access import get_embedding_manager

    manager = get_embedding_manager()
    manager.get_embeddings(texts)  # make sure they are cached, in every design
    get = manager.get_embedding
    clock = time.perf_counter_ns
    n = len(texts)
    out: dict[str, list[int]] = {"get_embedding": []}
    cache = manager.cache
    if not (hasattr(cache, "get_one") and hasattr(cache, "_env_for_this_process")):
        for i in range(calls):
            text = texts[i % n]
            started = clock()
            get(text)
            out["get_embedding"].append(clock() - started)
        return out
    keys = [cache.key(t) for t in texts]
    out["get_one"], out["lmdb_floor"] = [], []
    get_one = cache.get_one
    with cache._env_for_this_process().begin(buffers=True) as txn:
        for i in range(calls):
            text, key = texts[i % n], keys[i % n]
            started = clock()
            get(text)
            between = clock()
            get_one(key)
            last = clock()
            # every key was just written: get never misses here, and a check would be timed
            np.frombuffer(txn.get(key), dtype=np.float32)
            ended = clock()
            out["get_embedding"].append(between - started)
            out["get_one"].append(last - between)
            out["lmdb_floor"].append(ended - last)
    return out


def miss_phase(seconds: float, threads: int, tag: str) -> dict[str, Any]:
    """Send distinct, never-seen texts one ``get_embedding`` at a time, from ``threads``
    threads, for ``seconds``; returns how many were answered and when the last one was."""
    from ..access import get_embedding_manager
    from .workload import MISS_WORDS

    manager = get_embedding_manager()
    deadline = time.time() + seconds
    counts = [0] * threads

    def run(t: int) -> None:
        i = 0
        while time.time() < deadline:
            a, b = MISS_WORDS[(i * 7 + t) % len(MISS_WORDS)], MISS_WORDS[(i * 3 + 5) % len(MISS_WORDS)]
            manager.get_embedding(f"{a} {b} {tag} {os.getpid()} {t} {i}")
            i += 1
        counts[t] = i

    if threads == 1:
        run(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
    return {"texts": sum(counts), "ended": time.time()}


_threads: ThreadPoolExecutor | None = None


def run_chunk(args: tuple[list[dict[str, Any]], int]) -> list[Timed]:
    """Option C: run a chunk of tasks on this process's threads (one shared manager)."""
    global _threads
    from ..pool.worker import timed_call
    from .workload import run_task

    chunk, threads = args
    if _threads is None:
        _threads = ThreadPoolExecutor(threads, thread_name_prefix="option-c")
    return list(_threads.map(timed_call, [(run_task, t) for t in chunk]))
