"""Checks of the search API's arguments: a wrong kind or value is one line naming it.

Without them ``k='3'`` surfaced as a numpy ``TypeError``, ``get_tool_protocols([None])`` as an
``AttributeError`` from deep inside the index, and ``threshold=nan`` silently found nothing
(every comparison with NaN is false). Standard library only: workers import this.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from ..errors import ArgumentError

MAX_K = 1_000_000  # more results than any index this project builds holds


def result_count(k: Any) -> int:
    """``k``: a whole number of results in 1..MAX_K (``True``, ``2.5`` and ``'3'`` are refused)."""
    try:
        number = None if isinstance(k, bool) else operator.index(k)
    except TypeError:
        number = None
    if number is None or not 1 <= number <= MAX_K:
        raise ArgumentError(f"k must be a whole number in 1..{MAX_K}, got {k!r}")
    return number


def category_filter(category: Any) -> str | None:
    """``category``: one category's name, or None for every category."""
    if category is not None and not isinstance(category, str):
        raise ArgumentError(f"category must be a category's name (a str) or None, got {category!r}")
    return category


def score_threshold(threshold: Any) -> float:
    """``threshold``: a finite number, the lowest score kept (scores are cosine similarities, in
    -1..1). NaN is refused: no score passes it, and the search silently found nothing."""
    try:
        number = None if isinstance(threshold, (bool, str)) else float(threshold)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise ArgumentError(f"threshold must be a finite number (scores are in -1..1), got {threshold!r}")
    return number


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def tool_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ArgumentError(f"a tool name must be a str, got {name!r}")
    return name


def tool_names(names: Any) -> list[str]:
    """A tool name, or a sequence of them, as a list; anything else names what it got."""
    if isinstance(names, str):
        return [names]
    if not isinstance(names, Sequence | set | frozenset):  # a list, tuple, set; not None or 3
        raise ArgumentError(f"tool_names must be a tool name or a list of them, got {names!r}")
    return [tool_name(name) for name in names]
