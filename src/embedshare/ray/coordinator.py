"""The cluster's coordinator of embedshare on Ray: ``ClusterCoordinator``, and its settings.

``ClusterCoordinator`` (one per cluster, named ``embedshare-cluster``) holds the settings and
the ring, starts node services (``node.py``) on demand (``get_if_exists``: whoever asks first
creates it, nobody creates two), restarts a dead one, and builds the tool index once, through
the owners, and puts it into Ray's object store (it owns that object, so it lives as long as
the deployment, not as long as one driver).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import settings
from ..errors import NodeGone
from ..service.config import ServiceConfig
from .config import COORDINATOR_NAME, owner_of, registry_copy, service_name
from .node import RETRYABLE, NodeService, alive_nodes

log = logging.getLogger("embedshare.ray")

NODE_CONCURRENCY = 128  # threads of a node actor: worker fetches and other nodes' computes


def default_ring() -> list[str]:
    """The nodes that compute texts for the cluster: every alive node with CPUs."""
    return sorted(nid for nid, n in alive_nodes().items() if n.get("Resources", {}).get("CPU", 0) > 0)


def make_settings(
    config: ServiceConfig, *, namespace: str, ring: list[str] | None = None, start_timeout: float = 600.0
) -> dict[str, Any]:
    """What the coordinator and each node actor run with: plain data (it is an actor argument).

    ``service``: the fields of every node's ``ServiceConfig`` but two. Its ``store`` is the
    node's own, under ``store_root`` (which is ``config.store``), and its ``registry`` is none:
    the deployment's index is built once, through the owners, into the object store.
    """
    start_timeout = settings.seconds("start_timeout", start_timeout)
    ring = sorted(ring) if ring else default_ring()
    if not ring:
        raise RuntimeError("the Ray cluster has no alive node with CPUs to run embedshare services on")
    service = {name: value for name, value in dataclasses.asdict(config).items() if name not in ("store", "registry")}
    return {
        "service": service,
        "store_root": config.store,
        "namespace": namespace,
        "ring": ring,
        "start_timeout": float(start_timeout),
    }


def get_coordinator(namespace: str) -> Any:
    """The cluster's coordinator handle; ValueError if none runs."""
    return ray.get_actor(COORDINATOR_NAME, namespace=namespace)


def create_coordinator(settings: dict[str, Any], registry: Any) -> Any:
    """Get or create the cluster's coordinator (one per namespace; whoever comes first wins)."""
    here = ray.get_runtime_context().get_node_id()
    # @ray.remote made the class an ActorClass; ray's annotations keep the plain class.
    return ClusterCoordinator.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME,
        namespace=settings["namespace"],
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_concurrency=NODE_CONCURRENCY,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
    ).remote(settings, registry)


def load_registry_path(registry: str) -> str:
    """The file of a registry named by a string (``bundled`` or a path)."""
    from ..registry.loader import BUNDLED_REGISTRY, bundled_registry_path

    return str(bundled_registry_path()) if registry == BUNDLED_REGISTRY else registry


@ray.remote
class ClusterCoordinator:
    """The cluster's settings, ring, node services and tool index (see the module doc)."""

    def __init__(self, settings: dict[str, Any], registry: Any) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else self._kept_registry()
        self._nodes: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._index_ref: Any = None
        self.index_builds = 0
        self.node_starts: dict[str, int] = {}  # actors started per node (a restart adds one)
        self._incarnations: dict[str, set[str]] = {}

    def get_settings(self) -> dict[str, Any]:
        return {
            **self.settings,
            "registry": self.registry if isinstance(self.registry, (str, type(None))) else "<data>",
        }

    def pid(self) -> int:
        return os.getpid()

    def _node_lock(self, node_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(node_id, threading.Lock())

    def node(self, node_id: str, restart: bool = False) -> dict[str, Any]:
        """The service of ``node_id``, started if none runs; ``restart``: make sure it answers.

        Returns its ``info()`` and ``handle``. Raises NodeGone if the node is not alive.
        """
        with self._node_lock(node_id):
            handle = self._nodes.get(node_id)
            for attempt in range(8):
                if handle is None:
                    if node_id not in alive_nodes():
                        self._nodes.pop(node_id, None)
                        raise NodeGone(f"node {node_id} is not alive in the Ray cluster")
                    handle = NodeService.options(  # type: ignore[attr-defined]  # an ActorClass, as above
                        name=service_name(node_id),
                        namespace=self.settings["namespace"],
                        get_if_exists=True,
                        lifetime="detached",
                        num_cpus=0,
                        max_concurrency=NODE_CONCURRENCY,
                        max_restarts=-1,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                    ).remote(node_id, self.settings)
                try:
                    call = handle.ensure.remote() if restart or attempt else handle.info.remote()
                    info = ray.get(call, timeout=float(self.settings["start_timeout"]))
                except RETRYABLE as exc:
                    if getattr(exc, "actor_init_failed", False):  # it cannot start: say why
                        raise RuntimeError(f"the embedshare service of node {node_id} failed to start: {exc}") from None
                    # Dead (killed, or its process crashed): the GCS frees its name, and the
                    # next get_if_exists starts a new one on the node.
                    log.warning(
                        "the embedshare service of node %s is gone (%s); starting a new one",
                        node_id[:8],
                        type(exc).__name__,
                    )
                    handle = None
                    time.sleep(min(0.05 * 2**attempt, 2.0))  # let the GCS mark it dead
                    continue
                except GetTimeoutError:
                    raise RuntimeError(f"the embedshare service of node {node_id} did not start in time") from None
                seen = self._incarnations.setdefault(node_id, set())
                if info["incarnation"] not in seen:
                    seen.add(info["incarnation"])
                    self.node_starts[node_id] = len(seen)
                self._nodes[node_id] = handle
                return {**info, "handle": handle}
            raise RuntimeError(f"the embedshare service of node {node_id} keeps failing")

    def attach(self, node_id: str) -> dict[str, Any]:
        """What a worker on ``node_id`` needs: its node's service and the index."""
        info = self.node(node_id)
        return {**info, "index": self.index(), "namespace": self.settings["namespace"]}

    def index(self) -> list[Any]:
        """``[ref]`` of the tool index in the object store (built once, on first use), or []."""
        if self.registry is None:
            return []
        with self._index_lock:
            if self._index_ref is None:
                self._index_ref = ray.put(self._build_index())
                self.index_builds += 1
            return [self._index_ref]

    def _kept_registry(self) -> Any:
        """The registry an earlier deployment on this store root served (see ``_keep``), or None."""
        try:
            return json.loads(registry_copy(self.settings["store_root"]).read_text())
        except (OSError, ValueError):
            return None

    def _keep(self, registry: Any) -> None:
        """Keep the registry beside the node stores: a later session's tasks need not name it."""
        from ..store.files import write_atomic

        path = registry_copy(self.settings["store_root"])
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (
            registry
            if isinstance(registry, (list, dict))
            else json.loads(Path(load_registry_path(registry)).read_text(encoding="utf-8"))
        )
        write_atomic(path, json.dumps(data))

    def _build_index(self) -> dict[str, Any]:
        from ..registry import load_registry
        from ..store.cache import cache_key
        from ..store.index import index_folder_name
        from ..store.index_build import build_index
        from .index import index_payload

        registry = load_registry(self.registry)
        self._keep(self.registry)
        ring = list(self.settings["ring"])
        first = self.node(ring[0])
        model_id, dim = first["model_id"], int(first["dim"])

        def embed(texts: list[str]) -> np.ndarray:
            by_owner: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                by_owner.setdefault(owner_of(cache_key(model_id, text), ring), []).append(i)
            out = np.empty((len(texts), dim), dtype=np.float32)
            refs = {
                owner: self.node(owner)["handle"].compute.remote([texts[i] for i in rows])
                for owner, rows in by_owner.items()
            }
            for owner, ref in refs.items():
                out[by_owner[owner]] = ray.get(ref)
            return out

        with tempfile.TemporaryDirectory(prefix="embedshare-ray-index-") as tmp:
            folder = Path(tmp) / index_folder_name(registry.content_hash, model_id)
            build_index(registry, embed, model_id, dim, folder, batch_size=1024)
            return index_payload(folder)

    def nodes(self) -> dict[str, Any]:
        return dict(self._nodes)

    def stats(self) -> dict[str, Any]:
        """Every node service's stats, and the coordinator's own counters."""
        refs = {nid: handle.stats.remote() for nid, handle in self._nodes.items()}
        nodes = {}
        for nid, ref in refs.items():
            try:
                nodes[nid] = ray.get(ref, timeout=60)
            except (*RETRYABLE, GetTimeoutError) as exc:
                nodes[nid] = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "nodes": nodes,
            "index_builds": self.index_builds,
            "node_starts": dict(self.node_starts),
            "ring": list(self.settings["ring"]),
            "coordinator_pid": os.getpid(),
        }

    def shutdown(self) -> None:
        """Stop every node's service and its actor."""
        handles = dict(self._nodes)
        refs = [h.stop.remote() for h in handles.values()]
        for ref in refs:
            try:
                ray.get(ref, timeout=60)
            except (*RETRYABLE, GetTimeoutError):
                pass
        for h in handles.values():
            ray.kill(h)
        self._nodes.clear()
