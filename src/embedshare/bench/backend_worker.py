"""One worker of the backend comparison (``bench/backends.py``): attach, then send misses on cue.

``python -P backend_worker.py`` (run by its path, so that a baseline checkout's interpreter
runs this same load against its own client and service) with ``EMBEDSHARE_ADDRESS`` and
``EMBEDSHARE_MODEL`` set. It prints ``ready`` once attached, then for each line on stdin:

- ``run SECONDS PER_REQUEST TAG KIND``: sends never-seen texts (``short``: 6-8 words, as the
  workload's searches; ``long``: about 250 tokens, as a tool description or a document),
  ``PER_REQUEST`` in one ``get_embeddings`` call, until SECONDS have passed; prints one JSON
  line with the count, each request's latency and the CPU seconds it used;
- ``big SECONDS TEXTS CHARS TAG``: sends requests of ``TEXTS`` never-seen texts of ``CHARS``
  characters each until SECONDS have passed (at least one): the huge client of the fairness
  phase.

The parent starts every phase by writing to the workers' pipes: no sleeping on either side.
Only what every version of embedshare offers is imported (``access``, ``bench.workload``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by main(), once the environment is set
    from embedshare.manager import EmbeddingManager

LONG_WORDS = 185  # of MISS_WORDS (3-7 letters) and numbers: about 250 word pieces


def make_text(i: int, tag: str, kind: str) -> str:
    """The ``i``-th distinct text of this worker, ``short`` or ``long``."""
    from embedshare.bench.workload import MISS_WORDS

    words = [MISS_WORDS[(i * 7 + j * 5) % len(MISS_WORDS)] for j in range(3 if kind == "short" else LONG_WORDS)]
    return f"{words[0]} {words[1]} the {' '.join(words[2:])} of {tag} {os.getpid()} {i}"


def send_misses(manager: EmbeddingManager, seconds: float, per_request: int, tag: str, kind: str) -> dict[str, object]:
    deadline = time.time() + seconds
    sent = i = 0
    latencies: list[float] = []
    cpu = os.times()
    while time.time() < deadline:
        batch = [make_text(i + j, tag, kind) for j in range(per_request)]
        i += per_request
        started = time.perf_counter()
        manager.get_embeddings(batch)
        latencies.append(time.perf_counter() - started)
        sent += len(batch)
    spent = os.times()
    cpu_s = spent.user + spent.system - cpu.user - cpu.system
    return {"texts": sent, "ended": time.time(), "latencies": latencies, "cpu_s": cpu_s}


def send_big(manager: EmbeddingManager, seconds: float, texts: int, chars: int, tag: str) -> dict[str, object]:
    deadline = time.time() + seconds
    requests: list[float] = []
    while not requests or time.time() < deadline:
        prefix = f"{tag} {os.getpid()} request {len(requests)} text "
        batch = [(f"{prefix}{j} " + "lorem ipsum dolor sit amet " * (chars // 27 + 1))[:chars] for j in range(texts)]
        started = time.perf_counter()
        manager.get_embeddings(batch)
        requests.append(time.perf_counter() - started)
    return {"texts": texts * len(requests), "ended": time.time(), "request_seconds": requests}


def main() -> int:
    from embedshare.access import get_embedding_manager

    manager = get_embedding_manager(on_failure="error")
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if parts[:1] == ["run"]:
            result = send_misses(manager, float(parts[1]), int(parts[2]), parts[3], parts[4])
        elif parts[:1] == ["big"]:
            result = send_big(manager, float(parts[1]), int(parts[2]), int(parts[3]), parts[4])
        else:
            break
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
