"""``run_threads``: n threads that start together and are joined by a deadline.

Started one by one, the first threads of a test may finish before the last start, and the
concurrency it claims never happens; a thread's exception, left in the thread, is only a
warning. Here a barrier releases them together and the test sees every failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_threads(n: int, fn: Callable[[int], T], timeout: float = 60.0) -> list[T]:
    """Call ``fn(i)`` for i in 0..n-1, each in its own thread, all released at once.

    Returns the results in the order of i. The first exception a thread raised is raised
    here; threads still running ``timeout`` seconds after the start fail the test.
    """
    barrier = threading.Barrier(n)
    results: dict[int, T] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"run_threads-{i}", daemon=True) for i in range(n)]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    running = sum(thread.is_alive() for thread in threads)
    if running:
        raise AssertionError(f"{running} of {n} threads did not finish within {timeout} s")
    return [results[i] for i in range(n)]
