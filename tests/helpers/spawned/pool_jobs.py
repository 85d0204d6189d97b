"""Task functions for SharedPool tests (importable in spawned workers)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def search_task(query: str) -> dict:
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    return {
        "query": query,
        "vector": manager.get_embedding(query).tobytes(),
        "top": [r.name for r in manager.search(query, k=3)],
        "mode": manager.stats()["mode"],
    }


def crash_once_then_search(args: tuple[str, str]) -> dict:
    """SIGKILL this worker the first time a marked query is seen (marker file), then work."""
    query, marker_dir = args
    marker = Path(marker_dir) / (query.replace(" ", "_") + ".crashed")
    if query.startswith("crash") and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return search_task(query)


def kill_service_once_then_search(args: tuple[str, str]) -> dict:
    """The first task to get here SIGKILLs the service (a marker file makes it once)."""
    query, marker_dir = args
    marker = Path(marker_dir) / "service.killed"
    if query == "kill the service":
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            from embedshare.client.state import read_state
            from embedshare.store.layout import StoreLayout

            pid = read_state(StoreLayout(os.environ["EMBEDSHARE_STORE"]))["pid"]
            os.write(fd, str(pid).encode())
            os.close(fd)
            os.kill(pid, signal.SIGKILL)
    return search_task(query)


def blas_threads(_: object) -> dict[str, object]:
    """The BLAS thread settings a worker runs with, and what its numpy's BLAS really uses."""
    from threadpoolctl import threadpool_info

    return {
        "env": {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "blas": sorted({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}),
    }


def loaded_modules(_: object = None) -> list[str]:
    import sys

    return sorted(sys.modules)


def hang_forever_on(args: tuple[str, str]) -> str:
    """Search, except for the query "hang", which never returns (a task stuck in native code)."""
    query, hang = args
    if query == hang:
        while True:
            signal.pause()
    return search_task(query)["query"]


def manager_report(query: str) -> dict[str, object]:
    """How this worker's manager answers: the service's client (mode "shared") or not."""
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    return {
        "query": query,
        "mode": manager.stats()["mode"],
        "vector": manager.get_embedding(query).tobytes().hex(),
        "pid": os.getpid(),
    }


def sys_path_report(_: object = None) -> dict[str, object]:
    """This worker's sys.path and working folder."""
    import sys

    return {"sys_path": list(sys.path), "cwd": os.getcwd()}
