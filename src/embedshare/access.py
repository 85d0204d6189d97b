"""``get_embedding_manager()``: the one call task code makes, in any kind of process.

It returns this process's single manager: the shared client when a service answers (its
address from ``EMBEDSHARE_ADDRESS``, which every child process inherits, or the store's
well-known socket), else a local manager, with one warning. One instance per process: every
thread gets the same one, and a forked child builds its own (an inherited socket or LMDB
handle must not be used across fork).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

from .lazylog import LazyLogger
from .manager import DEFAULT_MODEL, EmbeddingManager, ManagerBase, default_store
from .service.client import SharedEmbeddingManager
from .service.connection import ServiceUnavailable
from .service.state import ENV_ADDRESS
from .store import StoreLayout

log = LazyLogger(__name__)  # logging is imported only if something is logged

ENV_MODEL = "EMBEDSHARE_MODEL"
ENV_REGISTRY = "EMBEDSHARE_REGISTRY"

_lock = threading.Lock()
_instance: ManagerBase | None = None
_instance_pid: int | None = None


class NoServiceWarning(RuntimeWarning):
    """No embedshare service answered; this process built its own local manager."""


def get_embedding_manager(
    model: str | None = None,
    store: str | Path | None = None,
    registry: str | Path | None = None,
    *,
    on_failure: str | None = None,
) -> ManagerBase:
    """This process's embedding manager: shared if a service runs, else local.

    ``model``: the spec this process expects (``EMBEDSHARE_MODEL`` by default). A service that
    embeds with another model is an error, never silently used. ``store`` and ``registry``
    default to ``EMBEDSHARE_STORE`` and ``EMBEDSHARE_REGISTRY``; the registry is only used by
    a local manager (a service brings its own index).
    """
    global _instance, _instance_pid
    pid = os.getpid()
    if _instance is not None and _instance_pid == pid:
        return _instance
    with _lock:
        if _instance is not None and _instance_pid == pid:
            return _instance
        _instance = _create(model or os.environ.get(ENV_MODEL), store, registry, on_failure)
        _instance_pid = pid
        return _instance


def set_embedding_manager(manager: ManagerBase) -> None:
    """Make ``manager`` what ``get_embedding_manager()`` returns in this process."""
    global _instance, _instance_pid
    with _lock:
        _instance, _instance_pid = manager, os.getpid()


def reset_embedding_manager() -> None:
    """Forget this process's manager (tests, or after stopping a service)."""
    global _instance, _instance_pid
    with _lock:
        if _instance is not None and _instance_pid == os.getpid():
            close = getattr(_instance, "close", None)
            if close:
                close()
        _instance, _instance_pid = None, None


def _create(model: str | None, store: str | Path | None, registry: str | Path | None,
            on_failure: str | None) -> ManagerBase:
    if store is None:  # inside a Ray task or actor: its node's service (embedshare.ray)
        ray_manager = _ray_node_manager(model, on_failure)
        if ray_manager is not None:
            return ray_manager
    store_path = Path(store).expanduser() if store else default_store()
    address = os.environ.get(ENV_ADDRESS) or str(StoreLayout(store_path).socket)
    if address.startswith("tcp://") or Path(address).exists():
        try:
            return SharedEmbeddingManager(address, model=model, on_failure=on_failure)
        except ServiceUnavailable as exc:
            reason = str(exc)
    else:
        reason = f"no socket at {address}"
    message = (
        f"no embedshare service is running ({reason}); this process (pid {os.getpid()}) builds "
        "its own local embedding manager. Start one with `embedshare serve` to share it."
    )
    warnings.warn(message, NoServiceWarning, stacklevel=3)
    log.warning(message)
    return EmbeddingManager(
        store_path, model=model or DEFAULT_MODEL, registry=registry or os.environ.get(ENV_REGISTRY)
    )


def _ray_node_manager(model: str | None, on_failure: str | None) -> ManagerBase | None:
    """The node's manager in a Ray worker (a task or an actor), else None.

    Ray is never imported here: a process that has not imported it is not a Ray worker, and
    pays nothing. ``EMBEDSHARE_RAY=0`` turns this off.
    """
    if "ray" not in sys.modules or os.environ.get("EMBEDSHARE_RAY") == "0":
        return None
    from .ray.worker import RayEmbeddingManager, in_ray_worker

    if not in_ray_worker():
        return None
    return RayEmbeddingManager(model=model, on_failure=on_failure)
