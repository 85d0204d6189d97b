"""``python forkserver_default.py STORE``: Python 3.14's default on Linux, set by the user.

The program makes forkserver its start method, then runs workers three ways: its own
ProcessPoolExecutor, a WorkerPool with the default start method, and a SharedPool. Each task
reports whether its manager is the service's client (a worker that is not would load a model of
its own). Prints JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

from embedshare import EmbeddingService, SharedPool
from embedshare.pool.workers import WorkerPool
from helpers.spawned import pool_jobs

QUERIES = ["read a csv file", "send an HTTP POST", "resize an image", "parse json"]

if __name__ == "__main__":
    multiprocessing.set_start_method("forkserver")
    store = sys.argv[1]
    out: dict[str, object] = {}
    with EmbeddingService(store, model="hash:64", registry="bundled"):
        with ProcessPoolExecutor(3) as executor:
            out["executor"] = list(executor.map(pool_jobs.manager_report, QUERIES))
        with WorkerPool(2) as pool:
            out["worker_pool"] = pool.map_values(pool_jobs.manager_report, QUERIES)
    with SharedPool(workers=2, store=store, model="hash:64", progress=False) as shared:
        out["shared_pool"] = shared.map(pool_jobs.manager_report, QUERIES)
    print(json.dumps(out))
