"""The driver's side: deploy embedshare on a Ray cluster, inspect it, take it down.

    import ray, embedshare.ray
    ray.init(address="auto")
    deployment = embedshare.ray.init(model="local", registry="bundled")   # optional
    ray.get([task.remote(t) for t in tasks])   # tasks call get_embedding_manager() as always
    print(deployment.texts_embedded())         # the model's texts across the whole cluster
    embedshare.ray.shutdown()

``init`` is optional: the first ``get_embedding_manager()`` in a Ray worker deploys it on
demand with the settings of its environment (``EMBEDSHARE_MODEL``, ``EMBEDSHARE_REGISTRY``,
``EMBEDSHARE_RAY_STORE``; pass them with ``runtime_env={"env_vars": ...}``). ``init`` starts
every node's service and builds the index up front, and checks the settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray

from ..env import ENV_MODEL, ENV_REGISTRY
from ..errors import SettingError
from ..service.config import ServiceConfig, service_config
from .config import default_store_root
from .config import namespace as env_namespace
from .coordinator import create_coordinator, get_coordinator, make_settings


def current_namespace() -> str:
    return env_namespace()


def coordinator(namespace: str | None = None, create: bool = False) -> Any:
    """The coordinator of the deployment in ``namespace``; created with the environment's
    settings if ``create`` and none runs."""
    namespace = namespace or current_namespace()
    try:
        return get_coordinator(namespace)
    except ValueError:
        if not create:
            raise
    config = service_config(fallback_store=default_store_root, model=os.environ.get(ENV_MODEL) or None)
    settings = make_settings(config, namespace=namespace)
    return create_coordinator(settings, _registry_arg(os.environ.get(ENV_REGISTRY)))


def _registry_arg(registry: str | Path | list[Any] | dict[str, Any] | None) -> Any:
    """What the coordinator gets: ``bundled``, or the registry's JSON (read here, on the
    driver, so a file need not exist on the coordinator's node)."""
    if registry is None or isinstance(registry, (list, dict)) or str(registry) == "bundled":
        return registry
    from ..registry import load_registry

    load_registry(registry)  # a bad file is the caller's error, here and now
    return json.loads(Path(registry).read_text(encoding="utf-8"))


class RayDeployment:
    """A handle on embedshare's actors in a Ray cluster (the coordinator and node services)."""

    def __init__(self, handle: Any, namespace: str) -> None:
        self.coordinator = handle
        self.namespace = namespace

    def settings(self) -> dict[str, Any]:
        return ray.get(self.coordinator.get_settings.remote())

    def stats(self) -> dict[str, Any]:
        """Every node's service stats (``service``) and actor counters (``actor``)."""
        return ray.get(self.coordinator.stats.remote())

    def texts_embedded(self, stats: dict[str, Any] | None = None) -> int:
        """Texts the model embedded, summed over every node's service."""
        stats = stats or self.stats()
        return sum(int((n.get("service") or {}).get("texts_embedded", 0)) for n in stats["nodes"].values())

    def model_calls(self, stats: dict[str, Any] | None = None) -> int:
        """Batches the model ran, summed over every node's service."""
        stats = stats or self.stats()
        return sum(int((n.get("service") or {}).get("model_calls", 0)) for n in stats["nodes"].values())

    def node_handles(self) -> dict[str, Any]:
        return ray.get(self.coordinator.nodes.remote())

    def node_memory(self, roles: dict[int, str] | None = None) -> dict[str, dict[str, Any]]:
        """PSS of every process of every node that runs a service, measured on that node."""
        handles = self.node_handles()
        refs = {nid: h.node_memory.remote(roles or {}) for nid, h in handles.items()}
        return {nid: ray.get(ref) for nid, ref in refs.items()}

    def shutdown(self) -> None:
        """Stop every node's service and actor, then the coordinator."""
        try:
            ray.get(self.coordinator.shutdown.remote(), timeout=120)
        finally:
            ray.kill(self.coordinator)


def init(
    model: str | None = None,
    registry: str | Path | list[Any] | dict[str, Any] | None = None,
    *,
    config: ServiceConfig | None = None,
    store_root: str | Path | None = None,
    namespace: str | None = None,
    nodes: list[str] | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    threads: int | None = None,
    start: bool = True,
    start_timeout: float = 600.0,
) -> RayDeployment:
    """Deploy embedshare on the connected Ray cluster (or join the running deployment).

    ``store_root``: a node-local folder; each node keeps its store (cache, socket) in
    ``<store_root>/node-<host>-<k>``, the same in every session (``config.node_key``).
    ``nodes``: the ring of nodes that compute texts (default:
    every alive node with CPUs). ``start``: start every ring node's service and build the
    index now rather than on first use. A deployment already running with another model or
    store root is an error: call ``shutdown()`` first.

    The node services' settings are ``config`` (a ``ServiceConfig``, as for one machine's
    ``EmbeddingService``) or the keywords ``model``, ``store_root``, ``max_batch``,
    ``max_wait_ms`` and ``threads``, not both (a ``SettingError`` names them). On Ray the
    config's ``store`` is the store root, and its ``registry`` the deployment's (``registry``).
    """
    config = service_config(
        config,
        store=store_root,
        fallback_store=default_store_root,
        model=model,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        threads=threads,
    )
    if config.registry is not None:
        if registry is not None:
            raise SettingError("give the deployment's registry in config= or as registry=, not both")
        registry = config.registry
    if not ray.is_initialized():
        raise RuntimeError("connect to a Ray cluster first: ray.init(address=...)")
    namespace = namespace or current_namespace()
    settings = make_settings(config, namespace=namespace, ring=nodes, start_timeout=start_timeout)
    handle = create_coordinator(settings, _registry_arg(registry))
    running = ray.get(handle.get_settings.remote())
    for key, want, have in (
        ("model", config.model, running["service"]["model"]),
        ("store_root", settings["store_root"], running["store_root"]),
    ):
        if have != want:
            raise ValueError(
                f"an embedshare deployment already runs in namespace {namespace!r} with "
                f"{key}={have!r}, not {want!r}; call embedshare.ray.shutdown() first"
            )
    deployment = RayDeployment(handle, namespace)
    if start:
        ray.get([handle.node.remote(nid) for nid in running["ring"]])
        ray.get(handle.index.remote())
    return deployment


def deployment(namespace: str | None = None) -> RayDeployment:
    """The running deployment (ValueError if there is none)."""
    namespace = namespace or current_namespace()
    return RayDeployment(get_coordinator(namespace), namespace)


def shutdown(namespace: str | None = None) -> bool:
    """Stop the deployment in ``namespace`` if one runs; returns whether one did."""
    try:
        current = deployment(namespace)
    except ValueError:
        return False
    current.shutdown()
    return True


__all__ = ["RayDeployment", "coordinator", "current_namespace", "deployment", "init", "shutdown"]
