"""Small files of a store (state, records, tokens): written whole or not at all, owner-only.

Every small file the project writes goes through :func:`write_atomic`, so that a full disk, a
killed process or a concurrent reader never sees half a file, and no temporary file is left
behind to block a later write. Standard library only: workers import this.

Every folder of a store is its owner's alone (:func:`private_dir`): created 0700 whatever the
umask, and an existing one is checked with ``lstat`` before it is trusted. A folder that
another user owns, that group or others may write, or that is a symbolic link, is refused:
whoever can write a store's folder can swap the cache file or bind a fake service socket.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import UnsafeStoreError

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` in one step: a temp file beside it, fsync, rename.

    The temp file is created with ``mode`` (owner-only by default, whatever the umask) and is
    removed if anything fails. An ``OSError`` (a full disk) is re-raised naming ``path``: a
    bare "No space left on device" does not say which of the store's files could not be written.
    """
    import tempfile  # here: workers import this module for private_dir, and never write

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


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """An fd on ``path``, created 0600 whatever the umask; a symbolic link is refused (ELOOP)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        check_private(path, os.fstat(fd), "file")
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """``path`` as a folder of this user alone: created 0700, or an existing one checked.

    An existing folder of ours that others may only read (0755: made by an older version or
    under a loose umask) is closed to 0700. One that is not ours, is group- or
    other-writable, or is a symbolic link raises :class:`UnsafeStoreError` saying how to fix it.
    """
    folder = Path(path)
    if create:
        # Missing parents are made owner-only too (mkdir -p would make them by the umask, and
        # a store folder made under umask 0 would be 0777, and refused on its next use).
        for missing in [p for p in reversed([folder, *folder.parents]) if not os.path.lexists(p)]:
            try:
                os.mkdir(missing, PRIVATE_DIR_MODE)
            except FileExistsError:  # made meanwhile by another process
                pass
    st = os.lstat(folder)
    check_private(folder, st, "folder")
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(folder, PRIVATE_DIR_MODE)
    return folder


def private_file(path: str | os.PathLike[str]) -> None:
    """Check an existing file of a store (ours, not writable by others) and make it 0600."""
    st = os.lstat(path)
    check_private(path, st, "file")
    if stat.S_IMODE(st.st_mode) != PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)


def check_owned(path: str | os.PathLike[str], kind: str) -> None:
    """Raise :class:`UnsafeStoreError` unless ``path`` itself (a link is not followed) is a
    ``kind`` of ours that only we may write; changes nothing (a reader's check)."""
    check_private(path, os.lstat(path), kind)


def read_private_text(path: str | os.PathLike[str]) -> str:
    """The text of a small file of ours, read without following a link or blocking.

    A FIFO (or socket, or device) in a file's place would make a plain ``read`` hang for
    ever: it is opened non-blocking and refused unless ``fstat`` says it is a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symbolic link
            check_owned(path, "file")  # raises, saying why a link is refused
        raise
    with os.fdopen(fd, "rb") as f:
        check_private(path, os.fstat(fd), "file")
        return f.read().decode("utf-8")


def check_private(path: str | os.PathLike[str], st: os.stat_result, kind: str) -> None:
    """Raise :class:`UnsafeStoreError` unless ``st`` (from lstat) is a ``kind`` of ours that
    only we may write."""
    expected = stat.S_ISDIR if kind == "folder" else stat.S_ISREG
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStoreError(
            f"{path} is a symbolic link; embedshare refuses it, because whoever can change a link "
            f"inside a store can redirect it. Replace it with a real {kind} of your own."
        )
    if not expected(st.st_mode):
        raise UnsafeStoreError(f"{path} is not a {kind}; remove it and let embedshare create it")
    me = os.getuid()
    if st.st_uid != me:
        raise UnsafeStoreError(
            f"{path} belongs to uid {st.st_uid} ({_user(st.st_uid)}), not to you (uid {me}): that "
            "user could read or replace what embedshare keeps there. Use a store of your own "
            "(--store or EMBEDSHARE_STORE), or have it removed and let embedshare create it."
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        who = " and ".join(w for w, bit in (("its group", 0o020), ("other users", 0o002)) if mode & bit)
        fix = f"chmod {'700' if kind == 'folder' else '600'} {path}"
        raise UnsafeStoreError(
            f"{path} is writable by {who} (mode {mode:04o}): they could have replaced what is in "
            f"it. Check its contents, then `{fix}`, or remove it and let embedshare create it."
        )


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return "unknown user"
