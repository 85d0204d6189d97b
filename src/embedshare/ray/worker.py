"""The manager of a Ray task or actor: its node's service, the index from the object store.

``get_embedding_manager()`` returns a :class:`RayEmbeddingManager` in any Ray worker process
(a task or an actor). It is the single-machine client (``SharedEmbeddingManager``) bound to
the node's service socket, so cache hits are LMDB reads in the worker and misses are batched
by the node's service, plus two things:

- the tool index comes from Ray's object store (one copy per node, read in place);
- the registry a caller asks for (``registry=`` or ``EMBEDSHARE_REGISTRY``) is checked
  against the index the deployment serves (its manifest's content hash), not the node
  service's ``hello``: on Ray the node services serve no registry of their own;
- a miss that another node owns goes to this node's service actor (``fetch``), which gets it
  from the owner once and caches it on this node: distinct texts are embedded once in the
  whole cluster.

When the node's service or its actor is gone, ``on_failure`` decides as on one machine, and
the default is ``restart``: the coordinator starts the node's actor again (a new one if it
died), which starts the service again, and the call is retried.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..service.client import POLICIES, SharedEmbeddingManager
from ..client.connection import ServiceConnection, ServiceUnavailable
from ..env import ENV_ON_FAILURE
from ..store import EmbeddingCache
from ..store.record import RegistryMismatchError, describe_registry
from .config import owner_of


def in_ray_worker() -> bool:
    """True in a Ray task or actor process; never imports Ray itself."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        if not ray.is_initialized():
            return False
        return ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - an odd or half-initialised Ray: not ours to use
        return False


class RayEmbeddingManager(SharedEmbeddingManager):
    """A worker's manager on a Ray cluster; the API of ``EmbeddingManager``."""

    mode = "ray"

    def __init__(
        self,
        model: str | None = None,
        *,
        on_failure: str | None = None,
        namespace: str | None = None,
        request_timeout: float = 600.0,
        connect_timeout: float = 5.0,
        search_cache_size: int = 1024,
        registry: str | Path | None = None,
    ) -> None:
        import ray

        from ..registry import load_registry
        from . import api

        # Loaded before anything is deployed: a missing or bad file is a RegistryError, here.
        self._wanted_registry = None if registry is None else (str(registry), load_registry(registry))
        self._namespace = namespace or api.current_namespace()
        self.node_id: str = ray.get_runtime_context().get_node_id()
        self._coordinator = api.coordinator(self._namespace, create=True)
        info = self._call_coordinator("attach", self.node_id)
        on_failure = on_failure or settings.env_choice(ENV_ON_FAILURE, POLICIES, default="restart")
        for attempt in range(3):
            self._take(info)
            try:
                super().__init__(info["address"], model=model, on_failure=on_failure,
                                 request_timeout=request_timeout, connect_timeout=connect_timeout,
                                 search_cache_size=search_cache_size)  # registry: see _load_index
                break
            except ServiceUnavailable:
                if attempt == 2 or on_failure != "restart":
                    raise
                info = {**self._call_coordinator("node", self.node_id, True), "index": info["index"]}
        self._counters.update(remote_requests=0, remote_texts=0)
        try:
            self._load_index(info["index"])
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"RayEmbeddingManager(node={self.node_id[:8]}, address={self.address!r}, model={self.model_id!r})"

    # -- binding --------------------------------------------------------------------------

    def _take(self, info: dict[str, Any]) -> None:
        self._node_actor = info["handle"]
        self._ring: list[str] = list(info["ring"])
        self.incarnation = info["incarnation"]

    def _load_index(self, index: list[Any]) -> None:
        import ray

        from .index import ObjectStoreToolIndex

        if index:
            self._index = ObjectStoreToolIndex(ray.get(index[0]))
            with self._lock:
                self._search_cache.clear()
        self.served_registry = deployment_registry(self._index if index else None)
        if self._wanted_registry is not None:
            check_deployment_registry(*self._wanted_registry, self.served_registry)

    def _call_coordinator(self, method: str, *args: Any) -> dict[str, Any]:
        """A call to the coordinator; looked up again (or recreated) once if it is gone.

        Waited on as a future, like a remote miss (see ``_remote_vectors``).
        """
        from ray.exceptions import RayActorError

        from . import api

        try:
            return getattr(self._coordinator, method).remote(*args).future().result()
        except RayActorError:
            self._coordinator = api.coordinator(self._namespace, create=True)
            return getattr(self._coordinator, method).remote(*args).future().result()

    # -- the miss path --------------------------------------------------------------------

    def _compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        if self._fallback is not None:
            return self._fallback._compute(keys, texts)
        here = self.node_id
        remote = [i for i, key in enumerate(keys) if owner_of(key, self._ring) not in ("", here)]
        if not remote:
            return super()._compute(keys, texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        remote_texts = [texts[i] for i in remote]
        ref = self._node_actor.fetch.remote(remote_texts)  # in flight while the local part runs
        if len(remote) < len(texts):
            is_remote = np.zeros(len(texts), dtype=bool)
            is_remote[remote] = True
            local = np.flatnonzero(~is_remote)
            out[local] = super()._compute([keys[i] for i in local], [texts[i] for i in local])
        out[remote] = self._remote_vectors(ref, remote_texts)
        return out

    def _remote_vectors(self, ref: Any, texts: list[str]) -> np.ndarray:
        from concurrent.futures import TimeoutError as FutureTimeout

        from .node import RETRYABLE

        failures = 0
        while True:
            if self._fallback is not None:
                return self._fallback.get_embeddings(texts)
            try:
                # Waited on as a future, not with ray.get: ray.get would tell the raylet that
                # this task is blocked, which lends its CPU to another task and makes Ray start
                # extra worker processes (each ~50 MB) for a wait of milliseconds.
                vectors = np.asarray(ref.future().result(timeout=self.request_timeout), dtype=np.float32)
            except RETRYABLE as exc:
                failures += 1
                self._handle_failure(ServiceUnavailable(f"the node's service actor failed: {type(exc).__name__}"),
                                     failures)
                if self._fallback is None:
                    ref = self._node_actor.fetch.remote(texts)
                continue
            except FutureTimeout:
                raise ServiceUnavailable(
                    f"the node's service actor did not answer within {self.request_timeout} s") from None
            if vectors.shape != (len(texts), self.dim):
                raise ServiceUnavailable(f"the node's service actor answered {vectors.shape} for {len(texts)} texts")
            self._count(remote_requests=1, remote_texts=len(texts))
            return vectors

    def _handle_failure(self, exc: ServiceUnavailable, failures: int,
                        failed: ServiceConnection | None = None) -> None:
        """The failure policy of one machine; ``restart`` restarts the node's actor.

        As on one machine, a thread that failed on a connection another thread has already
        replaced retries on the new one and never closes it.
        """
        if self.on_failure != "restart" or failures > 5:
            super()._handle_failure(exc, failures, failed)  # error: raise; local: switch over
            return
        with self._conn_lock:
            current = self._conn
            if failed is not None and current is not None and current is not failed and current.alive:
                return  # another thread already reconnected after the failure we saw
            self._say_once(f"embedshare node service lost ({exc}); restarting it")
            info = self._call_coordinator("node", self.node_id, True)
            self._count(restarts=1)
            self._take(info)
            if info["address"] != self.address:  # a new deployment (another store root)
                if current is not None:
                    current.close()
                self._conn = None
                self._rebind(info)
            elif current is None or current is failed or not current.alive:
                if current is not None:
                    current.close()
                self._conn = None
                self._connect()
                self._count(reconnects=1)

    def _no_index_advice(self) -> str:
        return ("the embedshare deployment on this Ray cluster serves no tool registry: call "
                "embedshare.ray.init(model=..., registry='bundled' or a JSON file) in the driver once "
                "(later sessions on the same store_root reuse it), or set EMBEDSHARE_REGISTRY in the "
                "job's runtime_env")

    def _rebind(self, info: dict[str, Any]) -> None:
        self.address = info["address"]
        hello = self._connect()
        self.store = Path(hello["cache"]).parent
        self.cache.close()
        self.cache = EmbeddingCache(hello["cache"], self.model_id, self.dim)
        self._load_index(self._call_coordinator("attach", self.node_id)["index"])

    def stats(self, latency_samples: bool = False) -> dict[str, Any]:
        stats = super().stats(latency_samples)
        stats.update(node_id=self.node_id, incarnation=self.incarnation, index_type=type(self._index).__name__)
        return stats


def deployment_registry(index: Any) -> dict[str, Any] | None:
    """What the deployment serves, from its index's manifest (``hash``, ``source``), or None."""
    if index is None:
        return None
    return {"hash": index.manifest["registry_hash"], "source": index.manifest.get("registry_source")}


def check_deployment_registry(name: str, asked: Any, served: dict[str, Any] | None) -> None:
    """Raise unless ``asked`` (the loaded registry named ``name``) is the one the deployment serves.

    The same rule as one machine's ``check_served_registry`` (the same content hash, else
    RegistryMismatchError naming both), with the advice of Ray: the registry is the
    deployment's, given to ``embedshare.ray.init``.
    """
    if served is not None and served.get("hash") == asked.content_hash:
        return
    what = describe_registry(asked.content_hash, name)
    if served is None:
        raise RegistryMismatchError(
            f"the embedshare deployment on this Ray cluster serves no tool registry, not {what}: "
            f"deploy it with this one, in the driver: embedshare.ray.init(model=..., registry={name!r}) "
            "(after embedshare.ray.shutdown() if a deployment runs)")
    raise RegistryMismatchError(
        f"the embedshare deployment on this Ray cluster serves "
        f"{describe_registry(served.get('hash'), served.get('source'))}, not {what}: use the served one "
        f"(ask for no registry), or redeploy with this one: embedshare.ray.shutdown(), then "
        f"embedshare.ray.init(model=..., registry={name!r}) in the driver")
