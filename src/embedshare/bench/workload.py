"""The user's workload, as measured on their runs (design.md), and the task a worker runs.

Each task makes ~1.9 ``search`` calls and ~2.3 ``find_similar_tools`` calls; queries are
short and repetitive (the 10 most common strings ~60% of searches) and ~5% are strings never
seen before. Light on imports: this module is loaded in every worker.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..registry import load_registry

TOP10_SHARE = 0.60  # the 10 most common queries' share of all searches (design.md: 63%)
NEW_SHARE = 0.05  # searches with a string never seen before
# Words of the benchmarks' miss phases: texts made of them (and a serial number) are new every time.
MISS_WORDS = (
    "read",
    "parse",
    "csv",
    "file",
    "send",
    "http",
    "json",
    "compute",
    "hash",
    "merge",
    "filter",
    "rows",
    "upload",
    "image",
    "resize",
    "query",
    "database",
    "schedule",
)


def common_queries(registry: str = "bundled") -> list[str]:
    """Short queries a user would type for this registry: tool names and aliases as words."""
    queries: list[str] = []
    for tool in load_registry(registry).tools:
        queries.append(tool.name.replace("_", " "))
        queries += [a.replace("_", " ") for a in tool.raw.get("aliases", [])[:2]]
    return list(dict.fromkeys(queries))  # each once, in order


def _zipf_weights(n: int, top10_share: float) -> list[float]:
    """Zipf weights 1/r^s over n ranks, with s chosen so the top 10 get ``top10_share``."""
    lo, hi = 0.0, 5.0
    for _ in range(60):
        s = (lo + hi) / 2
        w = [1 / (r**s) for r in range(1, n + 1)]
        share = sum(w[:10]) / sum(w)
        lo, hi = (s, hi) if share < top10_share else (lo, s)
    return w


def make_tasks(count: int, registry: str = "bundled", seed: int = 7) -> list[dict[str, Any]]:
    """``count`` tasks of the user's shape, reproducible from ``seed``."""
    rng = random.Random(seed)
    queries = common_queries(registry)
    rng.shuffle(queries)
    weights = _zipf_weights(len(queries), TOP10_SHARE)
    tools = [t.name for t in load_registry(registry).tools]
    tool_weights = _zipf_weights(len(tools), 0.4)
    vocabulary = sorted(
        {w for t in load_registry(registry).tools for w in re.findall(r"[a-z]{4,}", t.description.lower())}
    )
    tasks = []
    new_count = 0
    for i in range(count):
        searches = []
        for _ in range(rng.choice((1, 2, 2, 2, 2, 2, 2, 2, 2, 3))):  # mean ~1.9
            if rng.random() < NEW_SHARE:
                new_count += 1
                words = rng.sample(vocabulary, 2)
                searches.append(f"{words[0]} {words[1]} {new_count}")  # never seen before
            else:
                searches.append(rng.choices(queries, weights)[0])
        similar = rng.choices(tools, tool_weights, k=rng.choice((2, 2, 2, 3, 3, 2, 2, 3, 2, 2)))  # ~2.3
        tasks.append({"id": i, "searches": searches, "similar": similar})
    return tasks


def distinct_texts_needed(tasks: list[dict[str, Any]], registry: str, preload: Iterable[str] = ()) -> int:
    """Distinct texts the task set needs embedded: the index's field texts, what is
    preloaded, and every (normalised) search query."""
    from ..manager import normalise_query
    from ..registry import field_texts

    texts = {t for tool in load_registry(registry).tools for t in field_texts(tool).values()}
    texts.update(preload)
    texts.update(normalise_query(q) for task in tasks for q in task["searches"])
    return len(texts)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One task: what a worker of the user's benchmark does with its embedding manager."""
    from ..access import get_embedding_manager

    manager = get_embedding_manager()
    return {
        "id": task["id"],
        "search": [[r.name for r in manager.search(q, k=5)] for q in task["searches"]],
        "similar": [[r.name for r in manager.find_similar_tools(n, k=5)] for n in task["similar"]],
    }


def attach_own_manager(store_root: str, model: str, registry: str) -> None:
    """Baseline worker initializer: this process builds its own manager, as each does today."""
    from ..access import set_embedding_manager
    from ..manager import EmbeddingManager
    from ..pool import attach

    started = time.perf_counter()
    manager = EmbeddingManager(Path(store_root) / str(os.getpid()), model=model, registry=registry)
    load = getattr(manager.embedder, "load", None)
    if load:
        load()  # the seed's manager is ready at construction
    set_embedding_manager(manager)
    attach._attach_seconds = time.perf_counter() - started
