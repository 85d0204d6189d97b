"""Single-flight: a key that is being computed is computed once; whoever asks for it meanwhile
waits for that computation instead of starting another.

One table for every place that computes vectors for many callers at once: the threads of a
process (``sources/local.py``), the clients of the service (``service/batcher.py``, on asyncio
futures) and the workers of a Ray node (``ray/node.py``). The caller decides how the keys it
claimed are computed; this module only keeps the futures.

``Promise`` is the future of the threaded callers: what ``concurrent.futures.Future`` does for
this, minus its import (which loads ``logging``, about 1 MB in every worker process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class Settable(Protocol):
    """What a future must offer to be kept in a :class:`SingleFlight`."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


F = TypeVar("F", bound=Settable)


class Promise:
    """A result handed from one thread to the threads that wait for it."""

    __slots__ = ("_error", "_ready", "_value")

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._ready.is_set()

    def set_result(self, result: Any) -> None:
        self._value = result
        self._ready.set()

    def set_exception(self, exception: BaseException) -> None:
        self._error = exception
        self._ready.set()

    def result(self, timeout: float | None = None) -> Any:
        """The result (or the error, raised); ``TimeoutError`` if none came within ``timeout``."""
        if not self._ready.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


@dataclass(frozen=True)
class Claim(Generic[F]):
    """What :meth:`SingleFlight.claim` gave one caller."""

    futures: list[F]  # one per key asked for, in order (a key asked twice: the same future)
    mine: list[int]  # positions whose key this caller computes: each new key once, first seen
    joined: int  # positions that joined a computation already under way


class SingleFlight(Generic[F]):
    """The keys being computed now, each with the future its askers wait on. Thread-safe."""

    def __init__(self, new_future: Callable[[], F]) -> None:
        self._new_future = new_future
        self._futures: dict[Hashable, F] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._futures

    def claim(self, keys: Sequence[Hashable]) -> Claim[F]:
        """A future for every key; the keys nobody computes yet are the caller's to compute.

        The caller must then :meth:`settle` or :meth:`fail` every key of ``mine``, or the
        others who asked for them wait forever.
        """
        futures: list[F] = []
        mine: list[int] = []
        claimed: set[Hashable] = set()
        joined = 0
        with self._lock:
            for position, key in enumerate(keys):
                future = self._futures.get(key)
                if future is None:
                    future = self._futures[key] = self._new_future()
                    mine.append(position)
                    claimed.add(key)
                elif key not in claimed:
                    joined += 1
                futures.append(future)
        return Claim(futures, mine, joined)

    def settle(self, keys: Iterable[Hashable], results: Iterable[Any]) -> None:
        """Give each claimed key its result and forget it."""
        with self._lock:
            settled = [(self._futures.pop(key, None), result) for key, result in zip(keys, results, strict=True)]
        for future, result in settled:
            if future is not None and not future.done():
                future.set_result(result)

    def fail(self, keys: Iterable[Hashable], error: BaseException) -> None:
        """Give each claimed key that is still open ``error`` and forget it.

        The error is marked as retrieved on asyncio futures: whoever fails the keys logs it
        once, not once more per waiter that left.
        """
        with self._lock:
            failed = [self._futures.pop(key, None) for key in keys]
        for future in failed:
            if future is not None and not future.done():
                future.set_exception(error)
                retrieve = getattr(future, "exception", None)
                if retrieve is not None and not isinstance(future, Promise):
                    retrieve()
