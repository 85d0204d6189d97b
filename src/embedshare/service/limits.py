"""Limits at the service's edge: connections per listener, their deadlines, and buffered bytes.

Each listener (the Unix socket, the TCP listener, the HTTP port) has its own
:class:`Listener`, so a flood on one cannot take the connections of another: the owner's
socket keeps answering while the HTTP port is flooded. Within a listener:

- at most ``cap`` connections are open. A new one past the cap closes the oldest connection
  that has not yet sent a complete first frame (or request): idle floods only ever evict each
  other, while a client that sends its hello at once (every embedshare client does) stays.
  When every connection is in use, the newcomer is closed at once;
- a connection must send its first frame within ``first_frame_timeout``, finish a frame it
  began within ``frame_timeout``, and, unless ``idle_timeout`` is 0, is closed after that long
  with nothing received and nothing in flight (a client reconnects by itself on its next call).

One sweeper task checks the deadlines every ``tick``, so a frame costs two attribute writes,
not a timer. :class:`ByteBudget` caps the request bytes being read or answered across every
connection of its listeners: a frame's bytes are taken before its body is read, and given
back once it is answered, so a reader waits (backpressure) instead of the service growing.

Written here rather than taken from a library: asyncio's servers have no connection cap, and
uvicorn's ``limit_concurrency`` answers 503 but still keeps every idle connection open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client.protocol import BudgetStats, ListenerStats

log = logging.getLogger("embedshare.service.limits")

FD_RESERVE = 256  # descriptors kept for the model, LMDB, logs, threads and the accept itself


class Slot:
    """One admitted connection's place in its listener, and its current deadline."""

    __slots__ = ("close", "deadline", "fresh", "listener", "pending", "reading")

    def __init__(self, listener: Listener, close: Callable[[], None]) -> None:
        self.listener = listener
        self.close = close
        self.deadline = time.monotonic() + listener.first_frame_timeout
        self.fresh = True  # no complete first frame yet: may be evicted
        self.reading = False  # inside a frame: its deadline holds even with requests in flight
        self.pending = 0  # requests being answered

    def frame_started(self) -> None:
        if not self.fresh:  # the first frame keeps its first-frame deadline
            self.deadline = time.monotonic() + self.listener.frame_timeout
        self.reading = True

    def frame_done(self) -> None:
        self.reading = False
        if self.fresh:
            self.fresh = False
            self.listener.fresh.pop(self, None)
        self._idle_from_now()

    def request_started(self) -> None:
        self.pending += 1

    def request_done(self) -> None:
        self.pending -= 1
        if not self.pending:
            self._idle_from_now()

    def waiting_for_next(self, timeout: float) -> None:
        """HTTP keep-alive: the next request's headers must come within ``timeout``."""
        self.pending = 0
        self.reading = True
        self.deadline = time.monotonic() + timeout

    def _idle_from_now(self) -> None:
        idle = self.listener.idle_timeout
        self.deadline = time.monotonic() + idle if idle else math.inf

    def expired(self, now: float) -> bool:
        return now > self.deadline and (self.reading or self.fresh or not self.pending)


class Listener:
    """The open connections of one listener, within its cap and deadlines (see the module)."""

    def __init__(
        self, name: str, cap: int, *, first_frame_timeout: float, frame_timeout: float, idle_timeout: float
    ) -> None:
        self.name = name
        self.cap = cap
        self.first_frame_timeout = first_frame_timeout
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.open: dict[Slot, None] = {}
        self.fresh: dict[Slot, None] = {}  # in arrival order: the oldest is evicted first
        self.counts = {"refused": 0, "evicted": 0, "timed_out": 0}

    def admit(self, close: Callable[[], None]) -> Slot | None:
        """A slot for a new connection, or None: then close it, it is refused."""
        if len(self.open) >= self.cap:
            if not self.fresh:
                self.counts["refused"] += 1
                log.warning(
                    "%s: %d connections, every one in use (the limit); refused a new one", self.name, len(self.open)
                )
                return None
            oldest = next(iter(self.fresh))
            self.release(oldest)
            oldest.close()
            self.counts["evicted"] += 1
            log.warning(
                "%s: %d connections (the limit); closed the oldest that had sent nothing yet", self.name, self.cap
            )
        slot = Slot(self, close)
        self.open[slot] = None
        self.fresh[slot] = None
        return slot

    def release(self, slot: Slot) -> None:
        """The connection is gone (idempotent)."""
        self.open.pop(slot, None)
        self.fresh.pop(slot, None)

    def sweep(self, now: float) -> None:
        for slot in [s for s in self.open if s.expired(now)]:
            self.release(slot)
            slot.close()
            self.counts["timed_out"] += 1
            log.warning(
                "%s: closed a connection that missed its deadline (first frame %.0f s, frame %.0f s, idle %.0f s)",
                self.name,
                self.first_frame_timeout,
                self.frame_timeout,
                self.idle_timeout,
            )

    def stats(self) -> ListenerStats:
        counts = self.counts
        return {
            "open": len(self.open),
            "cap": self.cap,
            "refused": counts["refused"],
            "evicted": counts["evicted"],
            "timed_out": counts["timed_out"],
        }


async def sweep_forever(listeners: list[Listener], tick: float) -> None:
    """Close the connections past their deadline, every ``tick`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        for listener in listeners:
            listener.sweep(now)


def sweep_tick(listeners: list[Listener]) -> float:
    """A quarter of the shortest deadline, at most 1 s: deadlines hold within 25%."""
    shortest = min(
        (
            t
            for listener in listeners
            for t in (listener.first_frame_timeout, listener.frame_timeout, listener.idle_timeout)
            if t
        ),
        default=4.0,
    )
    return max(0.01, min(1.0, shortest / 4))


class ByteBudget:
    """At most ``capacity`` bytes taken at once; a taker that does not fit waits for room.

    Large takers (over ``SMALL`` bytes) may use all but an eighth of the budget: frames that
    stall half-sent (up to ``frame_timeout``) can hold the large share, never the last eighth,
    so small requests (a hello, a typical embed) always get through. A waiter is served as
    soon as it fits, not in arrival order, so a large frame waiting for room does not hold up
    the small ones behind it either.
    """

    SMALL = 1 << 20

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserve = capacity // 8
        self.used = 0
        self.peak = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _limit(self, n: int) -> int:
        return self.capacity if n <= self.SMALL else self.capacity - self.reserve

    def largest(self) -> int:
        """The largest single taker that can ever fit."""
        return max(self.SMALL, self.capacity - self.reserve) if self.capacity >= self.SMALL else self.capacity

    async def acquire(self, n: int) -> None:
        if n > self.largest():
            raise ValueError(f"{n} bytes can never fit in a budget of {self.capacity}")
        if self.used + n <= self._limit(n):
            self._take(n)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(n)  # granted as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
            raise

    def release(self, n: int) -> None:
        self.used -= n
        if self._waiters:
            self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        for entry in list(self._waiters):
            n, waiter = entry
            if waiter.done():
                self._waiters.remove(entry)
            elif self.used + n <= self._limit(n):
                self._waiters.remove(entry)
                self._take(n)
                waiter.set_result(None)

    def stats(self) -> BudgetStats:
        return {"used": self.used, "peak": self.peak, "capacity": self.capacity, "waiting": len(self._waiters)}


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def fit_caps(caps: dict[str, int], fd_limit: int) -> dict[str, int]:
    """``caps`` scaled down (each at least 1) so that together they leave FD_RESERVE descriptors
    free: accept() then never fails for want of one."""
    room = max(len(caps), fd_limit - FD_RESERVE)
    total = sum(caps.values())
    if total <= room:
        return dict(caps)
    fitted = {name: max(1, cap * room // total) for name, cap in caps.items()}
    log.warning("open-file limit %d: connection caps lowered from %s to %s", fd_limit, caps, fitted)
    return fitted
