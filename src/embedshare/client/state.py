"""What lives in the store's ``run/`` folder: the service lock, its state file, its stop mark.

Kept apart from ``server.py`` so that clients (every worker) can read it without importing
the server's asyncio machinery (~4 MB in every worker).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any, TypedDict, cast

from ..errors import AlreadyRunning, StateFileError
from ..store.files import open_private
from ..store.layout import StoreLayout


class StopMark(TypedDict):
    """A deliberate stop (``embedshare stop``): restart-policy clients do not bring it back."""

    by: str
    at: float  # time.time()
    pid: int | None  # the service's
    clients: list[int]  # pids of the clients connected then


class ServiceState(TypedDict, total=False):
    """``run/service.json``: written by the service once it answers (``EmbeddingServer``), read
    back by ``read_state``, which gives ``{}`` for a missing or damaged file: any key may be absent."""

    pid: int
    socket: str
    model: str  # the spec served
    model_id: str
    dim: int
    index: str | None
    config: dict[str, Any]  # the ServiceConfig's fields: a restart serves the same
    started: float  # time.time()
    protocol: int
    http: str | None  # the HTTP endpoint's URL
    tcp: str | None  # the TCP listener's tcp://HOST:PORT
    stopped: StopMark


def acquire_service_lock(layout: StoreLayout) -> int:
    """Take the store's service lock or raise :class:`AlreadyRunning`; returns the fd."""
    layout.make_private_run_dir()
    fd = open_private(layout.lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(read_state(layout).get("pid")) from None
    return fd


def service_lock_held(layout: StoreLayout) -> bool:
    """True while a service holds the store's lock (running, starting, or stopping).

    Probed by taking the lock for an instant: a service starting in that instant says
    ``already``, and its launcher looks again (see ``EmbeddingService.start``).
    """
    try:
        fd = os.open(layout.lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_state(layout: StoreLayout, *, strict: bool = False) -> ServiceState:
    """What the store's (last) service wrote about itself; ``{}`` if no service has written it.

    A damaged file reads as ``{}`` too, unless ``strict``: then it is a :class:`StateFileError`
    that says so (a restart must not report "no service has run" when one has).
    """
    try:
        text = layout.state.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if strict:
            raise StateFileError(f"cannot read {layout.state}: {exc.strerror or exc}") from None
        return {}
    try:
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
    except ValueError as exc:
        if strict:
            raise StateFileError(
                f"{layout.state} is damaged ({exc}); the next service started on this store "
                f"rewrites it: embedshare serve --store {layout.root} --model MODEL [--registry R]"
            ) from None
        return {}
    return cast(ServiceState, state)  # an object; its fields are read with .get


def mark_stopped(layout: StoreLayout, by: str, clients: list[int]) -> None:
    """Record in the state file that the service was stopped on purpose (``embedshare stop``).

    Restart-policy clients read it and do not bring the service back; the next service to
    start writes a fresh state file, which clears it.
    """
    from ..store.files import write_atomic

    state = read_state(layout)
    state["stopped"] = {"by": by, "at": time.time(), "pid": state.get("pid"), "clients": clients}
    write_atomic(layout.state, json.dumps(state, indent=2))


def stopped_on_purpose(layout: StoreLayout) -> str | None:
    """Why the store's service must not be restarted (a deliberate stop), or None."""
    stopped = read_state(layout).get("stopped")
    if not isinstance(stopped, dict):
        return None
    when = time.strftime("%H:%M:%S", time.localtime(float(stopped.get("at") or 0)))
    return (
        f"the embedshare service of {layout.root} (pid {stopped.get('pid')}) was stopped by "
        f"`{stopped.get('by')}` at {when}, so it is not restarted; start it again with "
        f"`embedshare serve --store {layout.root} --detach` (or start your pool again)"
    )
