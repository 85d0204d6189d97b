"""Give the C heap's free pages back to the OS once the model goes idle, not on every forward.

ONNX Runtime (with its arena off) frees a forward's activation buffers to glibc's malloc, which
keeps them for the next forward: that is what makes the next forward cheap. Forcing every
large buffer into its own mapping (``mallopt(M_MMAP_THRESHOLD, 1 MB)``, what this project did
before) returned them at once but cost a page fault per touched page on every forward: 6.4 M
minor faults and 20 s of system time out of 60 s of CPU for 3,000 texts, 40-45% of the model's
time. Instead :class:`IdleTrim` calls glibc's ``malloc_trim(0)`` once, when no forward has run
for a moment: the heap a burst grew goes back (511 MB to 161 MB in the issue's measurement)
and a forward in a burst pays nothing. Python has no binding for malloc_trim, hence ctypes;
on another C library it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from functools import cache

# Measured (bench/README.md, "The model alone, before and after issue 20"): one trim after a
# burst takes 18 ms; a second without a forward means the burst is over, and within one no
# forward ever waits for a trim.
IDLE_SECONDS = 1.0


@cache
def _libc_malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: ctypes._CFuncPtr = libc.malloc_trim  # type: ignore[name-defined]
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def return_free_heap_to_the_os() -> bool:
    """glibc's ``malloc_trim(0)`` over every arena; True if it released memory."""
    trim = _libc_malloc_trim()
    return bool(trim(0)) if trim is not None else False


class IdleTrim:
    """Trims the heap once per busy period, ``idle_seconds`` after its last :meth:`busy`.

    ``lock`` is the one the forwards hold: a trim never runs during a forward (it would contend
    for malloc's arenas), and a forward that starts during a trim waits the few ms it takes.
    The thread starts on the first :meth:`busy`, so a process that never computes has none.
    """

    def __init__(self, lock: threading.Lock, idle_seconds: float | None = None) -> None:
        self._forward_lock = lock
        self.idle_seconds = IDLE_SECONDS if idle_seconds is None else idle_seconds
        self._changed = threading.Condition()
        self._last_busy = 0.0
        self._pending = False
        self._thread: threading.Thread | None = None
        self.trims = 0  # how many trims ran (the tests and the bench read it)

    def busy(self) -> None:
        """A forward just ended: trim once none has run for ``idle_seconds``."""
        with self._changed:
            self._last_busy = time.monotonic()
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._trim_when_idle, name="embedshare-heap-trim", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _trim_when_idle(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                quiet_for = time.monotonic() - self._last_busy
                if quiet_for < self.idle_seconds:
                    self._changed.wait(self.idle_seconds - quiet_for)
                    continue
                self._pending = False
            if not self._forward_lock.acquire(blocking=False):  # a forward runs: not idle yet
                self.busy()
                continue
            try:
                return_free_heap_to_the_os()
            finally:
                self._forward_lock.release()
            self.trims += 1
