"""What each LMDB failure means, as one of the cache's errors (``errors.py``): one clear line naming the cache."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from ..errors import CacheDamagedError, CacheError
from . import cache_format


def damaged(path: Path, problem: str) -> CacheDamagedError:
    """The error for a damaged cache at ``path``: what is wrong and ``embedshare cache reset``."""
    return CacheDamagedError(cache_format.damaged_message(path, problem))


def read_error(path: Path, exc: lmdb.Error) -> CacheError:
    if isinstance(exc, cache_format.DAMAGE_ERRORS):
        return damaged(path, str(exc))
    return CacheError(f"cannot read embedding cache at {path}: {exc}")


def readers_full(path: Path, max_readers: int) -> CacheError:
    return CacheError(
        f"embedding cache at {path}: more concurrent readers than "
        f"max_readers={max_readers} (processes x threads); raise max_readers"
    )


def disk_full(path: Path, exc: Exception) -> bool:
    """Whether a failed LMDB write means the disk is full.

    LMDB reports ENOSPC, but a write that the full disk cut short comes back as EIO
    ("Input/output error"); that one counts as full when the file system has (almost) no room.
    """
    text = str(exc)
    if "No space left" in text or "ENOSPC" in text or "quota exceeded" in text.lower():
        return True
    if "Input/output error" not in text:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20
