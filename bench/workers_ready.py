"""How long 25 ``SharedPool`` workers take to be ready once the service runs (seconds per pool).

The service starts first and stays up; each pool joins it, so what is timed is the workers'
start: spawned interpreters that import everything, or forks of the preloaded forkserver. Run
it with each checkout's interpreter, alternated, on the same machine:

    python bench/workers_ready.py [--pools 3] [--workers 25]

The imports are under the main guard on purpose: a worker runs the parent's main module again
(as the demo's workers run the ``embedshare`` entry point, which imports nothing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

if __name__ == "__main__":
    from embedshare import EmbeddingService
    from embedshare.bench.workload import make_tasks, run_task
    from embedshare.pool.shared import SharedPool

    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--workers", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, EmbeddingService(folder, model="local", registry="bundled"):
        ready = []
        for _ in range(args.pools):
            started = time.perf_counter()
            with SharedPool(args.workers, folder, model="local", registry="bundled", progress=False) as pool:
                ready.append(round(time.perf_counter() - started, 2))
                pool.map(run_task, make_tasks(200, "bundled"))  # they work, then the next pool
        print(json.dumps({"workers": args.workers, "ready_seconds": ready}))
