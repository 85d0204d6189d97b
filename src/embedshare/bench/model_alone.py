"""The ``model-alone`` case: the model's own best batched throughput, in one process.

The ceiling against which the benchmark measures what the service delivers with every worker
sending misses (run by ``case.py`` in a fresh interpreter, like every case).
"""

from __future__ import annotations

import time
from typing import Any


def run_model_alone(spec: dict[str, Any]) -> dict[str, Any]:
    """The model's own best batched throughput in one process (distinct texts).

    The local model is measured with its backend's default threads (one per core) and with one
    thread: on a busy machine one thread can be faster, and "best" takes the better.
    """
    from ..embedders import create_embedder

    thread_options: list[int | None] = [None, 1] if spec["model_label"] == "local" else [None]
    seconds = spec["seconds"]
    by_batch: dict[str, float] = {}
    serial = 0
    for threads in thread_options:
        embedder = create_embedder(spec["model"], **({"threads": threads} if threads else {}))
        load = getattr(embedder, "load", None)
        if load:
            load()
        embedder.embed(["warm up the model", "and its tokenizer"])
        for batch in spec["batch_sizes"]:
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds or done == 0:
                texts = [f"distinct probe text {serial + i} about parsing files" for i in range(batch)]
                serial += batch
                embedder.embed(texts)
                done += batch
            key = str(batch) if threads is None else f"{batch} (1 thread)"
            by_batch[key] = done / (time.perf_counter() - started)
    best = max(by_batch, key=lambda batch: by_batch[batch])
    return {
        "kind": "model-alone",
        "model": spec["model"],
        "model_label": spec["model_label"],
        "texts_per_second_by_batch": by_batch,
        "best_batch": best,
        "best_texts_per_second": by_batch[best],
    }
