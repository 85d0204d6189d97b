"""Progress of a long run: a tqdm bar on a terminal, a summary line now and then in a log.

tqdm redraws its bar with carriage returns, so on stderr sent to a file (a batch job's log) it
writes a line of junk every tenth of a second. tqdm has no mode for "one plain line every N
seconds", so that part is the few lines of :class:`LogProgress`.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

LOG_EVERY_S = 30.0  # in a log, one line this often (and one at the end)


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class LogProgress:
    """``tasks: 1200/2000 (60%), 14.2/s, 85 s`` every ``every`` seconds and once at the end."""

    def __init__(self, total: int, desc: str, unit: str, stream: IO[str], every: float = LOG_EVERY_S) -> None:
        self.total, self.desc, self.unit, self.stream, self.every = total, desc, unit, stream, every
        self.done = 0
        self._started = self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._last >= self.every:
            self._line()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        self._last = now = time.monotonic()
        elapsed = now - self._started
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        rate = f", {self.done / elapsed:.1f} {self.unit}s/s" if elapsed > 0 else ""
        end = ", done" if final and self.done >= self.total else ""
        self.stream.write(f"{self.desc}: {self.done}/{self.total}{share}{rate}, {elapsed:.0f} s{end}\n")
        self.stream.flush()


def task_progress(total: int, desc: str, unit: str = "task", stream: IO[str] | None = None) -> Progress:
    """A bar on a terminal, else a :class:`LogProgress` (both on stderr by default)."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LogProgress(total, desc, unit, stream)
