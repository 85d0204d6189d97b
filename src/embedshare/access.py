"""``get_embedding_manager()``: the one call task code makes, in any kind of process.

It returns this process's single manager: the shared client when a service answers (its
address from ``EMBEDSHARE_ADDRESS``, which every child process inherits, or the store's
well-known socket), else a local manager, with one warning. One instance per process: every
thread gets the same one, and a forked child builds its own (an inherited socket or LMDB
handle must not be used across fork).

``SharedEmbeddingManager`` is that shared client: an :class:`EmbeddingManager` whose source is
the store's service (``sources/service.py``) under the failure policy (``sources/failover.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from . import settings
from .client.address import TCP_SCHEME
from .client.config import CLIENT_DEFAULTS, ClientConfig
from .client.protocol import ServedRegistry, StatsReply
from .client.state import stopped_on_purpose
from .env import (
    ENV_ADDRESS,
    ENV_MODEL,
    ENV_NO_SERVICE_SAID,
    ENV_ON_FAILURE,
    ENV_RAY,
    ENV_REGISTRY,
    ENV_STORE,
    default_store,
)
from .errors import ServiceStopped, ServiceUnavailable
from .manager import DEFAULT_MODEL, EmbeddingManager
from .sources.failover import POLICIES, FailoverSource
from .sources.service import ServiceSource
from .store import StoreLayout
from .store.record import recorded_model, recorded_registry
from .util.user_warning import warn_user

# The manager of a Ray task or actor. Named, not imported: the Ray integration is optional and
# sits above this module; it is loaded only in a process that has imported Ray.
RAY_MANAGER = "embedshare.ray.source"


class SharedEmbeddingManager(EmbeddingManager):
    """A client of the store's service at ``address``, with the API of :class:`EmbeddingManager`.

    Cache hits and searches stay in this process; misses go to the service. ``on_failure``
    (``EMBEDSHARE_ON_FAILURE``, default ``local``) is what happens when the service is gone:
    ``restart`` it, fall back to a ``local`` model, or raise (``error``); see
    ``sources/failover.py``. ``registry``: raise ``RegistryMismatchError`` unless the service
    serves it. ``token``: what a ``tcp://`` address's service asks for (``EMBEDSHARE_TOKEN``).
    """

    def __init__(
        self,
        address: str | Path,
        model: str | None = None,
        *,
        on_failure: str | None = None,
        request_timeout: float = CLIENT_DEFAULTS.request_timeout,
        connect_timeout: float = CLIENT_DEFAULTS.connect_timeout,
        search_cache_size: int = 1024,
        token: str | None = None,
        registry: str | Path | None = None,
    ) -> None:
        # Checked before connecting: a typo must not wait for the service.
        settings.whole_number("search_cache_size", search_cache_size, 0)
        if on_failure is None:
            on_failure = settings.env_choice(ENV_ON_FAILURE, POLICIES, default="local")
        policy = settings.choice("on_failure", on_failure, POLICIES)
        client = ClientConfig(request_timeout=request_timeout, connect_timeout=connect_timeout)
        service = ServiceSource(address, model, token=token, config=client)
        source = FailoverSource(service, policy, revive=_revive_for(service))
        try:
            super().__init__(source=source, registry=registry, search_cache_size=search_cache_size)
        except BaseException:
            source.close()
            raise
        self._service = service

    def __repr__(self) -> str:
        return f"SharedEmbeddingManager(address={self.address!r}, model={self.model_id!r})"

    @property
    def address(self) -> str:
        return self._service.address

    @property
    def store(self) -> Path:
        """The service's store folder (its cache and indexes are read from there)."""
        return self.layout.root

    @property
    def on_failure(self) -> str:
        return self._failover.policy

    @property
    def served_registry(self) -> ServedRegistry | None:
        """What the service serves: its registry's ``hash``, ``source`` and ``index``, or None."""
        return self._service.served_registry

    @property
    def _failover(self) -> FailoverSource:
        source = self.source
        assert isinstance(source, FailoverSource)
        return source

    def service_stats(self) -> StatsReply:
        """The service's own counters (every client's requests, batches, latency)."""
        return self._service.service_stats()


def _revive_for(service: ServiceSource) -> Callable[[], bool]:
    """The ``restart`` policy's way back. A ``tcp://`` service is its owner's to start (it may
    run as another user): its clients only reconnect, within the policy's bound of tries."""
    if service.address.startswith(TCP_SCHEME):
        return lambda: False
    return lambda: revive_store_service(service.layout)


def revive_store_service(layout: StoreLayout) -> bool:
    """The ``restart`` policy on one machine: join the store's service or start it as it last
    ran (the store's lock: only one process does); True if this process started it.

    A service stopped by ``embedshare stop`` is not started again: :class:`ServiceStopped`.
    """
    from .service.launcher import restart_service

    try:
        return restart_service(layout.root).owned
    except ServiceUnavailable as exc:
        if isinstance(exc, ServiceStopped) or not stopped_on_purpose(layout):
            raise
        raise ServiceStopped(str(exc)) from None  # stopped while this process brought it back


_lock = threading.Lock()
_instance: EmbeddingManager | None = None
_instance_pid: int | None = None


class NoServiceWarning(RuntimeWarning):
    """No embedshare service answered; this process built its own local manager."""


def get_embedding_manager(
    model: str | None = None,
    store: str | Path | None = None,
    registry: str | Path | None = None,
    *,
    on_failure: str | None = None,
    default_model: str = DEFAULT_MODEL,
) -> EmbeddingManager:
    """This process's embedding manager: shared if a service runs, else local.

    ``model``: the spec this process expects (``EMBEDSHARE_MODEL`` by default). A service that
    embeds with another model is an error, never silently used. ``store`` and ``registry``
    default to ``EMBEDSHARE_STORE`` and ``EMBEDSHARE_REGISTRY``. With no registry, the one the
    service serves (or, locally, the one the store records) is used; a registry other than the
    service's is an error (RegistryMismatchError), never silently another.

    ``on_failure`` (``EMBEDSHARE_ON_FAILURE``): under ``restart`` a process that finds no
    service waits for it or starts it, and never builds its own model; ``error`` raises;
    ``local`` (the default) builds a local manager with a warning.

    ``default_model``: what a local manager embeds with when neither ``model``,
    ``EMBEDSHARE_MODEL`` nor the store's record names one (``embedshare.compat`` passes the
    original manager's default).
    """
    global _instance, _instance_pid
    pid = os.getpid()
    if _instance is not None and _instance_pid == pid:
        return _instance
    with _lock:
        if _instance is not None and _instance_pid == pid:
            return _instance
        # Read and checked once, here, even when no service answers (a local manager ignores
        # the policy): a typo in the environment must not wait for the service to die.
        if on_failure is None:
            on_failure = settings.env_choice(ENV_ON_FAILURE, POLICIES, default=None)
        else:
            on_failure = settings.choice("on_failure", on_failure, POLICIES)
        _instance = _create(model or os.environ.get(ENV_MODEL), store, registry, on_failure, default_model)
        _instance_pid = pid
        return _instance


def set_embedding_manager(manager: EmbeddingManager) -> None:
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
        if os.environ.get(ENV_NO_SERVICE_SAID) == str(os.getpid()):  # ours, not a parent's: say it again
            del os.environ[ENV_NO_SERVICE_SAID]


def _create(
    model: str | None,
    store: str | Path | None,
    registry: str | Path | None,
    on_failure: str | None,
    default_model: str = DEFAULT_MODEL,
) -> EmbeddingManager:
    registry = registry or os.environ.get(ENV_REGISTRY)
    if store is None:  # inside a Ray task or actor: its node's service (embedshare.ray)
        ray_manager = _ray_node_manager(model, on_failure, registry)
        if ray_manager is not None:
            return ray_manager
    store_path = Path(store).expanduser() if store else default_store()
    policy = on_failure or "local"  # EMBEDSHARE_ON_FAILURE is already read into on_failure
    address = os.environ.get(ENV_ADDRESS) or str(StoreLayout(store_path).socket)
    if address.startswith(TCP_SCHEME) or Path(address).exists():
        try:
            return SharedEmbeddingManager(address, model=model, on_failure=on_failure, registry=registry)
        except ServiceUnavailable as exc:
            reason = str(exc)
            if policy != "local":
                return _restarted(address, store_path, model, on_failure, registry, policy, exc)
    else:
        reason = f"no socket at {address}"
        if policy != "local":
            return _restarted(
                address,
                store_path,
                model,
                on_failure,
                registry,
                policy,
                ServiceUnavailable(f"no embedshare service at {address}"),
            )
    layout = StoreLayout(store_path)
    model = model or recorded_model(layout) or default_model
    has_registry = registry or recorded_registry(layout)
    created = not layout.root.exists()
    manager = EmbeddingManager(store_path, model=model, registry=registry)
    hint = (
        f"embedshare serve --store {layout.root} --model {model}"
        + ("" if has_registry else " --registry FILE (or bundled)")
        + " --detach"
    )
    if _first_to_say_it(layout):
        # One channel only: a logging record as well would print it twice (logging's last-resort
        # handler writes warnings to stderr when nothing is configured).
        warn_user(_no_service_message(reason, layout, hint, created), NoServiceWarning)
    return manager


def _no_service_message(reason: str, layout: StoreLayout, hint: str, created: bool) -> str:
    """What happened, and what to change; said once a run (see ``_first_to_say_it``)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    who = (
        f"this worker (pid {os.getpid()}) and every other worker of pid {parent.pid} each load a model of "
        "their own (said once for all of them)"
        if parent is not None
        else f"this process (pid {os.getpid()}) builds its own local embedding manager, and so will every "
        "process it starts that calls get_embedding_manager() (each pool worker loads a model of its own)"
    )
    new_store = (
        f" The store folder {layout.root} did not exist: it was created, empty (a mistyped store= or ${ENV_STORE}?)."
        if created
        else ""
    )
    return (
        f"no embedshare service is running ({reason}); {who}.{new_store} To share one model, start the "
        f"service first with `{hint}` (or `with EmbeddingService(...)` around the workers), or run the "
        "tasks with embedshare.SharedPool, which starts it."
    )


def _first_to_say_it(layout: StoreLayout) -> bool:
    """True in one process of a run: not in a child of a process that said it (it inherits
    ``EMBEDSHARE_NO_SERVICE_SAID``), and in the first only of a pool's workers (their parent's
    pid and start time, kept in the store's ``run/no-service-said``)."""
    import multiprocessing

    if os.environ.get(ENV_NO_SERVICE_SAID):
        return False
    os.environ[ENV_NO_SERVICE_SAID] = str(os.getpid())  # for the processes this one starts
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return True
    import fcntl

    import psutil

    try:
        run = f"{parent.pid} {psutil.Process(parent.pid).create_time()}".encode()
        fd = os.open(layout.make_private_run_dir() / "no-service-said", os.O_RDWR | os.O_CREAT, 0o600)
    except (OSError, psutil.Error):
        return True  # cannot tell: better said twice than never
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.read(fd, 256) == run:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, run, 0)
        return True
    finally:
        os.close(fd)


def _restarted(
    address: str,
    store: Path,
    model: str | None,
    on_failure: str | None,
    registry: str | Path | None,
    policy: str,
    exc: ServiceUnavailable,
) -> EmbeddingManager:
    """No service answered and the policy is not ``local``: never a process-own model.

    ``restart`` (pool workers, processes under an owning EmbeddingService) waits for the
    store's service or starts it as it last ran (the store's lock: only one process does),
    then attaches; ``error`` raises.
    """
    if policy == "error" or address.startswith(TCP_SCHEME):
        raise exc
    from .service.launcher import restart_service

    socket_path = Path(address)
    if socket_path.name == "service.sock" and socket_path.parent.name == "run":
        store = socket_path.parent.parent  # EMBEDSHARE_ADDRESS names the store to restart
    service = restart_service(store)
    return SharedEmbeddingManager(service.address, model=model, on_failure=on_failure, registry=registry)


def _ray_node_manager(
    model: str | None, on_failure: str | None, registry: str | Path | None
) -> EmbeddingManager | None:
    """The node's manager in a Ray worker (a task or an actor), else None.

    Ray is never imported here: a process that has not imported it is not a Ray worker, and
    pays nothing. ``EMBEDSHARE_RAY=0`` turns this off.
    """
    if "ray" not in sys.modules or os.environ.get(ENV_RAY) == "0":
        return None
    ray_source = importlib.import_module(RAY_MANAGER)
    if not ray_source.in_ray_worker():
        return None
    manager: EmbeddingManager = ray_source.RayEmbeddingManager(model=model, on_failure=on_failure, registry=registry)
    return manager
