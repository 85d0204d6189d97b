"""Failover without loss (issue 10): the service SIGKILLed under a 25-worker pool, under 16
threads of one client, and while interpreters start; a deliberate ``embedshare stop``.

Kills are driven by facts (tasks or calls completed), never by timers. Random choices are
seeded (``EMBEDSHARE_FAULT_SEED`` overrides) and reported with the figures
(tests/helpers/figures.record).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.figures import record
from helpers.processes import PYTHON, SPAWNED, alive, with_tests_on_path
from helpers.services import kill_service
from helpers.spawned import failover_tasks
from helpers.waiting import wait_for

from embedshare.access import SharedEmbeddingManager
from embedshare.cli import main as cli
from embedshare.client.connection import ServiceConnection
from embedshare.client.state import read_state
from embedshare.embedders import create_embedder
from embedshare.errors import ServiceStopped, ServiceUnavailable
from embedshare.manager import EmbeddingManager
from embedshare.pool.shared import SharedPool
from embedshare.store import StoreLayout

SEED = int(os.environ.get("EMBEDSHARE_FAULT_SEED", "20261202"))
EMBEDDER = create_embedder("hash:64")


def _reference(tmp_path: Path, n: int) -> dict[int, dict]:
    local = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    try:
        return {i: failover_tasks.failover_expected(local, i) for i in range(n)}
    finally:
        local.close()


def service_lock_held(layout: StoreLayout) -> bool:
    """A service holds the store's lock (checked here, independently of the code under test)."""
    import fcntl

    try:
        fd = os.open(layout.lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _shutdown(store: Path) -> None:
    """Stop whatever service runs on ``store`` now (a restarted one included)."""
    try:
        conn = ServiceConnection(StoreLayout(store).socket, connect_timeout=2)
    except ServiceUnavailable:
        return
    try:
        conn.request("shutdown", timeout=30)
    finally:
        conn.close()
    wait_for(lambda: not service_lock_held(StoreLayout(store)), 30, "the service to exit")


# -- 25 workers, service and workers SIGKILLed ---------------------------------------------------


@pytest.mark.slow
def test_a_25_worker_pool_loses_no_task_through_service_and_worker_sigkills(store, tmp_path):
    tasks, service_kills, worker_kills = 3000, 4, 3
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(tasks // 20, tasks * 3 // 4), service_kills + worker_kills))
    kinds = ["service"] * service_kills + ["worker"] * worker_kills
    rng.shuffle(kinds)
    plan = list(zip(points, kinds, strict=True))
    reference = _reference(tmp_path, tasks)
    layout = StoreLayout(store)
    completed: Counter[int] = Counter()
    seen_workers: set[int] = set()
    killed: list[dict] = []

    def on_result(index, outcome) -> None:
        completed[index] += 1
        if outcome.ok:
            seen_workers.add(outcome.worker_pid)
        done = sum(completed.values())
        if len(killed) == len(plan) or done < plan[len(killed)][0]:
            return
        kind = plan[len(killed)][1]
        if kind == "service":
            pid = read_state(layout).get("pid")
            # only a service restarted since the last kill, and up: otherwise at the next result
            if not pid or pid in [k["pid"] for k in killed] or not alive(pid):
                return
        else:
            candidates = sorted(p for p in seen_workers if p not in [k["pid"] for k in killed] and alive(p))
            if not candidates:
                return
            pid = rng.choice(candidates)
        os.kill(pid, signal.SIGKILL)
        killed.append({"kind": kind, "pid": pid, "after_tasks": done})

    started = time.monotonic()
    with SharedPool(
        workers=25, store=store, model="hash:64", registry="bundled", progress=False, max_retries=5
    ) as pool:
        results = pool.map(failover_tasks.failover_task, range(tasks), on_result=on_result, raise_on_failure=False)
        final_pid = pool.service.stats()["pid"]
    wall = time.monotonic() - started

    failed = [o for o in pool.outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {tasks} tasks failed; first: {failed[0].error}"
    assert [k["kind"] for k in killed] == kinds, f"not every kill happened: {killed}"
    assert final_pid not in [k["pid"] for k in killed if k["kind"] == "service"]
    assert len(completed) == tasks and set(completed.values()) == {1}  # each reported once
    wrong = [r["index"] for r in results if {k: r[k] for k in ("index", "digest", "top")} != reference[r["index"]]]
    assert not wrong, f"results that differ from a local manager's: tasks {wrong[:10]}"
    assert {r["mode"] for r in results} == {"shared"}  # no worker built its own manager
    crashes = pool.report.crashes
    assert sorted(c.pid for c in crashes) == sorted(k["pid"] for k in killed if k["kind"] == "worker")
    stats = pool.report.worker_stats
    restarts = sum(s["restarts"] for s in stats)
    reconnects = sum(s["reconnects"] for s in stats)
    assert restarts >= 1
    # one reconnect per worker per service that came back, at most (attempts that failed while
    # it restarted are not reconnects)
    assert reconnects <= 25 * service_kills, reconnects
    record(
        "failover_25_workers",
        seed=SEED,
        tasks=tasks,
        workers=25,
        failed=len(failed),
        service_kills=service_kills,
        worker_kills=worker_kills,
        killed_after_tasks=[(k["kind"], k["after_tasks"]) for k in killed],
        tasks_rerun=sum(o.attempts > 1 for o in pool.outcomes),
        worker_restarts=restarts,
        worker_reconnects=reconnects,
        wall_seconds=round(wall, 1),
    )


# -- 16 threads on one client --------------------------------------------------------------------


def test_16_threads_on_one_client_lose_no_call_through_three_service_kills(store, make_service, run_threads):
    threads, per_thread, kills = 16, 200, 3
    kill_after = [threads * per_thread * (i + 1) // (kills + 2) for i in range(kills)]
    service = make_service(export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="restart")
    layout = StoreLayout(store)
    lock = threading.Condition()
    done = [0]
    errors: list[BaseException] = []
    wrong: list[str] = []
    killed: list[int] = []

    def work(t: int) -> None:
        for i in range(per_thread):
            text = f"thread {t} text {i}"
            try:
                vector = client.get_embedding(text)
            except BaseException as exc:
                errors.append(exc)
            else:
                if vector.tobytes() != EMBEDDER.embed([text])[0].tobytes():
                    wrong.append(text)
            with lock:
                done[0] += 1
                lock.notify_all()

    def killer() -> None:
        for point in kill_after:
            with lock:
                lock.wait_for(lambda point=point: done[0] >= point, timeout=120)
            pid = wait_for(
                lambda: (p := read_state(layout).get("pid")) not in killed and alive(p) and p, 60, "a restarted service"
            )
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    kill_thread = threading.Thread(target=killer)
    try:
        kill_thread.start()
        run_threads(threads, work, timeout=300)
        kill_thread.join(60)
        stats = client.stats()
    finally:
        client.close()
        _shutdown(store)
    assert len(killed) == kills
    assert not errors, f"{len(errors)} of {threads * per_thread} calls failed; first: {errors[0]!r}"
    assert not wrong
    # one reconnect per restart (a restart that is killed again before it answers costs one more)
    assert 1 <= stats["reconnects"] <= 2 * kills, stats["reconnects"]
    record(
        "failover_16_threads",
        threads=threads,
        calls=threads * per_thread,
        kills=kills,
        failed_calls=len(errors),
        reconnects=stats["reconnects"],
        restarts=stats["restarts"],
    )


# -- interpreters started while the service is down -----------------------------------------------


def test_interpreters_started_while_the_service_is_down_get_the_shared_service_and_its_registry(store, make_service):
    service = make_service(export_env=False)
    kill_service(service)
    env = {
        **with_tests_on_path(),
        "EMBEDSHARE_STORE": str(store),
        "EMBEDSHARE_ON_FAILURE": "restart",
        "EMBEDSHARE_MODEL": "hash:64",
    }
    env.pop("EMBEDSHARE_ADDRESS", None)
    procs = [
        subprocess.Popen(
            [PYTHON, str(SPAWNED / "failover_tasks.py"), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        new_pid = read_state(StoreLayout(store)).get("pid")
        _shutdown(store)
    assert [p.returncode for p in procs] == [0] * 4, [err[-600:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    reference = _reference(store.parent, 4)
    assert [{k: r[k] for k in ("index", "digest", "top")} for r in results] == [reference[i] for i in range(4)]
    assert {r["mode"] for r in results} == {"shared"}
    assert not any(r["local_model_loaded"] for r in results)
    assert {r["tools"] for r in results} == {82}
    assert new_pid and new_pid != service.pid  # one of them started it again


def test_a_restart_policy_process_with_no_service_ever_run_is_an_error_not_a_local_model(store, monkeypatch):
    from embedshare import get_embedding_manager

    monkeypatch.setenv("EMBEDSHARE_ON_FAILURE", "restart")
    with pytest.raises(ServiceUnavailable, match="embedshare serve --store"):
        get_embedding_manager(model="hash:64", store=store)


def test_a_restart_policy_process_started_after_embedshare_stop_is_told_it_was_stopped(
    store, make_service, monkeypatch
):
    """The same ``ServiceStopped`` as a process whose service is stopped under it: a caller
    that tells a deliberate stop from a crash must not see a plain ServiceUnavailable here."""
    from embedshare import get_embedding_manager

    make_service(export_env=False)
    assert CliRunner().invoke(cli, ["stop", "--store", str(store)]).exit_code == 0
    monkeypatch.setenv("EMBEDSHARE_ON_FAILURE", "restart")
    with pytest.raises(ServiceStopped, match="stopped by `embedshare stop`"):
        get_embedding_manager(model="hash:64", store=store)
    assert not service_lock_held(StoreLayout(store))  # and it was not started again


# -- embedshare stop during a pool run -------------------------------------------------------------


def test_embedshare_stop_during_a_pool_run_stops_it_and_workers_say_so(store):
    tasks, stop_after = 300, 60
    layout = StoreLayout(store)
    stopped: list = []

    count = [0]

    def on_result(index, outcome) -> None:
        count[0] += 1
        if not stopped and count[0] >= stop_after:
            stopped.append(CliRunner().invoke(cli, ["stop", "--store", str(store)]))

    with SharedPool(workers=4, store=store, model="hash:64", registry="bundled", progress=False) as pool:
        first_pid = pool.service.pid
        pool.map(failover_tasks.failover_task, range(tasks), on_result=on_result, raise_on_failure=False)
        lock_after_run = service_lock_held(layout)
    result = stopped[0]
    assert result.exit_code == 0, result.output
    assert "4 client process(es) were attached" in result.stdout
    failed = [o for o in pool.outcomes if not o.ok]
    assert failed, "no task failed after the stop: the service was restarted"
    assert all("stopped by `embedshare stop`" in str(o.error) for o in failed), failed[0].error
    assert not lock_after_run and not alive(first_pid)  # nobody started it again
    # a later start clears the mark
    with SharedPool(workers=2, store=store, model="hash:64", registry="bundled", progress=False) as pool:
        assert len(pool.map(failover_tasks.failover_task, range(10))) == 10
    assert "stopped" not in read_state(layout)


# -- a service that dies on one request ----------------------------------------------------------


class _DiesOnEveryEmbed:
    """A socket that answers ``hello`` as the real service does and drops the connection on
    every ``embed``, as a service that crashes on one batch and is restarted would."""

    def __init__(self, path: Path, hello: dict) -> None:
        import socket

        self.hello, self.embeds = hello, 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        from helpers.frames import recv_exactly

        from embedshare.client import protocol

        with conn:
            while True:
                try:
                    request = protocol.unpack(recv_exactly(conn, protocol.frame_length(recv_exactly(conn, 4))))
                except (EOFError, OSError):
                    return
                if request["op"] != "hello":
                    self.embeds += 1
                    return  # the connection drops with the request unanswered
                conn.sendall(protocol.pack({**self.hello, "id": request["id"], "ok": True}))

    def close(self) -> None:
        self._server.close()


def test_a_request_that_kills_its_connection_every_time_is_sent_a_bounded_number_of_times(hash_service, tmp_path):
    """Every attempt of a call counts against one bound: the connection layer's reconnect and
    the failure policy's retry must not multiply (they once sent such a request 36 times)."""
    from embedshare.sources.failover import MAX_FAILURES

    conn = ServiceConnection(hash_service.address)
    try:
        hello = dict(conn.hello(timeout=30))
    finally:
        conn.close()
    fake = _DiesOnEveryEmbed(tmp_path / "dies.sock", hello)
    try:
        manager = SharedEmbeddingManager(tmp_path / "dies.sock", on_failure="error")
        with pytest.raises(ServiceUnavailable):
            manager.get_embedding("a text that kills the service")
        manager.close()
    finally:
        fake.close()
    assert fake.embeds == MAX_FAILURES + 1
