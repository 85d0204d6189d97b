"""Processes the tests start: where their code is, their memory, starting and stopping them."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
TESTS = Path(__file__).resolve().parent.parent
SPAWNED = Path(__file__).resolve().parent / "spawned"  # scripts run as `python SPAWNED/name.py`


def with_tests_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with tests/ first on PYTHONPATH, so that an interpreter
    the test starts can import ``helpers.spawned`` modules by name."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    return env


def memory_of(pid: int) -> dict[str, int]:
    """RSS, anonymous RSS (the heap: what a leak grows) and PSS of a process, in bytes."""
    import psutil

    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kb(name: str) -> int:
        return int(fields[name].split()[0]) * 1024

    info = psutil.Process(pid).memory_full_info()
    return {"rss": kb("VmRSS"), "rss_anon": kb("RssAnon"), "rss_file": kb("RssFile"), "pss": info.pss}


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet is dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_with_ready_pipe(
    args: list[str], log_path: Path, timeout: float = 120.0, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start ``args + ['--ready-fd', N]`` like the launcher does; return it and its ready line."""
    read_fd, write_fd = os.pipe()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*args, "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                raise AssertionError(f"{args[:4]} did not say ready within {timeout} s")
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if readable:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
    return proc, data.decode().strip()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
