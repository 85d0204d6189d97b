"""``Counters``: named counts that many threads add to, read as one consistent snapshot."""

from __future__ import annotations

import threading


class Counters:
    """Counts named at creation; ``add`` is thread-safe, ``snapshot`` a copy taken under the lock."""

    def __init__(self, *names: str) -> None:
        self._counts = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, **amounts: int) -> None:
        """Add to counts named at creation (a misspelt name is a KeyError, not a new count)."""
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
