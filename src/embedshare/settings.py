"""Checks for numeric settings, shared by every edge that takes one (CLI, Python API, argv of
the service, environment, the state file a restart reads back).

A bad value is refused where it is given, with one line that names the setting and the value:
a ``max_batch`` of 0 accepted and passed on makes the batcher spin forever. Standard library
only: workers import this (through the client) and must stay light.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

from .errors import SettingError as SettingError  # the settings' error: `settings.SettingError`

# Upper bounds for settings that do not name a tighter one. Every setting has one: a wait of
# 1e308 ms is accepted by a lower bound alone, and a miss then waits forever; a count of 2**70
# overflows the C ints it is handed to.
MAX_COUNT = 2**31 - 1
MAX_DURATION = 7 * 24 * 3600  # in the setting's own unit: a week, for a timeout in seconds


def whole_number(name: str, value: Any, minimum: int, maximum: int = MAX_COUNT) -> int:
    """``value`` as an int in ``minimum..maximum``; bools, floats and strings are refused."""
    if isinstance(value, bool):
        raise SettingError(f"{name} must be a whole number in {minimum}..{maximum}, got {value!r}")
    try:
        number = operator.index(value)  # int and numpy integers, not 2.5 or "3"
    except TypeError:
        raise SettingError(
            f"{name} must be a whole number in {minimum}..{maximum}, got {value!r} ({type(value).__name__})"
        ) from None
    if number < minimum or number > maximum:
        raise SettingError(f"{name} must be in {minimum}..{maximum}, got {number}")
    return number


def seconds(
    name: str, value: Any, *, allow_zero: bool = False, unit: str = "seconds", maximum: float = MAX_DURATION
) -> float:
    """A finite duration up to ``maximum`` (in ``unit``): > 0 (a timeout), or >= 0 with
    ``allow_zero`` (a wait)."""
    if isinstance(value, bool) or not hasattr(value, "__float__"):  # str and None have none
        raise SettingError(f"{name} must be a number of {unit}, got {value!r}")
    number = float(value)
    if not (0 <= number <= maximum) or (number == 0 and not allow_zero):  # NaN fails every comparison
        bound = f"{'0' if allow_zero else 'more than 0'} up to {maximum:g}"
        raise SettingError(f"{name} must be a number of {unit} from {bound}, got {value!r}")
    return value if isinstance(value, (int, float)) else number  # 2 stays 2 in messages


def optional_seconds(name: str, value: Any) -> float | None:
    """``None`` (no limit) or a timeout > 0 (up to :data:`MAX_DURATION`)."""
    return None if value is None else seconds(name, value)


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_choice(variable: str, choices: Sequence[str], default: str | None) -> str | None:
    """The environment variable ``variable``, which must be one of ``choices`` when set."""
    value = os.environ.get(variable)
    if value is None or value == "":
        return default
    return choice(f"the environment variable {variable}", value, choices)
