"""What every worker of a benchmark case runs after the task set, whatever the design:
its report, the cache-hit phase, the miss phase; and Option C's chunks of tasks.

Light on imports on purpose: this module is loaded in every worker.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..pool import attach
from .counting import worker_counts

if TYPE_CHECKING:  # pool.workers is imported where it runs: this module loads in every worker
    from ..pool.worker import Timed


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
        "embedder": worker_counts(),
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
