"""What the docs say about the pool's settings matches the settings it has."""

from __future__ import annotations

import inspect
from pathlib import Path

from embedshare import SharedPool
from embedshare.pool.workers import WorkerPool

RELIABILITY = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_the_limits_name_the_pool_s_task_timeout_that_exists():
    limits = " ".join(RELIABILITY.read_text().split("## Limits worth knowing", 1)[1].split())
    for pool in (SharedPool, WorkerPool):
        assert "task_timeout" in inspect.signature(pool).parameters, pool
    assert "no per-task timeout" not in limits
    assert "`task_timeout` (`SharedPool`, `WorkerPool`)" in limits
