"""Tasks and an initializer for the pool's edge cases (issue 21): a callback that asks for the
workers' pids while a worker is being replaced. Importable by name: spawned workers run them."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.waiting import wait_for

DEADLINE = 60.0


def count_generations(folder: str, workers: int) -> None:
    """Initializer: a replacement worker (one started after the first ``workers``) waits until
    the test lets it become ready (``go``), so that a replacement is still starting for as
    long as the test needs."""
    marks = Path(folder, "inits")
    marks.mkdir(exist_ok=True)
    (marks / str(os.getpid())).touch()
    if len(list(marks.iterdir())) > workers:
        wait_for(lambda: Path(folder, "go").exists(), DEADLINE, "the test to let the replacement start")


def die_or_wait(args: tuple[int, str]) -> int:
    """Item 0 kills its worker; item 1 answers once the test's callback has begun (``release``)."""
    item, folder = args
    if item == 0:
        os._exit(1)
    wait_for(lambda: Path(folder, "release").exists(), DEADLINE, "the callback to release this task")
    return item
