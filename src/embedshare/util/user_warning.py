"""Warnings that point at the user's line, whichever path through embedshare led to them.

A fixed ``stacklevel`` is right for one caller only: ``get_embedding_manager()``'s warning
pointed at ``compat/manager.py`` when the compat layer called it, and at
``integrations/langchain.py`` when LangChain's adapter did. Python 3.12's
``warnings.warn(skip_file_prefixes=...)`` does what :func:`warn_user` does, but embedshare
supports 3.11.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType

_PACKAGE = str(Path(__file__).resolve().parent.parent) + "/"  # .../embedshare/


def _import_machinery(frame: FrameType) -> bool:
    """Frames ``warnings`` skips itself when it counts a stacklevel (its ``_is_internal_frame``)."""
    filename = frame.f_code.co_filename
    return "importlib" in filename and "_bootstrap" in filename


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside embedshare."""
    frame: FrameType | None = sys._getframe(1)  # our caller, in embedshare
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        while frame is not None and _import_machinery(frame):
            frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
