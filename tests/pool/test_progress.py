"""Progress output: a bar on a terminal only; in a log file, plain summary lines.

The pool case runs as users run it: a Popen'd interpreter whose stderr is a file."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import TESTS

from embedshare.util.progress import LogProgress, task_progress

pytestmark = pytest.mark.timeout(180)


def test_a_log_gets_a_line_now_and_then_and_one_at_the_end():
    stream = io.StringIO()
    progress = LogProgress(10, "tasks", "task", stream, every=0.0)  # every update is "a while"
    for _ in range(10):
        progress.update()
    progress.close()
    progress.close()  # once only
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in stream.getvalue()
    assert lines[0].startswith("tasks: 1/10 (10%), ")
    assert lines[-1].startswith("tasks: 10/10 (100%), ") and lines[-1].endswith(", done")
    quiet = io.StringIO()
    slow = LogProgress(10, "tasks", "task", quiet, every=3600.0)
    for _ in range(10):
        slow.update()
    slow.close()
    assert len(quiet.getvalue().splitlines()) == 1  # the summary at the end only


def test_a_terminal_gets_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = task_progress(4, "tasks", stream=terminal)
    bar.update(4)
    bar.close()
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert isinstance(task_progress(4, "tasks", stream=io.StringIO()), LogProgress)


def test_shared_pool_writes_no_bar_to_a_log_file(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from embedshare import SharedPool
        from helpers.spawned.pool_tasks import square
        if __name__ == "__main__":
            with SharedPool(workers=2, store={str(tmp_path / "store")!r}, model="hash:64") as pool:
                assert pool.map(square, range(20)) == [x * x for x in range(20)]
    """)
    log = tmp_path / "job.log"
    with open(log, "w") as stderr:
        subprocess.run([sys.executable, "-c", script], stderr=stderr, check=True, timeout=150)
    text = log.read_text()
    assert "\r" not in text and "█" not in text
    assert "tasks: 20/20 (100%)" in text and ", done" in text
