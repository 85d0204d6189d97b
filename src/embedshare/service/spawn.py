"""The one way a service process is started: a fresh interpreter that says on a pipe when it
answers. ``EmbeddingService`` (``launcher.py``) and each Ray node's service (``ray/node.py``)
both start theirs here.

Never forked: a fork of a process that loaded torch inherits its threads' locks in whatever
state they were. Starting waits for the service's own line on the pipe (``ready``, ``already``
or ``error``), a fact, not a timer.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Sequence

from ..env import ENV_ADDRESS
from ..errors import ServiceStartError
from ..store import StoreLayout
from ..store.files import open_private, write_atomic
from ..util.children import python_child
from .config import ServiceConfig


def read_log_tail(layout: StoreLayout, lines: int = 20) -> str:
    """The last ``lines`` of the store's service log ("" if there is none)."""
    try:
        return "\n".join(layout.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn_service(
    config: ServiceConfig,
    timeout: float,
    *,
    verbose: int = 0,
    entry: Sequence[str] = ("embedshare.service",),
    pass_fds: Sequence[int] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a service process for ``config`` and return it with the line it says once it answers.

    The line is ``ready PID``, ``already PID`` (another service holds the store) or ``error
    MESSAGE`` (``error exit code N`` if it exited without a word). ``entry``: the module to run
    and its own leading arguments (a Ray node's adds its lifeline); ``pass_fds``: what it needs
    of ours. Its output goes to the store's ``run/service.log``. Past ``timeout`` seconds without
    a line it is killed and :class:`ServiceStartError` says so.
    """
    layout = StoreLayout(config.store)
    args = ["-m", *entry, *config.argv()]
    preload_file = None
    if config.preload:
        preload_file = layout.run / f"preload-{os.getpid()}.txt"
        # whole or not at all: a full disk must not preload half the texts silently
        write_atomic(preload_file, "\n".join(t.replace("\n", " ") for t in config.preload))
        args += ["--preload-file", str(preload_file)]
    args += ["-v"] * verbose  # -v: info, -vv: debug, in run/service.log
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(ENV_ADDRESS, None)
    try:
        with os.fdopen(open_private(layout.log), "ab") as log_file:
            process = subprocess.Popen(
                **python_child(*args, "--ready-fd", str(write_fd), cwd=layout.run, env=env),
                pass_fds=(*pass_fds, write_fd),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # a Ctrl-C in the terminal goes to the pool, not here
            )
        os.close(write_fd)
        write_fd = -1
        return process, _read_ready_line(process, read_fd, timeout)
    finally:
        if write_fd != -1:
            os.close(write_fd)
        os.close(read_fd)
        if preload_file is not None:  # read by the service before it says it is ready
            preload_file.unlink(missing_ok=True)


def _read_ready_line(process: subprocess.Popen[bytes], fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            process.wait()
            raise ServiceStartError(f"the embedshare service did not answer within {timeout} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:  # the process exited without a word
                process.wait(timeout=30)
                return f"error exit code {process.returncode}"
            data += chunk
    return data.decode().strip()
