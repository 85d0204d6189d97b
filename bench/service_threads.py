"""Where a service's CPU goes while 25 workers send misses, thread by thread, against the model alone.

Issue 20's profile of the miss path: is the service slower than its model because of work of
its own (the event loop, the cache writer) or because the model gets less of the machine?
For one backend (``--model local`` or ``local@torch``) it measures, in one run:

- the model alone in this process: texts/s at ``--batch`` texts a forward, and the CPU it took
  per text (``time.process_time``);
- a service on a fresh store with 25 workers (``bench/backend_worker.py``'s, by path) sending
  ``--per-request`` never-seen short texts a request for ``--seconds``: texts/s, the service's
  forwards and mean batch, and every thread's CPU per text and page faults per second
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


def service_under_load(model: str, per_request: int, seconds: float) -> None:
    from embedshare.bench.backend_variant import Workers, model_counters
    from embedshare.service.launcher import EmbeddingService

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddingService(Path(tmp) / "store", model=model, export_env=False, start_timeout=600) as service,
    ):
        pid = service.stats()["pid"]
        workers = Workers(25, {**os.environ, "EMBEDSHARE_ADDRESS": service.address, "EMBEDSHARE_MODEL": model})
        try:
            before, stats_before, started = thread_times(pid), service.stats(), time.time()
            workers.send(f"run {seconds} {per_request} profile short")
            replies = workers.replies()
            wall = max(r["ended"] for r in replies) - started
            after, stats_after = thread_times(pid), service.stats()
        finally:
            workers.close()
    texts = sum(r["texts"] for r in replies)
    calls0, model0, texts0 = model_counters(dict(stats_before))
    calls1, model1, texts1 = model_counters(dict(stats_after))
    forwards = max(1, calls1 - calls0)
    print(
        f"{model} service, {per_request} texts a request: {texts / wall:.0f} texts/s, {calls1 - calls0} forwards, "
        f"mean batch {(texts1 - texts0) / forwards:.1f}, mean forward {1e3 * (model1 - model0) / forwards:.0f} ms"
    )
    cpu: dict[str, float] = {}
    faults: dict[str, int] = {}
    for name, (ticks, minflt) in after.items():
        ticks0, minflt0 = before.get(name, (0, 0))
        cpu[name], faults[name] = (ticks - ticks0) / TICK, minflt - minflt0
    for name, seconds_used in sorted(cpu.items(), key=lambda item: -item[1])[:5]:
        print(
            f"  {name:20} {seconds_used / wall:.2f} cores, {1e3 * seconds_used / texts:.3f} ms CPU a text, "
            f"{faults[name] / wall:,.0f} faults/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="local")
    parser.add_argument("--per-request", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="texts a forward of the model alone")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    model_alone(args.model, args.batch)
    service_under_load(args.model, args.per_request, args.seconds)
