"""Top-level task and initializer functions for test_worker_pool.py.

They live in their own module so that spawned workers can import them by name. Every
execution that matters is recorded by appending a line to a per-item file (O_APPEND writes of
a short line are atomic), so the tests can count executions across processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from helpers.waiting import wait_for


def record(path: str | os.PathLike, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def square(x: int) -> int:
    return x * x


def getpid() -> int:
    return os.getpid()


def raise_on_three(arg: tuple[int, str]) -> int:
    x, d = arg
    record(Path(d) / f"run-{x}", str(os.getpid()))
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x * 10


def die_first_time(arg: tuple[int, str, frozenset[int]]) -> int:
    """SIGKILL our own worker on the first attempt of each victim item, then succeed."""
    x, d, victims = arg
    if x in victims:
        try:
            fd = os.open(Path(d) / f"marker-{x}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            pass  # second attempt: behave
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    record(Path(d) / f"done-{x}", str(os.getpid()))
    return x * x


def always_die(arg: tuple[int, str, int]) -> int:
    x, d, victim = arg
    if x == victim:
        record(Path(d) / f"attempt-{x}", str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def block_until_released(arg: tuple[int, str]) -> int:
    """Announce which worker runs item x, then wait until the test creates ``release``."""
    x, d = arg
    dd = Path(d)
    tmp = dd / f".running-{x}-{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, dd / f"running-{x}")  # atomic: the test never reads a half-written pid
    wait_for((dd / "release").exists, 20, "the test to release the task")
    record(dd / f"done-{x}", str(os.getpid()))
    return x


def unpicklable_result(x: int) -> object:
    return lambda: x


def init_record(d: str, var: str) -> None:
    record(Path(d) / f"init-{os.getpid()}", os.environ.get(var, "<unset>"))


def init_fail() -> None:
    raise ValueError("boom in initializer")


def init_exit() -> None:
    os._exit(7)


def hang_on_two(arg: tuple[int, str]) -> int:
    """Item 2 never returns (as a task stuck in native code); the others square."""
    x, d = arg
    record(Path(d) / f"run-{x}", str(os.getpid()))
    if x == 2:
        while True:
            signal.pause()
    return x * x
