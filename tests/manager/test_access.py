"""get_embedding_manager(): the one call task code makes, in every kind of process."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import pytest
from helpers.processes import with_tests_on_path
from helpers.spawned import service_tasks

from embedshare import get_embedding_manager
from embedshare.access import NoServiceWarning, SharedEmbeddingManager
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService

QUERY = "read a csv file into rows"


@pytest.fixture
def service(make_service) -> EmbeddingService:
    """A service whose address is exported, as SharedPool and `embedshare serve` users do."""
    return make_service()


@pytest.fixture
def expected(tmp_path):
    local = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    return {"vector": local.get_embedding(QUERY).tobytes(), "top": local.search(QUERY, k=3)[0].name}


def _check_shared(report, expected, parent_pid):
    assert report["mode"] == "shared"
    assert report["pid"] != parent_pid
    assert report["vector"] == expected["vector"]
    assert report["top"] == expected["top"]
    assert report["same_instance"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_workers_get_the_shared_manager(service, expected, method):
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        reports = list(pool.map(service_tasks.manager_report, [QUERY] * 4))
    for report in reports:
        _check_shared(report, expected, os.getpid())


def test_multiprocessing_process_gets_the_shared_manager(service, expected):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=service_tasks.manager_report_to_queue, args=(QUERY, results))
    proc.start()
    report = results.get(timeout=60)
    proc.join(timeout=60)
    _check_shared(report, expected, os.getpid())


def test_separately_started_process_inherits_the_address(service, expected):
    code = (
        "import json; from helpers.spawned import service_tasks;"
        f"r = service_tasks.manager_report({QUERY!r}); r['vector'] = r['vector'].hex(); print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=with_tests_on_path(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    report["vector"] = bytes.fromhex(report["vector"])
    _check_shared(report, expected, os.getpid())
    assert "no embedshare service" not in out.stderr


def test_threads_share_one_instance(service, run_threads):
    seen = run_threads(16, lambda i: get_embedding_manager())
    assert len(seen) == 16 and len({id(m) for m in seen}) == 1
    assert isinstance(seen[0], SharedEmbeddingManager)


def test_the_store_socket_is_found_without_the_address_variable(service, monkeypatch, expected):
    monkeypatch.delenv("EMBEDSHARE_ADDRESS")
    manager = get_embedding_manager(store=service.layout.root)
    assert isinstance(manager, SharedEmbeddingManager)
    assert manager.get_embedding(QUERY).tobytes() == expected["vector"]


def test_without_a_service_it_falls_back_to_a_local_manager_with_one_warning(store, expected):
    with pytest.warns(NoServiceWarning, match="no embedshare service"):
        manager = get_embedding_manager(model="hash:64", store=store, registry="bundled")
    assert isinstance(manager, EmbeddingManager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must not warn again
        assert get_embedding_manager() is manager
    assert manager.get_embedding(QUERY).tobytes() == expected["vector"]
    assert manager.search(QUERY, k=3)[0].name == expected["top"]


def test_a_service_with_another_model_is_never_silently_used(service):
    with pytest.raises(ValueError, match="hash:64:v1"):
        get_embedding_manager(model="hash:32")


def test_a_forked_child_gets_a_fresh_connection_and_cache_handle(service, expected):
    parent_manager = get_embedding_manager()
    parent_manager.get_embedding("warm the parent")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running the parent's clean-ups
        try:
            child = get_embedding_manager()
            report = {
                "fresh": child is not parent_manager,
                "conn_pid": child.source.primary._conn.pid,
                "vector": child.get_embedding(QUERY).tobytes().hex(),
                "new_text": child.get_embedding("only the child asks this").shape[0],
            }
            os.write(write_fd, json.dumps(report).encode())
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "error" not in report, report
    assert report["fresh"] and report["conn_pid"] == pid
    assert bytes.fromhex(report["vector"]) == expected["vector"]
    assert report["new_text"] == 64
    # the parent's connection is untouched by the child's
    assert parent_manager.get_embedding("parent after the fork").shape == (64,)
