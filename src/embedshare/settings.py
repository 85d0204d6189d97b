"""Checks for numeric settings, shared by every edge that takes one (CLI, Python API, argv of
the service, environment, the state file a restart reads back).

A bad value is refused where it is given, with one line that names the setting and the value:
a ``max_batch`` of 0 accepted and passed on makes the batcher spin forever. Standard library
only: workers import this (through the client) and must stay light.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from typing import Any


class SettingError(ValueError):
    """A setting has a value outside what it accepts; the message names both."""


def whole_number(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in ``minimum..maximum``; bools, floats and strings are refused."""
    if isinstance(value, bool):
        raise SettingError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)  # int and numpy integers, not 2.5 or "3"
    except TypeError:
        raise SettingError(
            f"{name} must be a whole number >= {minimum}, got {value!r} ({type(value).__name__})"
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise SettingError(f"{name} must be {bounds}, got {number}")
    return number


def seconds(name: str, value: Any, *, allow_zero: bool = False, unit: str = "seconds") -> float:
    """A finite duration: > 0 (a timeout), or >= 0 with ``allow_zero`` (a wait)."""
    if isinstance(value, bool) or not hasattr(value, "__float__"):  # str and None have none
        raise SettingError(f"{name} must be a number of {unit}, got {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise SettingError(f"{name} must be a finite number of {unit} {bound}, got {value!r}")
    return value if isinstance(value, (int, float)) else number  # 2 stays 2 in messages


def optional_seconds(name: str, value: Any) -> float | None:
    """``None`` (no limit) or a timeout > 0."""
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
