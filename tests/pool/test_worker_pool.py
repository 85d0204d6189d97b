"""WorkerPool: ordered results, task errors vs worker crashes, retries, replacement, cleanup."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
import pytest
from helpers.spawned import pool_tasks

from embedshare.pool.outcomes import TaskFailed, WorkerInitError
from embedshare.pool.workers import WorkerPool

pytestmark = pytest.mark.timeout(60)

START_METHODS = ["fork", "spawn"]


def _leftover_children(existing: frozenset[int] = frozenset()) -> list[str]:
    """Child processes still around (zombies included), except multiprocessing's helpers and
    those in ``existing`` (left by earlier tests of the session: not this pool's)."""
    left = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in existing:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                left.append(f"zombie {p.pid}")
                continue
            cmd = " ".join(p.cmdline())
        except psutil.ZombieProcess:
            left.append(f"zombie {p.pid}")
            continue
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" in cmd or "forkserver" in cmd:
            continue
        left.append(f"{p.pid}: {cmd}")
    return left


@pytest.fixture(autouse=True)
def no_leftover_processes():
    existing = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    yield
    assert _leftover_children(existing) == []


@pytest.mark.parametrize("start_method", [*START_METHODS, "forkserver"])
def test_results_in_input_order(start_method: str) -> None:
    seen: list[int] = []
    with WorkerPool(4, start_method=start_method) as pool:
        pids = set(pool.worker_pids())
        assert len(pids) == 4
        outcomes = pool.map(pool_tasks.square, range(200), on_result=lambda i, o: seen.append(i))
        assert [o.index for o in outcomes] == list(range(200))
        assert [o.value for o in outcomes] == [i * i for i in range(200)]
        assert all(o.ok and o.attempts == 1 and o.error is None for o in outcomes)
        # Each of the 4 ready workers got a task; no result came from anywhere else.
        assert {o.worker_pid for o in outcomes} == pids
        assert sorted(seen) == list(range(200))
        assert pool.crashes == []
        assert sorted(pool.collect(pool_tasks.getpid)) == sorted(pids)
    assert pool.closed


@pytest.mark.parametrize("start_method", START_METHODS)
def test_task_exception_is_a_failure_not_retried(tmp_path: Path, start_method: str) -> None:
    with WorkerPool(2, start_method=start_method) as pool:
        outcomes = pool.map(pool_tasks.raise_on_three, [(i, str(tmp_path)) for i in range(10)])
        bad = outcomes[3]
        assert not bad.ok and bad.value is None
        assert bad.error_type == "ValueError"
        assert bad.error == "ValueError: item 3 is bad"
        assert "Traceback" in bad.traceback and "raise_on_three" in bad.traceback
        assert bad.attempts == 1
        assert pool_tasks.count_lines(tmp_path / "run-3") == 1  # ran exactly once
        for o in outcomes[:3] + outcomes[4:]:
            assert o.ok and o.value == o.index * 10
        assert pool.crashes == []
        with pytest.raises(TaskFailed, match="item 3 is bad"):
            pool.map_values(pool_tasks.raise_on_three, [(3, str(tmp_path))])
        # A result that cannot be pickled is a task failure too, and the worker survives.
        (unpicklable,) = pool.map(pool_tasks.unpicklable_result, [1])
        assert not unpicklable.ok and "could not be pickled" in unpicklable.error
        assert pool.map_values(pool_tasks.square, [5]) == [25]
        assert pool.crashes == []
        with pytest.raises(Exception, match="lambda"):  # fn must be importable by name
            pool.map(lambda x: x, [1])


@pytest.mark.parametrize("start_method", START_METHODS)
def test_worker_killed_by_its_task_is_retried_once(tmp_path: Path, start_method: str) -> None:
    victims = frozenset({2, 7, 11})
    items = [(i, str(tmp_path), victims) for i in range(16)]
    with WorkerPool(3, start_method=start_method, max_retries=2) as pool:
        outcomes = pool.map(pool_tasks.die_first_time, items)
        assert [o.value for o in outcomes] == [i * i for i in range(16)]
        assert all(o.ok for o in outcomes)
        for o in outcomes:
            assert o.attempts == (2 if o.index in victims else 1), o
            # Exactly one successful execution per item: none lost, none duplicated.
            assert pool_tasks.count_lines(tmp_path / f"done-{o.index}") == 1, o
        assert sorted(c.task_index for c in pool.crashes) == sorted(victims)
        for c in pool.crashes:
            assert c.signal == "SIGKILL" and c.exitcode == -signal.SIGKILL
            assert c.attempt == 1 and not c.during_startup
            assert c.pid not in pool.worker_pids()
        assert len(pool.worker_pids()) == 3


@pytest.mark.parametrize("start_method", START_METHODS)
def test_task_that_always_kills_its_worker_fails_after_retries(tmp_path: Path, start_method: str) -> None:
    with WorkerPool(2, start_method=start_method, max_retries=2) as pool:
        outcomes = pool.map(pool_tasks.always_die, [(i, str(tmp_path), 4) for i in range(8)])
        bad = outcomes[4]
        assert not bad.ok
        assert bad.error_type == "WorkerCrashed"
        assert bad.error.startswith("WorkerCrashed:") and "SIGKILL" in bad.error
        assert bad.attempts == 3
        assert pool_tasks.count_lines(tmp_path / "attempt-4") == 3
        assert [o.value for o in outcomes if o.index != 4] == [i + 1 for i in range(8) if i != 4]
        assert [c.task_index for c in pool.crashes] == [4, 4, 4]
        assert [c.attempt for c in pool.crashes] == [1, 2, 3]
        # Still usable, at full strength.
        assert len(pool.worker_pids()) == 2
        assert pool.map_values(pool_tasks.square, range(20)) == [i * i for i in range(20)]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_task_past_its_timeout_is_killed_retried_then_failed_and_the_run_ends(
    tmp_path: Path, start_method: str
) -> None:
    """A task stuck forever (the user's 40-hour hang) costs (max_retries + 1) x task_timeout,
    not the run: the pool kills its worker, retries it, reports it, and finishes the rest."""
    with WorkerPool(2, start_method=start_method, max_retries=1, task_timeout=1.0) as pool:
        outcomes = pool.map(pool_tasks.hang_on_two, [(i, str(tmp_path)) for i in range(6)])
        stuck = outcomes[2]
        assert not stuck.ok and stuck.error_type == "TaskTimedOut"
        assert "task_timeout" in stuck.error and stuck.attempts == 2
        assert pool_tasks.count_lines(tmp_path / "run-2") == 2
        assert [o.value for o in outcomes if o.index != 2] == [i * i for i in range(6) if i != 2]
        assert [(c.task_index, c.timed_out, c.signal) for c in pool.crashes] == [(2, True, "SIGKILL")] * 2
        assert len(pool.worker_pids()) == 2  # replaced, at full strength
        assert pool.map_values(pool_tasks.square, range(10)) == [i * i for i in range(10)]


def test_task_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        WorkerPool(1, task_timeout=0)


def test_worker_killed_from_outside_loses_no_task(tmp_path: Path, wait_for) -> None:
    items = [(i, str(tmp_path)) for i in range(6)]
    with WorkerPool(2) as pool:
        initial = set(pool.worker_pids())
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["outcomes"] = pool.map(pool_tasks.block_until_released, items)
            except BaseException as exc:  # surfaced by the assertions below
                box["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # Item 0 is dispatched first; its task tells us which worker holds it and then blocks.
        running = tmp_path / "running-0"
        wait_for(running.exists, 15, "item 0 to start")
        victim = int(running.read_text())
        assert victim in initial
        os.kill(victim, signal.SIGKILL)
        # Release only once the pool has reaped the victim, so the kill surely hit mid-task.
        wait_for(lambda: len(pool.crashes) == 1, 15, "the pool to notice the crash")
        (tmp_path / "release").touch()
        thread.join(30)
        assert not thread.is_alive()
        assert "error" not in box, box.get("error")
        outcomes = box["outcomes"]
        assert [o.value for o in outcomes] == list(range(6))  # type: ignore[union-attr]
        assert outcomes[0].attempts == 2  # type: ignore[index]
        assert all(o.attempts == 1 for o in outcomes[1:])  # type: ignore[index]
        for i in range(6):
            assert pool_tasks.count_lines(tmp_path / f"done-{i}") == 1
        (crash,) = pool.crashes
        assert (crash.pid, crash.task_index, crash.signal) == (victim, 0, "SIGKILL")
        pids = pool.worker_pids()
        assert victim not in pids and len(pids) == 2


@pytest.mark.parametrize("start_method", START_METHODS)
def test_initializer_runs_once_per_worker_with_env(tmp_path: Path, start_method: str) -> None:
    var = "EMBEDSHARE_POOL_TEST_VAR"
    assert var not in os.environ
    init_dir, task_dir = tmp_path / "init", tmp_path / "tasks"
    init_dir.mkdir()
    task_dir.mkdir()
    victims = frozenset({1, 4})
    with WorkerPool(
        3,
        initializer=pool_tasks.init_record,
        initargs=(str(init_dir), var),
        start_method=start_method,
        env={var: "hello"},
    ) as pool:
        initial = set(pool.worker_pids())
        outcomes = pool.map(pool_tasks.die_first_time, [(i, str(task_dir), victims) for i in range(8)])
        assert all(o.ok for o in outcomes)
        final = set(pool.worker_pids())
        crashed = {c.pid for c in pool.crashes}
        assert len(crashed) == 2
        files = sorted(init_dir.glob("init-*"))
        started = {int(f.name.split("-")[1]) for f in files}
        # Replacement workers ran the initializer too; every worker exactly once, env applied.
        assert started == initial | final | crashed
        assert len(files) == 3 + 2
        for f in files:
            assert f.read_text() == "hello\n", f
    assert var not in os.environ


@pytest.mark.parametrize("start_method", START_METHODS)
def test_initializer_exception_raises_in_parent(start_method: str) -> None:
    with pytest.raises(WorkerInitError) as info:
        WorkerPool(2, initializer=pool_tasks.init_fail, start_method=start_method)
    text = str(info.value)
    assert "init_fail" in text
    assert "ValueError: boom in initializer" in text
    assert "Traceback" in text


def test_initializer_that_kills_the_worker_does_not_restart_forever() -> None:
    with pytest.raises(WorkerInitError, match="exited with code 7"):
        WorkerPool(2, initializer=pool_tasks.init_exit, max_retries=2)
