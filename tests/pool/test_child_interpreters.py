"""Every interpreter embedshare starts imports nothing from the folder it was started in (issue 21).

``python -m X`` puts the working folder first on ``sys.path``: from a shared folder (1777, under
/tmp) a ``numpy.py`` planted there by another user ran as whoever started embedshare. Here uid
65534 plants a module under each name the children import; each writes its name to a marker
file when imported. ``embedshare serve --detach``, the ONNX graph build and a bench child are
started from that folder, the last two with an empty entry in ``PYTHONPATH`` too (it means the
working folder, even under ``-P``): no marker may appear, and each child does its work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.users import NEEDS_ROOT, NOBODY, as_other_user

from embedshare.util.children import private_cwd, python_child, safe_python_path

PLANTED = (
    "embedshare",
    "numpy",
    "lmdb",
    "xxhash",
    "msgpack",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "psutil",
    "click",
    "json",
    "multiprocessing",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)


@pytest.fixture
def shared_folder(tmp_path: Path) -> Path:
    """A 1777 folder holding a module under each name in PLANTED, written by uid 65534."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    marker = folder / "IMPORTED"

    def plant(report):
        for name in PLANTED:
            Path(f"{name}.py").write_text(
                f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise ImportError('planted by uid {NOBODY}')\n"
            )
        report("planted")

    assert as_other_user(plant, folder) == ["planted"]
    assert {p.stat().st_uid for p in folder.glob("*.py")} == {NOBODY}
    return folder


def imported_from(folder: Path) -> list[str]:
    marker = folder / "IMPORTED"
    return marker.read_text().split() if marker.exists() else []


@pytest.fixture
def empty_entry_in_pythonpath(monkeypatch):
    """``PYTHONPATH=$PYTHONPATH:`` with it unset: an empty entry, the working folder."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", "") + os.pathsep)


@needs_root
def test_serve_detach_from_a_shared_folder_runs_nothing_planted_there(shared_folder, store):
    embedshare = str(Path(sys.executable).parent / "embedshare")
    started = subprocess.run(
        [embedshare, "serve", "--detach", "--store", str(store), "--model", "hash:8", "--registry", "bundled"],
        cwd=shared_folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert imported_from(shared_folder) == []
        assert started.returncode == 0, started.stderr
    finally:
        subprocess.run([embedshare, "stop", "--store", str(store)], capture_output=True, timeout=120)


@needs_root
@pytest.mark.model
def test_the_graph_build_from_a_shared_folder_runs_nothing_planted_there(
    shared_folder, tmp_path, monkeypatch, empty_entry_in_pythonpath
):
    from embedshare.embedders.graph_files import build_graph
    from embedshare.embedders.local import bundled_model_path

    out = tmp_path / "graph"
    out.mkdir(mode=0o700)
    monkeypatch.chdir(shared_folder)
    build_graph(bundled_model_path(), out / "model.onnx", int8=False)
    assert imported_from(shared_folder) == []
    assert (out / "model.onnx").stat().st_size > 1 << 20


@needs_root
def test_a_bench_child_from_a_shared_folder_runs_nothing_planted_there(
    shared_folder, tmp_path, monkeypatch, empty_entry_in_pythonpath
):
    from embedshare.bench.runner import _run_case

    work = tmp_path / "bench"
    work.mkdir(mode=0o700)
    monkeypatch.chdir(shared_folder)
    spec = {"model": "hash:8", "model_label": "hash", "design": "model-alone", "batch_sizes": [1], "seconds": 0.2}
    result = _run_case(spec, work, timeout=120)
    assert imported_from(shared_folder) == []
    assert "error" not in result, json.dumps(result)
    assert result["model"] == "hash:8"


POOL_JOB = """
import sys
from embedshare import SharedPool

def embed(text):
    import os
    from embedshare import get_embedding_manager
    return get_embedding_manager().get_embedding(text).shape[0], os.environ.get("PYTHONSAFEPATH")

if __name__ == "__main__":
    with SharedPool(workers=2, store=sys.argv[1], model="hash:8", progress=False, start_method=sys.argv[2]) as pool:
        print(pool.map(embed, ["one", "two", "three"]))
"""
# What multiprocessing's own children import before they apply the parent's sys.path: they
# start as ``python -c``, whose first sys.path entry is the working folder.
PLANTED_FOR_POOLS = ("selectors", "socket", "struct", "runpy", "signal", "embedshare")


@needs_root
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_pool_workers_started_from_a_shared_folder_run_nothing_planted_there(shared_folder, tmp_path, start_method):
    """A user's script (in a folder of its own) run from a shared working folder: the pool's
    forkserver and its workers, or its spawned workers (and the bare interpreter the pool's
    report measures), import nothing planted there."""
    marker = shared_folder / "IMPORTED"

    def plant(report):
        for name in PLANTED_FOR_POOLS:
            Path(f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
        report("planted")

    assert as_other_user(plant, shared_folder) == ["planted"]
    private = tmp_path / "job"
    private.mkdir(mode=0o700)
    (private / "job.py").write_text(POOL_JOB)
    run = subprocess.run(
        [sys.executable, str(private / "job.py"), str(tmp_path / "store"), start_method],
        cwd=shared_folder,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert imported_from(shared_folder) == []
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[(8, None), (8, None), (8, None)]"  # the tasks see the user's environment


# -- the helper itself ----------------------------------------------------------------------------


def test_python_child_runs_safe_path_in_a_private_folder(tmp_path):
    tmp_path.chmod(0o700)
    child = python_child("-c", "pass", cwd=tmp_path, env={"PYTHONPATH": f"{os.pathsep}rel{os.pathsep}/abs"})
    assert child["args"] == [sys.executable, "-P", "-c", "pass"]
    assert child["env"]["PYTHONPATH"] == f"{os.path.abspath('rel')}{os.pathsep}/abs"
    assert child["cwd"] == str(tmp_path.resolve())


def test_a_folder_others_may_write_is_not_a_child_s_working_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert private_cwd(shared) != str(shared)
    assert private_cwd(tmp_path / "missing") != str(tmp_path / "missing")
    assert safe_python_path(os.pathsep) == ""
