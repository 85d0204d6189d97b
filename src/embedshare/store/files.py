"""Small files of a store (state, records, tokens): written whole or not at all, owner-only.

Every small file the project writes goes through :func:`write_atomic`, so that a full disk, a
killed process or a concurrent reader never sees half a file, and no temporary file is left
behind to block a later write. Standard library only: workers import this.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` in one step: a temp file beside it, fsync, rename.

    The temp file is created with ``mode`` (owner-only by default, whatever the umask) and is
    removed if anything fails. An ``OSError`` (a full disk) is re-raised naming ``path``: a
    bare "No space left on device" does not say which of the store's files could not be written.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from None
        raise
