"""The checks of :class:`~embedshare.service.config.ServiceConfig`'s fields.

Each takes the field's name and a value and returns the value to keep, or raises a one-line
``SettingError`` naming the field. Standard library only at import time, like ``config``: the
CLI imports both to build its options; the checks that need more import it when they run.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SettingError
from ..settings import MAX_COUNT, MAX_DURATION, seconds, whole_number

Check = Callable[[str, Any], Any]  # (field name, value) -> the value to keep, or SettingError
_T = typing.TypeVar("_T")

# Every number has an upper bound as well as a lower one (the defaults of settings.py where a
# field names none): a --max-wait-ms of 1e308 made every miss wait forever.


def whole(minimum: int, maximum: int = MAX_COUNT) -> Check:
    return lambda name, value: whole_number(name, value, minimum, maximum)


def duration(*, allow_zero: bool = False, unit: str = "seconds", maximum: float = MAX_DURATION) -> Check:
    return lambda name, value: seconds(name, value, allow_zero=allow_zero, unit=unit, maximum=maximum)


def batch_tokens(name: str, value: Any) -> int:
    from ..embedders.onnx_local import BATCH_TOKENS_RANGE  # numpy: not for every client's import

    return whole_number(name, value, *BATCH_TOKENS_RANGE)


def optional(check: Callable[[str, Any], _T]) -> Callable[[str, Any], _T | None]:
    return lambda name, value: None if value is None else check(name, value)


def path(kind: str) -> Callable[[str, Any], str]:
    """An absolute path: the service process may run in another folder than its caller."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise SettingError(f"{name} must be a {kind} path, got {value!r}")
        return str(Path(value).expanduser().resolve())

    return check


folder = path("folder")
file = optional(path("file"))


def model_spec(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SettingError(f"{name} must be a model spec such as 'local', got {value!r}")
    return value


def registry(name: str, value: Any) -> str | None:
    from ..registry.loader import BUNDLED_REGISTRY

    return value if value is None or value == BUNDLED_REGISTRY else file(name, value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingError(f"{name} must be True or False, got {value!r}")
    return value


def texts(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise SettingError(f"{name} must be a list of texts")
    return tuple(value)


SPEC_KINDS = ("hash", "local", "openai")  # the kinds of spec create_embedder knows (embedders/__init__.py)


def served_names(name: str, value: Any) -> tuple[str, ...]:
    """Aliases of the model for HTTP clients: their own default names, never another model's spec."""
    names = texts(name, value)
    for served in names:
        if not served or served != served.strip() or len(served) > 256 or not served.isprintable():
            raise SettingError(f"{name}: {served!r} is not a model name (printable, no surrounding spaces)")
        if served.partition(":")[0].partition("@")[0].lower() in SPEC_KINDS:
            raise SettingError(
                f"{name}: {served!r} names an embedshare model; a served name is another name for the "
                "service's own model, such as a client's default (text-embedding-3-small)"
            )
    return tuple(dict.fromkeys(names))


def tcp_address(name: str, value: Any) -> str:
    from ..client.address import parse_tcp_address

    parse_tcp_address(value)
    return str(value)


def http_address(name: str, value: Any) -> str | None:
    from .http.address import normalise_http_address  # also checks the `http` extra is installed

    return normalise_http_address(value)
