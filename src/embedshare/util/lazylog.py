"""A logger that imports :mod:`logging` the first time something is logged.

Why: ``logging`` (with the ``traceback``, ``string`` and ``weakref`` it pulls in) costs ~1 MB of
memory in every process that imports it, and a pool worker attached to a service normally
logs nothing. The modules a worker imports (manager, client, cache, access) log through this.
"""

from __future__ import annotations

from typing import Any


class LazyLogger:
    """``logging.getLogger(name)``, made on first use; every attribute goes to it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:  # only for what this object lacks
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self._name)
        return getattr(self._logger, attribute)
