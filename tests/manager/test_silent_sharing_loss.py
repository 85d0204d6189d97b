"""Ways sharing was lost without a word, each now said once, in one line:

- a mistyped ``--store`` (CLI) or ``store=`` (Python): a new, empty store is created and used;
- ``SharedPool`` without ``if __name__ == "__main__":`` (spawn and forkserver workers import the
  script and would start the pool again): refused before any worker or service starts;
- a module-level ``get_embedding_manager()`` with no service, in every worker of a pool: each
  loads a model of its own, and that is said once for the whole run, not once a worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from embedshare.access import NoServiceWarning, get_embedding_manager

pytestmark = pytest.mark.timeout(180)


def run(args: list[str], cwd=None, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSHARE_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def cli(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "embedshare.cli", *args])


# -- a store that does not exist -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["embed", "a text"], ["search", "read a csv file", "--registry", "bundled"]])
def test_the_cli_says_in_one_line_that_it_created_a_store(tmp_path, command):
    typo = tmp_path / "stroe"
    first = cli(*command, "--store", str(typo), "--model", "hash:64")
    assert first.returncode == 0, first.stderr
    assert first.stderr.strip().splitlines() == [
        f"note: no store at {typo}: created a new, empty one, and this command computes in-process, sharing "
        "nothing (check --store or $EMBEDSHARE_STORE if you meant an existing store)"
    ]
    again = cli(*command, "--store", str(typo), "--model", "hash:64")
    assert again.returncode == 0 and again.stderr == ""  # it exists now: nothing to say


def test_a_command_that_fails_on_a_store_it_created_says_both_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tool_a": {"name": "tool_a"}}')
    done = cli("search", "x", "--registry", str(bad), "--store", str(tmp_path / "stroe"), "--model", "hash:64")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'description' is missing" in line
    assert line.endswith(
        f"(note: no store at {tmp_path / 'stroe'}: created a new, empty one, and this command "
        "computes in-process, sharing nothing (check --store or $EMBEDSHARE_STORE if you meant an "
        "existing store))"
    )


def test_the_python_api_warns_that_it_created_a_store(tmp_path):
    with pytest.warns(NoServiceWarning, match=f"The store folder {tmp_path / 'stroe'} did not exist"):
        get_embedding_manager(model="hash:64", store=tmp_path / "stroe")


# -- SharedPool without the main guard ------------------------------------------------------------

POOL_SCRIPT = """
import sys
from embedshare import SharedPool

def task(x):
    return x * 2

{start}
"""
UNGUARDED = """
with SharedPool(workers=2, store=sys.argv[1], model="hash:64", registry=None, progress=False,
                start_method=sys.argv[2]) as pool:
    print(pool.map(task, [1, 2, 3]))
"""
GUARDED = 'if __name__ == "__main__":\n' + textwrap.indent(UNGUARDED, "    ")


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_pool_without_the_main_guard_is_named_in_one_line(tmp_path, start_method):
    script = tmp_path / "job.py"
    script.write_text(POOL_SCRIPT.format(start=UNGUARDED))
    done = run([sys.executable, str(script), str(tmp_path / "store"), start_method])
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "embedshare.errors.MainGuardError: "
        f'{script}:9 starts a SharedPool outside `if __name__ == "__main__":`; '
        f"each worker imports {script} and would start one too: put the code that starts the pool under that guard"
    ), done.stderr
    assert len(done.stderr.splitlines()) < 15, done.stderr  # one traceback, not one a worker
    assert not (tmp_path / "store" / "run" / "service.json").exists()  # refused before the service


@pytest.mark.slow
def test_the_same_pool_under_the_guard_runs(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(POOL_SCRIPT.format(start=GUARDED))
    done = run([sys.executable, str(script), str(tmp_path / "store"), "spawn"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 4, 6]"


@pytest.mark.slow
def test_a_package_s_main_needs_no_guard(tmp_path):
    """multiprocessing never re-imports a package's __main__ (`python -m embedshare.cli demo`)."""
    (tmp_path / "job").mkdir()
    unguarded = UNGUARDED.replace("task, [1, 2, 3]", "abs, [-1, -2, -3]")  # __main__'s own functions do not pickle
    (tmp_path / "job" / "__main__.py").write_text(POOL_SCRIPT.format(start=unguarded))
    done = run([sys.executable, "-m", "job", str(tmp_path / "store"), "spawn"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 3]"


def test_a_worker_importing_an_unguarded_script_exits_with_one_line(tmp_path):
    """The worker's side (when the parent could not read its script): what spawn and forkserver
    run in each worker, the script imported as __mp_main__."""
    script = tmp_path / "job.py"
    script.write_text(POOL_SCRIPT.format(start=UNGUARDED))
    done = run(
        [
            sys.executable,
            "-c",
            "import runpy, sys; script = sys.argv[2]; sys.argv[1:] = [sys.argv[1], 'spawn']; "
            "runpy.run_path(script, run_name='__mp_main__')",
            str(tmp_path / "store"),
            str(script),
        ]
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f'embedshare: {script}:9 starts a SharedPool outside `if __name__ == "__main__":`; each worker imports '
        f"{script} and would start one too: put the code that starts the pool under that guard"
    ]


# -- one model per worker, said once a run -----------------------------------------------------------

TASKS_MODULE = """
import os, sys
from embedshare import get_embedding_manager

manager = get_embedding_manager(model="hash:64", store=os.environ["JOB_STORE"])  # module level

def task(x):
    return os.getpid(), manager.mode
"""
MAIN_CALLS_IT = """
import multiprocessing, os, sys
sys.path.insert(0, os.path.dirname(__file__))
import tasks  # the parent runs the module-level call too

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        seen = pool.map(tasks.task, range(40), chunksize=1)
    print(len({pid for pid, _ in seen}), {mode for _, mode in seen})
"""
ONLY_WORKERS_CALL_IT = """
import multiprocessing, os, sys
sys.path.insert(0, os.path.dirname(__file__))

def start():
    import tasks  # only the workers import it

def task(x):
    import tasks
    return tasks.task(x)

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(4, initializer=start) as pool:
        seen = pool.map(task, range(40), chunksize=1)
    print(len({pid for pid, _ in seen}), {mode for _, mode in seen})
"""


@pytest.mark.slow
@pytest.mark.parametrize("main", [MAIN_CALLS_IT, ONLY_WORKERS_CALL_IT], ids=["parent-too", "workers-only"])
def test_a_module_level_manager_in_every_worker_is_said_once_a_run(tmp_path, main):
    (tmp_path / "tasks.py").write_text(TASKS_MODULE)
    (tmp_path / "job.py").write_text(main)
    env_store = str(tmp_path / "store")
    os.environ["JOB_STORE"] = env_store
    try:
        done = run([sys.executable, str(tmp_path / "job.py")])
    finally:
        del os.environ["JOB_STORE"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "{'local'}"
    said = [line for line in done.stderr.splitlines() if "NoServiceWarning" in line]
    assert len(said) == 1, done.stderr
    assert "SharedPool" in said[0] and "embedshare serve --store" in said[0]


def test_reset_lets_this_process_say_it_again(tmp_path):
    from embedshare.access import reset_embedding_manager

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_embedding_manager(model="hash:64", store=tmp_path)
        reset_embedding_manager()
        get_embedding_manager(model="hash:64", store=tmp_path)
    assert sum(issubclass(w.category, NoServiceWarning) for w in caught) == 2
