"""PSS of a process: its pages, shared ones split between the processes that map them.

Summed over the processes of a run it gives the run's real memory (RSS would count a
shared page once per process). Read from ``/proc/PID/smaps_rollup`` through psutil.
"""

from __future__ import annotations

import psutil


def pss_bytes(pid: int) -> int | None:
    """PSS of a process, or None if it is gone or not ours to read."""
    try:
        return int(psutil.Process(pid).memory_full_info().pss)
    except (psutil.Error, AttributeError, OSError):
        return None
