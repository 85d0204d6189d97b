"""The body of the baseline process of memory reports: numpy imported, nothing else.

A module of its own so that the baseline imports nothing of embedshare's beyond this file.
"""

from typing import Any


def bare_worker(conn: Any, env: dict[str, str]) -> None:
    import os

    os.environ.update(env)  # as a pool worker does, before numpy starts its BLAS threads
    import numpy  # noqa: F401  (the baseline is an interpreter that has numpy)

    conn.send("ready")
    conn.recv()  # wait until measured
