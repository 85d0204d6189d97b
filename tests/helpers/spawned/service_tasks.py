"""Functions run in child processes by the service and access tests (importable under spawn)."""

from __future__ import annotations

import os
import random


def embed_after_barrier(address, text, barrier, results):
    """Attach, wait until every process has attached, then ask for the same text at once."""
    from embedshare.access import SharedEmbeddingManager

    manager = SharedEmbeddingManager(address, on_failure="error")
    barrier.wait(timeout=60)
    results.put((os.getpid(), manager.get_embedding(text).tobytes()))


def embed_subset(address, texts, seed, results):
    """Embed a random overlapping subset of texts in random chunks."""
    from embedshare.access import SharedEmbeddingManager

    rng = random.Random(seed)
    manager = SharedEmbeddingManager(address, on_failure="error")
    chosen = rng.sample(texts, len(texts) // 2)
    out = {}
    while chosen:
        chunk, chosen = chosen[: rng.randint(1, 20)], chosen[20:]
        for text, vector in zip(chunk, manager.get_embeddings(chunk), strict=True):
            out[text] = vector.tobytes()
    results.put(out)


def manager_report(text):
    """What get_embedding_manager() gives in this process: mode, pid, a vector, a search."""
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    return {
        "mode": manager.stats()["mode"],
        "pid": os.getpid(),
        "vector": manager.get_embedding(text).tobytes(),
        "top": manager.search(text, k=3)[0].name,
        "same_instance": manager is get_embedding_manager(),
    }


def manager_report_to_queue(text, results):
    results.put(manager_report(text))
