"""What runs inside every pool worker: attach at start, report at the end.

Kept light on purpose (no psutil, no launcher, no tqdm): every module a worker imports costs
its memory in each of the 25 workers.
"""

from __future__ import annotations

import time
from typing import Any

_attach_seconds: float | None = None


def attach_worker() -> None:
    """Worker initializer: build this process's shared manager before the first task."""
    global _attach_seconds
    from ..access import get_embedding_manager

    started = time.perf_counter()
    get_embedding_manager()
    _attach_seconds = time.perf_counter() - started


def worker_stats() -> dict[str, Any]:
    """Collected from every worker at the end of a run."""
    from ..access import get_embedding_manager

    stats = get_embedding_manager().stats(latency_samples=True)
    stats["attach_seconds"] = _attach_seconds
    return stats
