"""Task functions run in SharedPool workers by the reliability tests (importable under spawn).

Each task uses only ``get_embedding_manager()``, as user task code does.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import traceback
from pathlib import Path

SEARCHES = [f"search query {i} about reading files and sending requests" for i in range(200)]
TOOLS = ["csv_parser", "http_post", "json_parser", "file_reader", "archive_creator", "csv_writer"]


def fault_task_texts(index: int) -> list[str]:
    """Three texts no other task asks for, and one that many tasks share."""
    return [f"fault task {index} text {j}" for j in range(3)] + [f"shared text {index % 40}"]


def fault_task_expected(manager, index: int) -> dict:
    """What ``fault_task`` returns, computed by any manager (the fault-free reference)."""
    vectors = manager.get_embeddings(fault_task_texts(index))
    return {
        "index": index,
        "digest": hashlib.sha256(vectors.tobytes()).hexdigest(),
        "top": [r.name for r in manager.search(SEARCHES[index % len(SEARCHES)], k=3)],
        "similar": [r.name for r in manager.find_similar_tools(TOOLS[index % len(TOOLS)], k=3)],
    }


def fault_task(args: tuple[int, str, float, bool]) -> dict:
    """Embed (misses: they need the service), search, find similar tools; then mark it done.

    The marker is created with O_CREAT | O_EXCL. With ``once`` it is named by the task alone, so
    a task that ran to its end twice fails the second time: every marker proves one complete run.
    Otherwise it is named by task and worker pid (one per attempt that reached its end).
    ``work`` seconds of simulated work keep the worker busy, so that a worker killed at a random
    moment is usually inside a task.
    """
    index, marker_dir, work, once = args
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    if work:
        time.sleep(work)  # the task's own work (not synchronisation)
    result = fault_task_expected(manager, index)
    result["mode"] = manager.stats()["mode"]
    name = f"{index}.done" if once else f"{index}-{os.getpid()}.done"
    fd = os.open(Path(marker_dir) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return result


# -- load and soak ---------------------------------------------------------------------------------

COMMON_TEXTS = [f"common text {i} for the soak" for i in range(200)]
COMMON_QUERIES = [f"common query {i} read a csv file" for i in range(50)]
# Latency buckets: 20 per decade from 1 us to 1000 s; a percentile is reported as its bucket's
# upper bound (at most 12% above the true value). Fixed size, whatever the number of calls.
BOUNDS = [10 ** (e / 20) * 1e-6 for e in range(181)]
KINDS = ("hit", "miss", "search", "similar")


def percentile_of(counts: list[int], q: float) -> float:
    total = sum(counts)
    if not total:
        return 0.0
    rank, seen = q / 100 * total, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return BOUNDS[min(i, len(BOUNDS) - 1)]
    return BOUNDS[-1]


def soak_task(args: tuple[int, float, int, int, str, float]) -> dict:
    """``threads`` threads call the manager for ``seconds``: hits, misses, searches, similar.

    Between calls a thread does ``think`` seconds of its own work (a task does more than embed).
    Every 10th miss's vector is checked against the hashing embedder computed here; an exception
    or a wrong vector is an error. Returns counts, latency histograms and errors.
    """
    import bisect

    worker, seconds, threads, seed, started_dir, think = args
    from embedshare import get_embedding_manager
    from embedshare.embedders import create_embedder

    manager = get_embedding_manager()
    reference = create_embedder(manager.model_id.rsplit(":", 1)[0])  # hash:64:v1 -> hash:64
    Path(started_dir, str(worker)).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    histograms = {kind: [0] * (len(BOUNDS) + 1) for kind in KINDS}
    worst = dict.fromkeys(KINDS, 0.0)
    errors: list[str] = []
    error_count = 0

    def run(thread: int) -> None:
        nonlocal error_count
        rng = random.Random(seed * 1000 + worker * 100 + thread)
        mine = {kind: [0] * (len(BOUNDS) + 1) for kind in KINDS}
        my_worst = dict.fromkeys(KINDS, 0.0)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            roll = rng.random()
            kind = "hit" if roll < 0.5 else "search" if roll < 0.7 else "similar" if roll < 0.8 else "miss"
            try:
                started = time.perf_counter()
                if kind == "hit":
                    manager.get_embedding(rng.choice(COMMON_TEXTS))
                elif kind == "search":
                    if not manager.search(rng.choice(COMMON_QUERIES), k=5):
                        raise AssertionError("a search found nothing")
                elif kind == "similar":
                    manager.find_similar_tools(rng.choice(TOOLS), k=5)
                else:
                    text = f"new text w{worker} t{thread} n{n} s{seed}"
                    vectors = manager.get_embeddings([text, rng.choice(COMMON_TEXTS)])
                    if n % 10 == 0 and vectors[0].tobytes() != reference.embed([text])[0].tobytes():
                        raise AssertionError(f"wrong vector for {text!r}")
                elapsed = time.perf_counter() - started
                mine[kind][bisect.bisect_left(BOUNDS, elapsed)] += 1
                my_worst[kind] = max(my_worst[kind], elapsed)
            except Exception:
                with lock:
                    error_count += 1
                    if len(errors) < 5:
                        errors.append(traceback.format_exc())
            if think:
                time.sleep(think * rng.random() * 2)  # the task's own work between calls
        with lock:
            for kind in KINDS:
                histograms[kind] = [a + b for a, b in zip(histograms[kind], mine[kind], strict=True)]
                worst[kind] = max(worst[kind], my_worst[kind])

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {
        "worker": worker,
        "pid": os.getpid(),
        "histograms": histograms,
        "max": worst,
        "errors": errors,
        "error_count": error_count,
    }
