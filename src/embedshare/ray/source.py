"""The manager of a Ray task or actor: its node's service, the index from the object store.

``get_embedding_manager()`` returns a :class:`RayEmbeddingManager` in any Ray worker process
(a task or an actor): an ``EmbeddingManager`` whose source is a :class:`RayNodeSource` under
the failure policy (``sources/failover.py``). Cache hits are LMDB reads in the worker and
misses are batched by the node's service, as on one machine, plus:

- the tool index comes from Ray's object store (one copy per node, read in place);
- the registry a caller asks for (``registry=`` or ``EMBEDSHARE_REGISTRY``) is checked against
  the index the deployment serves (its manifest's content hash), not the node service's
  ``hello``: on Ray the node services serve no registry of their own;
- a miss that another node owns goes to this node's service actor (``fetch``), which gets it
  from the owner once and caches it on this node: distinct texts are embedded once in the
  whole cluster.

When the node's service or its actor is gone, ``on_failure`` decides as on one machine, and
the default is ``restart``: the coordinator starts the node's actor again (a new one if it
died), which starts the service again, and the call is retried.
"""

from __future__ import annotations

import sys
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..client.config import CLIENT_DEFAULTS, ClientConfig
from ..env import ENV_ON_FAILURE
from ..errors import RegistryMismatchError, ServiceUnavailable
from ..manager import EmbeddingManager
from ..registry import Registry, load_registry
from ..sources.base import EmbedFn, Progress, ServiceBackedSource
from ..sources.failover import POLICIES, FailoverSource
from ..sources.service import ServiceSource
from ..store import ToolIndex
from ..store.record import describe_registry
from ..util.counters import Counters
from .config import owner_of


def in_ray_worker() -> bool:
    """True in a Ray task or actor process; never imports Ray itself."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        if not ray.is_initialized():
            return False
        return bool(ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    except Exception:  # an odd or half-initialised Ray: not ours to use
        return False


class RayNodeSource(ServiceBackedSource):
    """Misses of a Ray worker: the texts this node owns from its service's socket, the others
    through its service actor (``fetch``), from the nodes that own them."""

    mode = "ray"

    def __init__(self, node_id: str, info: dict[str, Any], service: ServiceSource, index: ToolIndex | None) -> None:
        self.node_id = node_id
        self.service = service
        self.model_id, self.dim = service.model_id, service.dim
        self.layout, self.cache = service.layout, service.cache
        self.index = index
        self._actor_lost = False  # a call to the node actor failed: only a revival helps
        self._counters = Counters("remote_requests", "remote_texts")
        self.take(info)

    def take(self, info: dict[str, Any]) -> None:
        """Bind to the node actor the coordinator gave (after a start or a restart)."""
        self.actor = info["handle"]
        self.ring: list[str] = list(info["ring"])
        self.incarnation: str = info["incarnation"]
        self._actor_lost = False

    def rebind(self, service: ServiceSource, index: ToolIndex | None) -> None:
        """Another deployment (another store root) took over: its node service and index."""
        self.service.close()
        self.service = service
        self.layout, self.cache = service.layout, service.cache
        self.index = index

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        here = self.node_id
        remote = [i for i, key in enumerate(keys) if owner_of(key, self.ring) not in ("", here)]
        if not remote:
            return self.service.compute(keys, texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        remote_texts = [texts[i] for i in remote]
        ref = self.actor.fetch.remote(remote_texts)  # in flight while the local part runs
        if len(remote) < len(texts):
            is_remote = np.zeros(len(texts), dtype=bool)
            is_remote[remote] = True
            local = np.flatnonzero(~is_remote)
            out[local] = self.service.compute([keys[i] for i in local], [texts[i] for i in local])
        out[remote] = self._remote_vectors(ref, remote_texts)
        return out

    def _remote_vectors(self, ref: Any, texts: list[str]) -> np.ndarray:
        from .node import RETRYABLE

        try:
            # Waited on as a future, not with ray.get: ray.get would tell the raylet that this
            # task is blocked, which lends its CPU to another task and makes Ray start extra
            # worker processes (each ~50 MB) for a wait of milliseconds.
            vectors = np.asarray(ref.future().result(timeout=self.service.request_timeout), dtype=np.float32)
        except RETRYABLE as exc:
            self._actor_lost = True
            raise ServiceUnavailable(f"the node's service actor failed: {type(exc).__name__}") from None
        except FutureTimeout:
            raise ServiceUnavailable(
                f"the node's service actor did not answer within {self.service.request_timeout} s"
            ) from None
        if vectors.shape != (len(texts), self.dim):
            raise ServiceUnavailable(f"the node's service actor answered {vectors.shape} for {len(texts)} texts")
        self._counters.add(remote_requests=1, remote_texts=len(texts))
        return vectors

    def connected(self) -> bool:
        return not self._actor_lost and self.service.connected()

    def reconnect(self, failed: Any = None) -> bool:
        return not self._actor_lost and self.service.reconnect(failed)

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        return self.index

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        check_deployment_registry(name, registry, deployment_registry(self.index))
        assert self.index is not None  # a deployment that serves a registry has its index
        return self.index

    def no_index_advice(self) -> str:
        return (
            "the embedshare deployment on this Ray cluster serves no tool registry: call "
            "embedshare.ray.init(model=..., registry='bundled' or a JSON file) in the driver once "
            "(later sessions on the same store_root reuse it), or set EMBEDSHARE_REGISTRY in the "
            "job's runtime_env"
        )

    def stats(self) -> dict[str, Any]:
        return {
            **self.service.stats(),
            **self._counters.snapshot(),
            "node_id": self.node_id,
            "incarnation": self.incarnation,
            "index_type": type(self.index).__name__,
        }

    def close(self) -> None:
        self.service.close()


class RayEmbeddingManager(EmbeddingManager):
    """A worker's manager on a Ray cluster; the API of ``EmbeddingManager``."""

    def __init__(
        self,
        model: str | None = None,
        *,
        on_failure: str | None = None,
        namespace: str | None = None,
        request_timeout: float = CLIENT_DEFAULTS.request_timeout,
        connect_timeout: float = CLIENT_DEFAULTS.connect_timeout,
        search_cache_size: int = 1024,
        registry: str | Path | None = None,
    ) -> None:
        import ray

        from . import api

        settings.whole_number("search_cache_size", search_cache_size, 0)
        # Loaded before anything is deployed: a missing or bad file is a RegistryError, here.
        wanted = None if registry is None else load_registry(registry)
        policy = settings.choice(
            "on_failure", on_failure or settings.env_choice(ENV_ON_FAILURE, POLICIES, default="restart"), POLICIES
        )
        self._namespace = namespace or api.current_namespace()
        self._coordinator = api.coordinator(self._namespace, create=True)
        self.node_id: str = ray.get_runtime_context().get_node_id()
        # kept for the reconnections after a restart
        self._client = ClientConfig(request_timeout=request_timeout, connect_timeout=connect_timeout)
        info = self._call_coordinator("attach", self.node_id)
        for attempt in range(3):
            try:
                service = ServiceSource(info["address"], model, config=self._client)
                break
            except ServiceUnavailable:
                if attempt == 2 or policy != "restart":
                    raise
                info = {**self._call_coordinator("node", self.node_id, True), "index": info["index"]}
        self._model = model
        self._wanted, self._wanted_name = wanted, str(registry)
        self._node = RayNodeSource(self.node_id, info, service, _object_store_index(info["index"]))
        source = FailoverSource(self._node, policy, revive=self._revive)
        try:
            super().__init__(source=source, search_cache_size=search_cache_size)
            self._check_wanted_registry()
        except BaseException:
            source.close()
            raise

    def __repr__(self) -> str:
        return f"RayEmbeddingManager(node={self.node_id[:8]}, address={self.address!r}, model={self.model_id!r})"

    @property
    def address(self) -> str:
        return self._node.service.address

    @property
    def incarnation(self) -> str:
        return self._node.incarnation

    def _call_coordinator(self, method: str, *args: Any) -> dict[str, Any]:
        """A call to the coordinator; looked up again (or recreated) once if it is gone.

        Waited on as a future, like a remote miss (see ``RayNodeSource._remote_vectors``).
        """
        from ray.exceptions import RayActorError

        from . import api

        try:
            reply: dict[str, Any] = getattr(self._coordinator, method).remote(*args).future().result()
        except RayActorError:
            self._coordinator = api.coordinator(self._namespace, create=True)
            reply = getattr(self._coordinator, method).remote(*args).future().result()
        return reply

    def _check_wanted_registry(self) -> None:
        """The registry this worker asked for must be the one its deployment serves."""
        if self._wanted is not None:
            check_deployment_registry(self._wanted_name, self._wanted, deployment_registry(self._node.index))

    def _revive(self) -> bool:
        """The ``restart`` policy on Ray: the coordinator starts this node's actor and service
        again; a new deployment (another store root) is taken over whole."""
        info = self._call_coordinator("node", self.node_id, True)
        self._node.take(info)
        if info["address"] != self._node.service.address:
            index = _object_store_index(self._call_coordinator("attach", self.node_id)["index"])
            self._node.rebind(ServiceSource(info["address"], self._model, config=self._client), index)
            # Every copy of the store's handles is the new deployment's; the old cache is let go
            # (released when the last thread reading it is done with it).
            for holder in (self._source, self):
                holder.cache, holder.layout = self._node.cache, self._node.layout
            self._check_wanted_registry()  # never another registry's answers
            if index is not None:
                self.use_index(index)
            else:  # it serves none: searches say so, rather than search the old deployment's
                with self._lock:
                    self._index, self._index_resolved = None, False
                    self._search_cache.clear()
        return True


def _object_store_index(refs: list[Any]) -> ToolIndex | None:
    """The deployment's tool index, read in place from Ray's object store ([] if none)."""
    if not refs:
        return None
    import ray

    from .index import ObjectStoreToolIndex

    return ObjectStoreToolIndex(ray.get(refs[0]))


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
            "(after embedshare.ray.shutdown() if a deployment runs)"
        )
    raise RegistryMismatchError(
        f"the embedshare deployment on this Ray cluster serves "
        f"{describe_registry(served.get('hash'), served.get('source'))}, not {what}: use the served one "
        f"(ask for no registry), or redeploy with this one: embedshare.ray.shutdown(), then "
        f"embedshare.ray.init(model=..., registry={name!r}) in the driver"
    )
