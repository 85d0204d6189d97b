"""Small file systems for the tests of a full or read-only disk: a tmpfs, and filling one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, options: str) -> None:
    """Mount a tmpfs with ``options`` (``size=4m``, ``ro,size=1m``...) at ``path``, made here.

    Mounting needs root (CAP_SYS_ADMIN): the test is skipped cleanly where it is not allowed.
    """
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")


def unmount(path: Path) -> None:
    """Unmount ``path``; lazily if something still holds it open."""
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> int:
    """Write ``directory/filler`` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(chunk)
        except OSError:
            pass
        # the last partial block
        try:
            while True:
                written += f.write(b"\0" * 512)
        except OSError:
            pass
    return written
