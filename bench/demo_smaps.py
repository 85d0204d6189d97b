"""Where the demo's memory is: PSS by mapping (``/proc/PID/smaps``) for each role of a run.

Runs the demo's embedshare part (a ``SharedPool`` of 25 workers forked from the preloaded
forkserver, the local model, the bundled registry, 2,000 tasks) and, while the workers are
still alive, sums PSS and private pages by mapping (the heap, anonymous memory, each shared
library, the LMDB map, the index files) for the service, the parent, the forkserver and the
average worker. Issue 20's profile of the demo's total against its 420 MB target:

    python bench/demo_smaps.py [--workers 25] [--tasks 2000] [--top 8]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def by_mapping(pid: int) -> tuple[Counter[str], Counter[str]]:
    """PSS and private KiB of ``pid``, by mapping (a file's base name, ``[heap]``, ``[anon]``)."""
    pss: Counter[str] = Counter()
    private: Counter[str] = Counter()
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if MAPPING.match(line):
                parts = line.split()
                name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
            elif line.startswith("Pss:"):
                pss[name] += int(line.split()[1])
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                private[name] += int(line.split()[1])
    return pss, private


def report(role: str, pids: list[int], top: int) -> None:
    pss: Counter[str] = Counter()
    private: Counter[str] = Counter()
    for pid in pids:
        one_pss, one_private = by_mapping(pid)
        pss.update(one_pss)
        private.update(one_private)
    n = max(1, len(pids))
    each = " each" if len(pids) > 1 else ""
    print(
        f"{role}{each} ({len(pids)} process{'es' if len(pids) > 1 else ''}): {sum(pss.values()) / n / 1024:.1f} MB PSS"
    )
    for name, kib in pss.most_common(top):
        print(f"   {name[:44]:44} PSS {kib / n / 1024:6.1f} MB   private {private[name] / n / 1024:6.1f} MB")


if __name__ == "__main__":
    from embedshare.bench.workload import make_tasks, run_task
    from embedshare.pool.shared import SharedPool

    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=25)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        SharedPool(
            args.workers,
            Path(folder) / "store",
            model="local",
            registry="bundled",
            progress=False,
            preload_modules=[run_task.__module__],
        ) as pool,
    ):
        pool.map(run_task, make_tasks(args.tasks, "bundled"))
        workers = pool.worker_pool
        report("service", [pool.service.stats()["pid"]], args.top)
        report("parent", [os.getpid()], args.top)
        if workers.forkserver_pid:
            report("forkserver", [workers.forkserver_pid], args.top)
        report("worker", workers.worker_pids(), args.top)
