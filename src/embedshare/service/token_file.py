"""The token files of the TCP listener and the HTTP endpoint: read and checked, never shown."""

from __future__ import annotations

import os

MIN_TOKEN_CHARS = 16


def read_token_file(path: str | os.PathLike[str]) -> bytes:
    """The token in ``path``, checked: private to its owner (no group or other bits), long enough.

    The token itself never appears in an error message, a log line or ``stats``.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise ValueError(
            f"the token file {path} is readable by other users (mode {st.st_mode & 0o777:04o}); chmod 600 it"
        )
    token = data.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token in {path} is too short: use at least {MIN_TOKEN_CHARS} characters")
    return token
