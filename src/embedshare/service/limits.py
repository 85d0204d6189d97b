"""Limits at the service's edge: connections per listener, their deadlines, and buffered bytes.

Each listener (the Unix socket, the TCP listener, the HTTP port) has its own
:class:`Listener`, so a flood on one cannot take the connections of another: the owner's
socket keeps answering while the HTTP port is flooded. Within a listener:

- at most ``cap`` connections are open. A new one past the cap closes the connection that has
  waited longest for its client: one that has not yet sent a complete first frame (or, on
  HTTP, a request's headers), and on HTTP also one that has sent headers but not its whole
  body, or waits between requests. Idle and stalled floods only ever evict each other, while a
  client that sends its request at once (every embedshare client does) stays while it is
  answered. When every connection is being answered, the newcomer is closed at once;
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

    # ``listener.waiting`` holds the slots that wait for their client (and may be evicted at
    # the cap), the one that has waited longest first.

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
            self.listener.waiting.pop(self, None)
        self._idle_from_now()

    def waiting_for_client(self) -> None:
        """HTTP: the connection waits for its client's bytes (the rest of a body, or the next
        request): it may be evicted at the cap, the one that has waited longest first."""
        self.listener.waiting.pop(self, None)
        self.listener.waiting[self] = None

    def serving(self) -> None:
        """HTTP: the request is all in and being answered: never evicted for a newcomer."""
        self.listener.waiting.pop(self, None)

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
        self.waiting: dict[Slot, None] = {}  # waiting for their client, longest first: evicted first
        self.counts = {"refused": 0, "evicted": 0, "timed_out": 0}

    def admit(self, close: Callable[[], None]) -> Slot | None:
        """A slot for a new connection, or None: then close it, it is refused."""
        if len(self.open) >= self.cap:
            if not self.waiting:
                self.counts["refused"] += 1
                log.warning(
                    "%s: %d connections, every one in use (the limit); refused a new one", self.name, len(self.open)
                )
                return None
            oldest = next(iter(self.waiting))
            self.release(oldest)
            oldest.close()
            self.counts["evicted"] += 1
            log.warning(
                "%s: %d connections (the limit); closed the one that had waited longest for its client",
                self.name,
                self.cap,
            )
        slot = Slot(self, close)
        self.open[slot] = None
        self.waiting[slot] = None
        return slot

    def release(self, slot: Slot) -> None:
        """The connection is gone (idempotent)."""
        self.open.pop(slot, None)
        self.waiting.pop(slot, None)

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


class Holder:
    """Who holds bytes of a :class:`ByteBudget`: one connection, or one peer process.

    ``share`` is the most it may hold at once, unless it holds nothing: then it may always take
    one taker, so a frame larger than a share is still read (alone).
    """

    __slots__ = ("held", "share", "users")

    def __init__(self, share: int) -> None:
        self.share = share
        self.held = 0
        self.users = 0  # connections of a peer that use this holder

    def fits(self, n: int) -> bool:
        return not self.held or self.held + n <= self.share


class ByteBudget:
    """At most ``capacity`` bytes taken at once; a taker that does not fit waits for room
    (:meth:`acquire`), or is told so at once (:meth:`try_acquire`: HTTP answers 429).

    Two rules keep room for the small requests (a hello, a ping, a typical embed), so that
    one client's stalled frames cannot lock out the others:

    - **By size.** A taker of ``size`` over ``SMALL`` bytes may fill all but an eighth of the
      budget, one over ``TINY`` all but a thirty-second, and a tiny one all of it.
    - **By holder.** A taker names its holders: its connection (at most an eighth of the
      budget) and its peer process (its pid, by ``SO_PEERCRED``: at most a quarter). A holder
      past its share waits, alone; the others go on. So one process's 300 stalled frames hold a
      quarter, never the budget. A tiny frame on a connection that holds nothing (a new
      connection's hello) passes its peer's share: a process can still open a connection and be
      answered, and that costs at most its connections times ``TINY`` more.

    A waiter is served as soon as it fits, not in arrival order, so a large frame waiting for
    room does not hold up the small ones behind it either.
    """

    TINY = 64 << 10
    SMALL = 1 << 20

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserve = capacity // 8
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._peers: dict[object, Holder] = {}
        self._waiters: list[tuple[int, int, tuple[Holder, ...], asyncio.Future[None]]] = []

    def _limit(self, size: int) -> int:
        if size <= self.TINY:
            return self.capacity
        return self.capacity - (self.capacity // 32 if size <= self.SMALL else self.reserve)

    def largest(self) -> int:
        """The largest single taker that can ever fit (the largest of each size class's)."""
        large = self.capacity - self.reserve
        return max(
            large if large > self.SMALL else 0, min(self.SMALL, self._limit(self.SMALL)), min(self.TINY, self.capacity)
        )

    def connection(self) -> Holder:
        """A new connection's holder: an eighth of the budget."""
        return Holder(self.capacity // 8)

    def peer(self, key: object) -> Holder:
        """The holder of peer ``key`` (a pid), shared by its connections until each has called
        :meth:`leave`: a quarter of the budget."""
        holder = self._peers.get(key)
        if holder is None:
            holder = self._peers[key] = Holder(self.capacity // 4)
        holder.users += 1
        return holder

    def leave(self, key: object, holder: Holder) -> None:
        holder.users -= 1
        if not holder.users and self._peers.get(key) is holder:
            del self._peers[key]

    def fits(self, n: int, size: int | None = None, holders: tuple[Holder, ...] = ()) -> bool:
        """Whether ``n`` bytes may be taken now, for a taker of ``size`` bytes (default ``n``)
        held by ``holders`` (its connection first, then its peer)."""
        size = n if size is None else size
        if self.used + n > self._limit(size):
            return False
        if size <= self.TINY and holders and not holders[0].held:
            return True  # a connection's one tiny frame (a hello, a ping) is never held up by its peer's share
        return all(h.fits(n) for h in holders)

    def try_acquire(self, n: int, size: int | None = None, holders: tuple[Holder, ...] = ()) -> bool:
        """Take ``n`` bytes if they fit now; False (and counted as refused) if not."""
        if not self.fits(n, size, holders):
            self.refused += 1
            return False
        self._take(n, holders)
        return True

    async def acquire(self, n: int, size: int | None = None, holders: tuple[Holder, ...] = ()) -> None:
        size = n if size is None else size
        if size > self.largest():
            raise ValueError(f"{size} bytes can never fit in a budget of {self.capacity}")
        if self.fits(n, size, holders):
            self._take(n, holders)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, size, holders, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(n, holders)  # granted as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
            raise

    def release(self, n: int, holders: tuple[Holder, ...] = ()) -> None:
        self.used -= n
        for holder in holders:
            holder.held -= n
        if self._waiters:
            self._wake()

    def _take(self, n: int, holders: tuple[Holder, ...]) -> None:
        self.used += n
        for holder in holders:
            holder.held += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        for entry in list(self._waiters):
            n, size, holders, waiter = entry
            if waiter.done():
                self._waiters.remove(entry)
            elif self.fits(n, size, holders):
                self._waiters.remove(entry)
                self._take(n, holders)
                waiter.set_result(None)

    def stats(self) -> BudgetStats:
        return {
            "used": self.used,
            "peak": self.peak,
            "capacity": self.capacity,
            "waiting": len(self._waiters),
            "refused": self.refused,
        }


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
