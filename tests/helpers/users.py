"""Acting as another local user (issue 11), for the tests of who may use a store or a service.

``as_other_user(fn)`` forks; the child changes into ``cwd`` (as root, so that only that
folder's mode decides what it can reach), drops to uid/gid 65534 (``nobody``) and runs
``fn(report)``; what it reports comes back on a pipe. Root only: the callers skip otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

NOBODY = 65534
NEEDS_ROOT = "acting as another user (uid 65534) needs root"


def as_other_user(
    fn: Callable[[Callable[[str], None]], None],
    cwd: Path,
    ready: Callable[[str], None] | None = None,
    uid: int = NOBODY,
) -> list[str]:
    """Run ``fn`` as ``uid`` in a forked child; returns every line it reported.

    ``ready(line)`` is called in the parent on the child's first line (the child keeps running),
    so a test can act while the child serves.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read_fd)
            os.chdir(cwd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

            def report(line: str) -> None:
                os.write(write_fd, (line + "\n").encode())

            fn(report)
        except BaseException as exc:
            os.write(write_fd, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    lines: list[str] = []
    with os.fdopen(read_fd, "rb") as f:
        for raw in f:
            lines.append(raw.decode().rstrip("\n"))
            if len(lines) == 1 and ready is not None:
                ready(lines[0])
    os.waitpid(pid, 0)
    return lines
