"""Name the missing ``if __name__ == "__main__":`` guard in one line, before any worker starts.

Spawned and forkserver workers import the parent's main script (as ``__mp_main__``) before
they run a task. A pool started at the script's top level is started again by every worker:
multiprocessing refuses each nested start, each worker dies with a traceback, and the pool gave
up after three deaths in a row: 228 lines ending in ``WorkerInitError``, the guard never named.

Checked in the parent first: the main script's statement being run when the pool starts must
be under an ``if __name__ == "__main__":``. If the parent cannot tell (no source to read), a
worker that finds itself importing the parent's script says it and exits, in one line too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ..errors import MainGuardError

_FrameTest = Callable[[FrameType], bool]


def _guard_advice(script: str, line: int | None) -> str:
    where = f"{script}:{line}" if line else script
    return (
        f'{where} starts a SharedPool outside `if __name__ == "__main__":`; each worker imports {script} '
        "and would start one too: put the code that starts the pool under that guard"
    )


def refuse_unguarded_main(start_method: str | None) -> None:
    """Raise :class:`MainGuardError` (or, in a worker, exit with one line) if workers started by
    ``start_method`` would start this pool again. Fork re-imports nothing: never refused."""
    import multiprocessing

    method = start_method or multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_start_method()
    if method == "fork":
        return
    reimport = _module_frame(lambda frame: frame.f_globals.get("__name__") == "__mp_main__")
    if reimport is not None:  # in a worker, while it imports the parent's script
        raise SystemExit("embedshare: " + _guard_advice(reimport.f_code.co_filename, reimport.f_lineno))
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.endswith(".__main__"):
        return  # a package's __main__ (python -m embedshare.cli): multiprocessing never re-imports it
    script = getattr(main, "__file__", None)
    running = _module_frame(lambda frame: main is not None and frame.f_globals is vars(main))
    if script and running is not None and not _guarded(Path(script), running.f_lineno):
        raise MainGuardError(_guard_advice(script, running.f_lineno))


def _module_frame(test: _FrameTest) -> FrameType | None:
    """The outermost module-level frame on the stack that passes ``test``."""
    found = None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and test(frame):
            found = frame
        frame = frame.f_back
    return found


def _guarded(script: Path, line: int) -> bool:
    """Whether ``line`` of ``script`` lies in a top-level ``if`` that tests ``__name__``.

    A script that cannot be read or parsed is taken as guarded: the worker's check remains.
    """
    try:
        tree = ast.parse(script.read_text(), str(script))
    except (OSError, SyntaxError, ValueError):
        return True
    for statement in tree.body:
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            return isinstance(statement, ast.If) and any(
                isinstance(node, ast.Name) and node.id == "__name__" for node in ast.walk(statement.test)
            )
    return True
