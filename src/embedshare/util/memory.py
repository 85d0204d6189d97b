"""Memory as PSS: each shared page is split between the processes that map it.

RSS counts a shared page in full in every process (25 workers mapping the same 90 MB index
would "use" 2.2 GB); PSS divides it, so summing PSS over every process of a run gives the
real total. Read from ``/proc/PID/smaps_rollup`` through psutil.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Self

from .bare import bare_worker
from .children import safe_path_while_starting
from .pss import pss_bytes

MB = 1024 * 1024


@dataclass(frozen=True)
class ProcessMemory:
    role: str
    pid: int
    pss: int | None

    @property
    def pss_mb(self) -> float | None:
        return self.pss / MB if self.pss is not None else None


def measure(roles: dict[str, list[int]]) -> list[ProcessMemory]:
    """PSS of every pid, labelled by role (``{"service": [pid], "worker": [...]}``)."""
    return [ProcessMemory(role, pid, pss_bytes(pid)) for role, pids in roles.items() for pid in pids]


class BareInterpreter:
    """A spawned worker process that imported numpy and waits: what a worker costs anyway.

    Started through ``multiprocessing`` (spawn), like pool workers, so it carries the same
    interpreter and multiprocessing machinery; what a worker uses beyond it is embedshare's.
    Measured in the same run, at the same moment, as the workers it is compared with.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(env or {})  # the workers' environment (BLAS threads change its PSS)

    def __enter__(self) -> Self:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=bare_worker, args=(child, self.env), daemon=True)
        with safe_path_while_starting():  # spawn's `python -c` would put the working folder first
            self.process.start()
        child.close()
        self._conn.recv()  # it has imported numpy
        return self

    def pss(self) -> int | None:
        pid = self.process.pid  # None only before start()
        return pss_bytes(pid) if pid is not None else None

    def __exit__(self, *exc: object) -> None:
        self._conn.send("done")
        self.process.join(timeout=30)
