"""Pool workers forked from the pool's own preloaded forkserver (issue 20, item 6).

The forkserver imports numpy, embedshare's client and the user's ``preload_modules`` once; it
holds no thread and no open store; its workers get the pool's environment; spawn still works;
and a program that makes forkserver its own default (Python 3.14 on Linux) still has workers
that attach to the service.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import warnings
from multiprocessing import spawn
from pathlib import Path

import psutil
import pytest
from helpers.extras import requires
from helpers.processes import PYTHON, SPAWNED, alive, with_tests_on_path
from helpers.spawned import pool_jobs

from embedshare.errors import SettingError
from embedshare.manager import EmbeddingManager
from embedshare.pool.outcomes import PoolError
from embedshare.pool.shared import SharedPool
from embedshare.service.launcher import service_state

pytestmark = pytest.mark.timeout(180)

QUERIES = [f"query {i % 7} about reading files" for i in range(24)]
PROBE = "helpers.spawned.forkserver_probe"


def _forkservers() -> list[psutil.Process]:
    """This process's children that are a multiprocessing forkserver (found by their cmdline)."""
    found = []
    for child in psutil.Process().children():
        try:
            if "from multiprocessing.forkserver import main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _open_files(pid: int) -> list[str]:
    """What the process maps and what its fds point to."""
    maps = [line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line]
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            continue
    return maps + fds


def test_workers_fork_from_a_forkserver_that_imported_once_and_holds_no_thread_nor_store(store, tmp_path, monkeypatch):
    probe = tmp_path / "probe.jsonl"
    monkeypatch.setenv("EMBEDSHARE_TEST_PROBE", str(probe))
    reference = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    with SharedPool(workers=3, store=store, model="hash:64", progress=False, preload_modules=[PROBE]) as pool:
        (server,) = _forkservers()
        assert server.pid == pool.worker_pool.forkserver_pid
        workers = pool.worker_pool.worker_pids()
        assert {psutil.Process(pid).ppid() for pid in workers} == {server.pid}
        results = pool.map(pool_jobs.search_task, QUERIES)
        # after the workers attached and ran: still no thread, no LMDB file in the forkserver
        assert len(os.listdir(f"/proc/{server.pid}/task")) == 1
        opened = _open_files(server.pid)
        assert not [f for f in opened if "data.mdb" in f or "lock.mdb" in f or str(store) in f], opened
        assert {m.role for m in pool.report.memory} == {"service", "forkserver", "worker", "parent"}
    assert [r["query"] for r in results] == QUERIES
    for r in results:
        assert r["mode"] == "shared"
        assert r["vector"] == reference.get_embedding(r["query"]).tobytes()
    # the user's module: imported once, by the forkserver, not again by each worker
    (imported,) = [json.loads(line) for line in probe.read_text().splitlines()]
    assert imported["pid"] == server.pid
    assert not alive(server.pid)  # stopped with the pool


def test_spawn_still_works_and_has_no_forkserver(store, tmp_path):
    reference = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    with SharedPool(workers=2, store=store, model="hash:64", progress=False, start_method="spawn") as pool:
        assert pool.worker_pool.forkserver_pid is None
        assert {psutil.Process(pid).ppid() for pid in pool.worker_pool.worker_pids()} == {os.getpid()}
        results = pool.map(pool_jobs.search_task, QUERIES[:6])
    assert [r["mode"] for r in results] == ["shared"] * 6
    assert [r["vector"] for r in results] == [reference.get_embedding(q).tobytes() for q in QUERIES[:6]]
    assert "forkserver" not in {m.role for m in pool.report.memory}


def test_a_worker_forked_after_a_crash_gets_the_pool_s_environment(store, tmp_path, monkeypatch):
    """The forkserver keeps the environment it started with; the pool hands its own variables
    to every worker, a replacement too, so a change the program makes later cannot hide them."""
    queries = [*QUERIES[:4], "crash one", *QUERIES[4:8]]
    with SharedPool(workers=2, store=store, model="hash:64", progress=False) as pool:
        monkeypatch.setenv("EMBEDSHARE_ADDRESS", str(tmp_path / "not-the-service.sock"))
        results = pool.map(pool_jobs.crash_once_then_search, [(q, str(tmp_path)) for q in queries])
    assert len(pool.report.crashes) == 1
    assert [r["query"] for r in results] == queries
    assert {r["mode"] for r in results} == {"shared"}


def test_preload_modules_are_checked_before_the_service_starts(store):
    with pytest.raises(ValueError, match="preload_modules: no module named 'no_such_module_here'"):
        SharedPool(workers=1, store=store, model="hash:64", preload_modules=["no_such_module_here"])
    with pytest.raises(ValueError, match="not a module name"):
        SharedPool(workers=1, store=store, model="hash:64", preload_modules=["a b"])
    with pytest.raises(TypeError, match="list of module names"):
        SharedPool(workers=1, store=store, model="hash:64", preload_modules="numpy")
    with pytest.raises(ValueError, match="start_method must be one of"):
        SharedPool(workers=1, store=store, model="hash:64", start_method="thread")
    assert not (store / "run").exists()  # no service was started


def test_module_names_given_as_preload_texts_are_warned_about(store):
    """``preload`` is texts to embed at the service's start; the issue's wording and a module's
    name invite ``preload=["numpy", "my_tasks"]``, which would embed two words in silence."""
    with pytest.warns(UserWarning, match=r"pass preload_modules=\[\.\.\.\]"):
        SharedPool(workers=1, store=store, model="hash:64", preload=["numpy", "helpers.spawned.pool_jobs"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # texts, even one naming a module among them: no warning
        SharedPool(workers=1, store=store, model="hash:64", preload=["numpy", "read a csv file"])
        SharedPool(workers=1, store=store, model="hash:64", preload=["file_operations_reader"])
    with pytest.raises(SettingError, match="preload must be a list of texts"):  # the setting's own error
        SharedPool(workers=1, store=store, model="hash:64", preload=(text for text in ["numpy", "json"]))
    assert not (store / "run").exists()  # no service was started


def test_a_preload_module_that_fails_on_import_is_named_as_the_cause(store):
    broken = ["helpers.spawned.forkserver_broken"]
    pool = SharedPool(workers=2, store=store, model="hash:64", progress=False, preload_modules=broken)
    with pytest.raises(PoolError, match="forkserver exited before it forked a worker"):
        pool.__enter__()
    assert _forkservers() == []


@requires("bench", "threadpoolctl")  # what the workers' BLAS really uses
def test_a_worker_runs_the_blas_threads_its_environment_asks_for(store, monkeypatch):
    """numpy is loaded in the forkserver with one thread; a worker that asks for two has two."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with SharedPool(workers=2, store=store, model="hash:64", progress=False) as pool:
        (server,) = _forkservers()
        seen = pool.map(pool_jobs.blas_threads, range(2))
        assert len(os.listdir(f"/proc/{server.pid}/task")) == 1
    assert [worker["blas"] for worker in seen] == [[2], [2]]


def test_nothing_from_the_working_folder_is_added_to_sys_path(store, tmp_path, monkeypatch):
    """The forkserver and its workers get the parent's sys.path, without the working folder."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "shadowing_module.py").write_text("raise RuntimeError('imported from the working folder')\n")
    probe = tmp_path / "probe.jsonl"
    monkeypatch.setenv("EMBEDSHARE_TEST_PROBE", str(probe))
    monkeypatch.chdir(workdir)
    with SharedPool(workers=1, store=store, model="hash:64", progress=False, preload_modules=[PROBE]) as pool:
        (seen,) = pool.map(pool_jobs.sys_path_report, [None])
    (imported,) = [json.loads(line) for line in probe.read_text().splitlines()]
    parents = spawn.get_preparation_data("probe")["sys_path"]  # what multiprocessing hands a child
    for path in (seen["sys_path"], imported["sys_path"]):
        assert path == parents
        assert str(workdir) not in path and "" not in path
    assert seen["cwd"] == imported["cwd"] == str(workdir)  # the task runs where the program runs


def test_a_program_whose_default_start_method_is_forkserver(store):
    """Python 3.14's default on Linux, set here by the program: its own ProcessPoolExecutor, a
    WorkerPool and a SharedPool all have workers that attach to the service (none loads a model)."""
    try:
        out = subprocess.run(
            [PYTHON, str(SPAWNED / "forkserver_default.py"), str(store)],
            env=with_tests_on_path(),
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:  # a program killed at the timeout leaves its service behind
        pid = service_state(store).get("pid")
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    reference = EmbeddingManager(store.parent / "reference", model="hash:64", registry="bundled")
    for kind in ("executor", "worker_pool", "shared_pool"):
        answers = report[kind]
        assert {a["mode"] for a in answers} == {"shared"}, (kind, answers)
        for a in answers:
            assert bytes.fromhex(a["vector"]) == reference.get_embedding(a["query"]).tobytes()
    assert "no embedshare service" not in out.stderr
