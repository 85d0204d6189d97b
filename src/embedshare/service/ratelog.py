"""At most one log line per kind of message per interval, in the service's log.

A flood of connections or malformed requests would otherwise write a line (or a traceback)
for each: 2.5 MB/s of accept errors in ``service.log`` was measured. The filter lets through
the first warning or error of each (logger, level, message template) and then none of that
kind for ``interval`` seconds; the next one that passes says how many were held back. Debug
and info lines, which only ``-v``/``-vv`` turn on, pass untouched. Installed on
the handlers of the root logger, so it also covers asyncio's and uvicorn's own messages.
"""

from __future__ import annotations

import logging
import threading
import time

MAX_KINDS = 4096  # kinds remembered; messages formatted before logging each count as one


class RateLimitFilter(logging.Filter):
    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # kind -> [last passed, held back]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:  # -v and -vv lines (one a request) were asked for
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            held, since = (int(seen[1]), now - seen[0]) if seen is not None else (0, 0.0)
            if len(self._seen) >= MAX_KINDS:
                self._seen.clear()
            self._seen[kind] = [now, 0]
        if held:
            record.msg = f"{record.getMessage()} [and {held} more like it in the last {since:.0f} s]"
            record.args = None
        return True


def install(interval: float) -> RateLimitFilter | None:
    """Put a filter on every handler of the root logger; ``interval`` 0 turns it off."""
    if interval <= 0:
        return None
    limiter = RateLimitFilter(interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limiter)
    return limiter


def uninstall(limiter: RateLimitFilter | None) -> None:
    if limiter is not None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(limiter)
