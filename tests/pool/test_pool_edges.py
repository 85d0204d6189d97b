"""The pool's edges (issue 21): a callback that asks for the workers while one is being
replaced, and a killed service that must not stay a zombie while the pool runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from helpers.spawned import pool_edges, pool_jobs
from helpers.waiting import wait_for

from embedshare.client.state import read_state
from embedshare.pool.shared import SharedPool
from embedshare.pool.workers import WorkerPool
from embedshare.store import StoreLayout

pytestmark = pytest.mark.timeout(120)


def test_worker_pids_from_on_result_while_a_worker_is_replaced_answers_the_pids_known_now(tmp_path: Path) -> None:
    """It raised ``AssertionError: no job should be in flight while waiting for workers``: the
    call waited for the replacement, re-entering the supervisor, and met the other task's reply."""
    answers: list[list[int]] = []

    def on_result(index: int, outcome) -> None:
        if index == 0:  # item 0's worker died for good (no retry): its replacement is starting
            (tmp_path / "release").touch()  # item 1's reply can now arrive
            answers.append(pool.worker_pids())
            (tmp_path / "go").touch()  # now the replacement may become ready

    with WorkerPool(2, initializer=pool_edges.count_generations, initargs=(str(tmp_path), 2), max_retries=0) as pool:
        first = set(pool.worker_pids())
        outcomes = pool.map(pool_edges.die_or_wait, [(0, str(tmp_path)), (1, str(tmp_path))], on_result=on_result)
        assert not outcomes[0].ok and "WorkerCrashed" in outcomes[0].error
        assert outcomes[1].ok and outcomes[1].value == 1
        after = set(pool.worker_pids())  # outside a callback: waits for the replacement, as before
    [during] = answers
    replacement = after - first
    assert len(during) == 2 and len(replacement) == 1
    assert set(during) == after  # the survivor and the replacement (still starting then)


def _zombies() -> list[int]:
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.timeout(240)
def test_a_killed_service_does_not_stay_a_zombie_while_the_pool_runs(store: Path) -> None:
    """The pool's own service (the parent's child) and the one a worker restarts (the worker's
    child) were both left zombies until the pool closed."""
    with SharedPool(workers=2, store=store, model="hash:64", progress=False) as pool:
        first = pool.service.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: first not in _zombies() and not psutil.pid_exists(first), 30, "the first service reaped")
        pool.map(pool_jobs.search_task, ["read a csv file"])  # a worker starts it again
        second = int(read_state(StoreLayout(store))["pid"])
        assert second != first
        os.kill(second, signal.SIGKILL)
        wait_for(
            lambda: not psutil.pid_exists(second), 30, "the restarted service reaped by the worker that started it"
        )
        assert _zombies() == []
