"""Where a service's CPU goes while 25 workers send misses, thread by thread, against the model alone.

Issue 20's profile of the miss path: is the service slower than its model because of work of
its own (the event loop, the cache writer) or because the model gets less of the machine?
For one backend (``--model local`` or ``local@torch``) it measures, in one run:

- the model alone in this process: texts/s at ``--batch`` texts a forward, and the CPU it took
  per text (``time.process_time``);
- a service on a fresh store with 25 workers (``bench/backend_worker.py``'s, by path) sending
  ``--per-request`` never-seen short texts a request (several, ``1,16,64``: a phase each on one
  service, as bench --backends runs them) for ``--seconds``: texts/s, the service's forwards and
  mean batch, and every thread's CPU per text and page faults per second
  (``/proc/PID/task/TID/stat``; threads by id: the model's and ONNX Runtime's or torch's pool
  threads are the two busiest, the event loop is the process's main thread).

    python bench/service_threads.py --model local
    python bench/service_threads.py --model local@torch
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[str, tuple[int, int]]:
    """Each thread's CPU ticks (user + system) and minor faults."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        name = "main (event loop)" if tid == str(pid) else f"thread {tid}"
        out[name] = (int(fields[11]) + int(fields[12]), int(fields[7]))
    return out


def model_alone(model: str, batch: int) -> None:
    from embedshare.bench.backend_worker import make_text
    from embedshare.embedders import create_embedder

    embedder = create_embedder(model)
    embedder.load()
    texts = [make_text(i, "alone", "short") for i in range(batch * 40)]
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder.embed(texts[start : start + batch])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{model} alone, batch {batch}: {len(texts) / wall:.0f} texts/s, {1e3 * cpu / len(texts):.2f} ms CPU a text")


def service_under_load(model: str, sizes: list[int], seconds: float) -> None:
    """One service, a phase per request size in ``sizes``, in that order (bench --backends runs
    1, 16 and 64 on one service: a phase can carry the state of the phases before it)."""
    from embedshare.bench.backend_variant import Workers
    from embedshare.service.launcher import EmbeddingService

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddingService(Path(tmp) / "store", model=model, export_env=False, start_timeout=600) as service,
    ):
        pid = service.stats()["pid"]
        workers = Workers(25, {**os.environ, "EMBEDSHARE_ADDRESS": service.address, "EMBEDSHARE_MODEL": model})
        try:
            for phase, per_request in enumerate(sizes):
                before, stats_before, started = thread_times(pid), dict(service.stats()), time.time()
                workers.send(f"run {seconds} {per_request} profile{phase} short")
                replies = workers.replies()
                wall = max(r["ended"] for r in replies) - started
                after = (thread_times(pid), dict(service.stats()))
                report(model, per_request, replies, wall, (before, stats_before), after)
        finally:
            workers.close()


Snapshot = tuple[dict[str, tuple[int, int]], dict[str, Any]]  # each thread's (ticks, faults); the service's stats


def report(
    model: str, per_request: int, replies: list[dict[str, Any]], wall: float, before: Snapshot, after: Snapshot
) -> None:
    """One phase's texts/s, forwards and the five busiest threads' CPU and faults."""
    from embedshare.bench.backend_variant import model_counters

    texts = sum(r["texts"] for r in replies)
    calls0, model0, texts0 = model_counters(before[1])
    calls1, model1, texts1 = model_counters(after[1])
    forwards = max(1, calls1 - calls0)
    print(
        f"{model} service, {per_request} texts a request: {texts / wall:.0f} texts/s, {calls1 - calls0} forwards, "
        f"mean batch {(texts1 - texts0) / forwards:.1f}, mean forward {1e3 * (model1 - model0) / forwards:.0f} ms"
    )
    cpu: dict[str, float] = {}
    faults: dict[str, int] = {}
    for name, (ticks, minflt) in after[0].items():
        ticks0, minflt0 = before[0].get(name, (0, 0))
        cpu[name], faults[name] = (ticks - ticks0) / TICK, minflt - minflt0
    for name, seconds_used in sorted(cpu.items(), key=lambda item: -item[1])[:5]:
        print(
            f"  {name:20} {seconds_used / wall:.2f} cores, {1e3 * seconds_used / texts:.3f} ms CPU a text, "
            f"{faults[name] / wall:,.0f} faults/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="local")
    parser.add_argument("--per-request", default="16", help="texts a request; several (1,16,64): phases on one service")
    parser.add_argument("--batch", type=int, default=64, help="texts a forward of the model alone")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    model_alone(args.model, args.batch)
    service_under_load(args.model, [int(n) for n in args.per_request.split(",")], args.seconds)
