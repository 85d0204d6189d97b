"""Every exception embedshare raises, and the one table that carries them over the wire.

Our exception hierarchy (each class's stdlib base in brackets)::

    EmbedshareError                     catch this for "anything embedshare refused or failed"
    ├── the model
    │   ├── EmbedderError               [RuntimeError] no valid vectors from the model or API
    │   ├── InvalidTextError            [ValueError]   a text is not a usable string
    │   ├── UnknownModelError           [ValueError]   a model spec names no embedder
    │   ├── UnsupportedModelError       [ValueError]   a model folder the ONNX builder cannot read
    │   └── ModelMismatchError          [ValueError]   the service embeds with another model
    ├── the store
    │   ├── CacheError                  [RuntimeError] the cache cannot be opened, read or written
    │   │   ├── CacheFullError                         its size limit or the disk is reached
    │   │   └── CacheDamagedError                      its file is cut short or garbled
    │   ├── ToolIndexError              [ValueError]   an index folder missing, corrupt or another's
    │   ├── UnknownToolError            [KeyError]     a tool name the index does not hold
    │   ├── NoIndexError                [RuntimeError] a search with no tool registry loaded
    │   ├── RegistryError               [ValueError]   a registry file is not valid
    │   ├── RegistryMismatchError       [ValueError]   not the registry the store's service serves
    │   ├── StoreRecordError            [ValueError]   store.json holds a value of the wrong kind
    │   └── UnsafeStoreError            [PermissionError] a store others could read or redirect
    ├── the service
    │   ├── ServiceUnavailable          [ConnectionError] no service answered, or it went away
    │   │   ├── ServiceStopped                         stopped on purpose: not restarted
    │   │   └── ServiceAuthenticationError [+PermissionError] a TCP peer without the token
    │   ├── ForeignServiceError         [PermissionError] the socket is another user's
    │   ├── ServiceStartError           [RuntimeError] the service exited before it answered
    │   ├── AlreadyRunning              [RuntimeError] a service already holds the store
    │   ├── StateFileError              [ValueError]   run/service.json cannot be read back
    │   ├── RemoteError                 [RuntimeError] the service answered a code without a class
    │   ├── ProtocolError               [ValueError]   a malformed frame or request
    │   ├── HandshakeError              [Exception]    a TCP peer did not authenticate
    │   ├── ServiceArgvError            [ValueError]   the service process's argv holds a bad setting
    │   ├── TokenInputError             [ValueError]   HTTP token arrays that cannot be decoded
    │   └── ApiError (service/http/errors.py)          an HTTP error reply in OpenAI's shape
    ├── the worker pool
    │   ├── PoolError                   [RuntimeError]
    │   │   ├── WorkerCrashed                          a task's worker died on every attempt
    │   │   ├── WorkerInitError                        a worker's initializer failed
    │   │   └── TaskFailed                             a convenience call had failed tasks
    │   ├── MainGuardError              [RuntimeError] a pool started outside `if __name__ == ...`
    │   └── NodeGone                    [RuntimeError] a Ray node is no longer in the cluster
    └── arguments and settings
        ├── SettingError                [ValueError]   a setting outside what it accepts
        └── ArgumentError               [TypeError, ValueError] an argument of the wrong kind

Every class pickles back to itself with its message and attributes (a class whose
``__init__`` takes other arguments than the message has a ``__reduce__``): an exception raised
in a ``multiprocessing`` or ``concurrent.futures`` worker is pickled to its parent, and one
that cannot be rebuilt there reaches the caller as a ``TypeError`` from the unpickling.

Why the stdlib bases stay: code written before this base existed catches them (``except
ValueError`` around a bad text or setting, ``except ConnectionError`` around a lost service,
``except KeyError`` around a tool lookup, ``except PermissionError`` around a store), and a
class keeps the base its meaning has: bad input is a ``ValueError``, a failure at run time a
``RuntimeError``. The warnings (``NoServiceWarning``, ``LocalModelWarning``) are not errors
and stay beside the code that issues them.

``WIRE_ERRORS`` is the one table from exception to error code (and HTTP status). The socket
listeners answer with its code, the HTTP endpoint with its status, and ``ServiceSource`` maps
a code back to its class, so a failure raises the same class in-process and through the
service. A code it does not hold (a protocol's own, ``internal``) comes back as ``RemoteError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class EmbedshareError(Exception):
    """The base of every embedshare exception."""


# -- the model ----------------------------------------------------------------------------------


class EmbedderError(EmbedshareError, RuntimeError):
    """An embedder could not produce valid vectors (backend failure or bad output)."""


class InvalidTextError(EmbedshareError, ValueError):
    """A text given to embed is not a usable string; the message names which and why."""


class UnknownModelError(EmbedshareError, ValueError):
    """A model spec string names no known embedder."""


class UnsupportedModelError(EmbedshareError, ValueError):
    """The model folder is not a BERT encoder with mean pooling that this builder knows."""


class ModelMismatchError(EmbedshareError, ValueError):
    """A service (or this process's manager) embeds with another model than the one asked for.

    Never answered with the other model's vectors: the message names both models and the fix.
    """


# -- the store ----------------------------------------------------------------------------------


class CacheError(EmbedshareError, RuntimeError):
    """The cache could not be opened or written; the message says why."""


class CacheFullError(CacheError):
    """The cache reached its size limit or the disk is full. Nothing was corrupted."""


class CacheDamagedError(CacheError):
    """The cache file is damaged (cut short, garbled pages); the message names it and the fix."""


class ToolIndexError(EmbedshareError, ValueError):
    """An index folder is missing, corrupt, or does not match what was asked for."""


class UnknownToolError(EmbedshareError, KeyError):
    """A tool name is not in the index."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class NoIndexError(EmbedshareError, RuntimeError):
    """A search was asked of a manager that has no tool registry loaded."""


class RegistryError(EmbedshareError, ValueError):
    """A registry is not valid; the message names the tool and the field."""


class RegistryMismatchError(EmbedshareError, ValueError):
    """A registry was asked for that is not the one the store's service serves."""


class StoreRecordError(EmbedshareError, ValueError):
    """``store.json`` holds a value of the wrong kind (edited by hand, or by another tool)."""


class UnsafeStoreError(EmbedshareError, PermissionError):
    """A store folder or file that another user could read, replace or redirect."""


# -- the service --------------------------------------------------------------------------------


class ServiceUnavailable(EmbedshareError, ConnectionError):
    """The service cannot be reached, went away, or did not answer in time."""


class ServiceStopped(ServiceUnavailable):
    """The service was stopped on purpose (``embedshare stop``): it is not restarted."""


class ForeignServiceError(EmbedshareError, PermissionError):
    """The socket is served by another user's process: never talked to, never fallen back from."""


class ServiceAuthenticationError(ServiceUnavailable, PermissionError):
    """A TCP peer did not prove it holds the token: it got no token, no text, and nothing it
    said is used. Under the failure policies it is a service that is not there."""


class ServiceStartError(EmbedshareError, RuntimeError):
    """The service process exited or failed before it answered.

    The message is one line (what went wrong, and where the log is); ``log_tail`` holds the
    end of the service's log, traceback included, for ``-v`` and for debugging.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class AlreadyRunning(EmbedshareError, RuntimeError):
    """A service already holds the store's lock; ``pid`` is its process (None if unknown)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"a service already runs on this store (pid {pid})")
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.pid,), self.__dict__


class StateFileError(EmbedshareError, ValueError):
    """``run/service.json`` exists but cannot be read back (garbled, cut short, not an object)."""


class RemoteError(EmbedshareError, RuntimeError):
    """The service answered a request with an error code that has no class of its own."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"service error ({code}): {message}")
        self.code = code
        self.remote_message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.remote_message), self.__dict__


class ProtocolError(EmbedshareError, ValueError):
    """A frame or request is malformed; ``code`` is the error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, *self.args), self.__dict__


class HandshakeError(EmbedshareError):
    """The peer did not authenticate; the message says why, in one line, without a secret."""


class ServiceArgvError(EmbedshareError, ValueError):
    """The service process's argv holds a bad setting; the message is one line, and the
    launcher has it already, on the ready pipe."""


class TokenInputError(EmbedshareError, ValueError):
    """``input`` holds token arrays that cannot be decoded; the message says which and why."""


# -- the worker pool ----------------------------------------------------------------------------


class PoolError(EmbedshareError, RuntimeError):
    """Base class for errors raised by ``WorkerPool``."""


class WorkerCrashed(PoolError):
    """A task's worker process died on every allowed attempt (the name used in outcomes)."""


class WorkerInitError(PoolError):
    """A worker's initializer failed; retrying would only fail again, so the pool gives up."""


class TaskFailed(PoolError):
    """Raised by the convenience calls when at least one task failed; carries the failures
    (``failures``: the ``pool.outcomes.TaskOutcome`` of each failed task)."""

    def __init__(self, message: str, failures: Sequence[Any]) -> None:
        super().__init__(message)
        self.failures = list(failures)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (*self.args, self.failures), self.__dict__


class MainGuardError(EmbedshareError, RuntimeError):
    """A pool was started where spawned workers would start it again."""


class NodeGone(EmbedshareError, RuntimeError):
    """The node is not alive in the cluster: its service cannot be (re)started."""


# -- arguments and settings ---------------------------------------------------------------------


class SettingError(EmbedshareError, ValueError):
    """A setting has a value outside what it accepts; the message names both."""


class ArgumentError(EmbedshareError, TypeError, ValueError):
    """An argument of the wrong kind or out of range; both a ``TypeError`` and a ``ValueError``,
    so code written against either (the original raised both, by accident) still catches it."""


# -- the wire: one code (and HTTP status) per failure that crosses it ---------------------------


@dataclass(frozen=True)
class WireError:
    """How one exception crosses the service: its ``code`` on the socket and in HTTP error
    bodies, its HTTP ``status``, and the request field it blames (HTTP's ``param``)."""

    code: str
    exception: type[EmbedshareError]
    status: int
    param: str | None = None


WIRE_ERRORS = (
    WireError("invalid_text", InvalidTextError, 400, param="input"),
    WireError("model_mismatch", ModelMismatchError, 400),
    WireError("model_error", EmbedderError, 502),  # the model (or its API) upstream failed
    WireError("cache_full", CacheFullError, 507),  # Insufficient Storage: the store, not the request
    WireError("cache_damaged", CacheDamagedError, 503),
    WireError("cache_error", CacheError, 503),
    WireError("no_index", NoIndexError, 404),
    WireError("unknown_tool", UnknownToolError, 404),
    WireError("registry_mismatch", RegistryMismatchError, 409),
)
_BY_CLASS = {entry.exception: entry for entry in WIRE_ERRORS}
_BY_CODE = {entry.code: entry for entry in WIRE_ERRORS}


def wire_error(exc: BaseException) -> WireError | None:
    """The table's entry for ``exc``: that of its class or of its nearest base in the table
    (a ``CacheFullError`` is ``cache_full``, a subclass of ``CacheError`` without an entry
    ``cache_error``); None if it has none."""
    for cls in type(exc).__mro__:
        entry = _BY_CLASS.get(cls)
        if entry is not None:
            return entry
    return None


def from_code(code: str, message: str) -> EmbedshareError:
    """The exception a service's error reply stands for: the table's class for ``code``, with
    the service's message, or a ``RemoteError`` for a code it does not hold."""
    entry = _BY_CODE.get(code)
    if entry is None:
        return RemoteError(code, message)
    return entry.exception(message)
