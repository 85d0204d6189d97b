"""One worker of the backend comparison (``bench/backends.py``): attach, then send misses on cue.

``python -m embedshare.bench.backend_worker`` with ``EMBEDSHARE_ADDRESS`` and
``EMBEDSHARE_MODEL`` set. It prints ``ready`` once attached, then for each line
``run SECONDS PER_REQUEST TAG`` on stdin sends never-seen texts, ``PER_REQUEST`` in one
``get_embeddings`` call, until SECONDS have passed, and prints one JSON line with the count.
The parent starts every phase by writing to the workers' pipes: no sleeping on either side.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by main(), once the environment is set
    from embedshare.manager import EmbeddingManager


def send_misses(manager: EmbeddingManager, seconds: float, per_request: int, tag: str) -> dict[str, float]:
    """Distinct texts of query length (6-8 words), as the workload's searches are."""
    from .workload import MISS_WORDS

    deadline = time.time() + seconds
    sent = i = 0
    pid = os.getpid()
    while time.time() < deadline:
        batch = []
        for _ in range(per_request):
            a, b, c = (
                MISS_WORDS[(i * 7) % len(MISS_WORDS)],
                MISS_WORDS[(i * 3 + 5) % len(MISS_WORDS)],
                MISS_WORDS[(i * 5 + 2) % len(MISS_WORDS)],
            )
            batch.append(f"{a} {b} the {c} of {tag} {pid} {i}")
            i += 1
        manager.get_embeddings(batch)
        sent += len(batch)
    return {"texts": sent, "ended": time.time()}


def main() -> int:
    from embedshare.access import get_embedding_manager

    manager = get_embedding_manager(on_failure="error")
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "run":
            break
        print(json.dumps(send_misses(manager, float(parts[1]), int(parts[2]), parts[3])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
