"""``wait_for``: wait for a *fact*, with a deadline that fails the test.

A test that needs another thread or process to have done something polls a condition that
says so; it never sleeps and hopes. Light on purpose (``time`` only): the modules in
``spawned/`` use it inside worker processes too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
