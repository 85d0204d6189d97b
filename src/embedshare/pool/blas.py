"""How many BLAS threads a pool worker runs, and setting that in a worker forked from a forkserver.

numpy's BLAS (OpenBLAS) starts a thread per core when it loads, reading the thread count from
the environment only then. Workers that share a machine's cores get a share each
(:func:`blas_thread_env`). A pool's forkserver loads numpy with one thread, so that it holds no
thread when it forks; a worker forked from it that should run more sets them after the fork
(:func:`use_blas_threads`).

Standard library only: every worker imports this.
"""

from __future__ import annotations

import os

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_thread_env(workers: int) -> dict[str, str]:
    """BLAS threads for each of ``workers`` processes that share this machine's cores.

    numpy's BLAS starts a thread per core in every process; 25 workers on 2 cores would run
    50 threads that wait for each other in every large matrix product (a search on a big
    index). Variables the user set are left as they are.
    """
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    return {name: threads for name in BLAS_THREAD_VARIABLES if name not in os.environ}


def wanted_blas_threads() -> int:
    """The thread count OpenBLAS would take from this environment at load (as it reads it)."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def use_blas_threads(loaded_with: int) -> None:
    """Give this process's BLAS the threads its environment asks for, if it loaded with others.

    Only a worker whose share is more than the one thread it inherited pays for threadpoolctl.
    """
    wanted = wanted_blas_threads()
    if wanted == loaded_with:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(wanted, user_api="blas")
