"""The service of one node of a Ray cluster: ``NodeService``, an actor per node.

``NodeService`` (one per node, named ``embedshare-service-<node_id>``, pinned to its node with
a hard node affinity) starts and owns the node's ordinary embedshare service: a separate
interpreter that listens on a Unix socket in a node-local store, holds the model and writes
the node's LMDB cache. Workers of the node attach to that socket exactly as on one machine
(zero-copy cache reads, misses batched across workers). The actor adds what one machine
does not need:

- ``compute(texts)``: texts this node *owns* (rendezvous hashing of the cache key over the
  ring of nodes), asked for by other nodes; its service computes each once and caches it.
- ``fetch(texts)``: misses of this node's workers that another node owns: asked of the owner
  once per text (single-flight on the node), written into this node's cache, returned.

The cluster's coordinator (``coordinator.py``) creates these actors and restarts dead ones.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnschedulableError, RayActorError

from ..client.connection import ServiceConnection
from ..client.protocol import HelloReply
from ..errors import NodeGone, ServiceStartError, ServiceUnavailable
from ..service.config import ServiceConfig
from ..service.spawn import read_log_tail, spawn_service
from ..sources.misspath import MissPath
from ..sources.service import request_chunks
from ..store import EmbeddingCache, StoreLayout
from ..util.counters import Counters
from ..util.singleflight import Promise, SingleFlight
from .config import COORDINATOR_NAME, node_key, node_store, owner_of

log = logging.getLogger("embedshare.ray")

# Failures after which asking again (a new or restarted actor) can succeed.
RETRYABLE = (RayActorError, ActorUnschedulableError)


def alive_nodes() -> dict[str, dict[str, Any]]:
    """Alive nodes of the cluster by node id (from the GCS)."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def _vectors(reply: dict[str, Any], n: int) -> np.ndarray:
    dim = int(reply["dim"])
    vectors = np.frombuffer(reply["vectors"], dtype=np.float32)
    if vectors.size != n * dim:
        raise ServiceUnavailable(f"the service answered {vectors.size} floats for {n} texts of {dim} dims")
    return vectors.reshape(n, dim)


@ray.remote
class NodeService:
    """This node's embedshare service (see the module doc). Created by the coordinator."""

    def __init__(self, node_id: str, settings: dict[str, Any]) -> None:
        here = ray.get_runtime_context().get_node_id()
        if here != node_id:  # the hard node affinity makes this impossible; say so if it is not
            raise RuntimeError(f"the service of node {node_id} was placed on node {here}")
        self.node_id = node_id
        self.settings = settings
        self.ring: list[str] = list(settings["ring"])
        hosts = {nid: n.get("NodeManagerHostname") or "" for nid, n in alive_nodes().items()}
        self.layout = StoreLayout(node_store(settings["store_root"], node_key(node_id, hosts)))
        self.config = ServiceConfig(store=str(self.layout.root), **settings["service"])
        self.incarnation = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()  # starts and restarts of the service process
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._conn: ServiceConnection | None = None
        self._hello: HelloReply | None = None  # the service's, once started
        self._cache: EmbeddingCache | None = None
        self._misses: MissPath | None = None  # asks the owners, writes this node's cache
        self._owners: dict[str, Any] = {}
        self._inflight: SingleFlight[Promise] = SingleFlight(Promise)  # keys being fetched from owners
        self._counters = Counters(
            "service_starts",
            "fetch_requests",
            "fetch_texts",
            "fetch_cache_hits",
            "fetch_joined",
            "asked_owners",
            "owner_retries",
            "owner_failovers",
            "compute_requests",
            "compute_texts",
            "cache_write_failures",
        )
        self._start_service()

    # -- the service process --------------------------------------------------------------

    def _start_service(self) -> None:
        """Start the node's service process and connect to it (with the lock held)."""
        self._close_service()
        layout = self.layout
        layout.make_private_run_dir()
        deadline = time.monotonic() + float(self.settings["start_timeout"])
        while True:
            status, detail = self._spawn(deadline)
            if status == "ready":
                break
            if status == "already":
                # The service of an actor that just died on this node stops when its lifeline
                # closes, which happened already; wait for that process to exit, then start.
                self._wait_exit(int(detail), deadline)
                continue
            raise RuntimeError(
                f"the embedshare service of node {self.node_id} did not start: {detail}\n{read_log_tail(self.layout)}"
            )
        conn = ServiceConnection(layout.socket, connect_timeout=10.0)
        self._hello = hello = conn.hello(timeout=max(1.0, deadline - time.monotonic()))
        self._conn = conn
        if self._cache is None:
            self._cache = EmbeddingCache(hello["cache"], hello["model_id"], int(hello["dim"]))
            self._misses = MissPath(self._cache, self._ask_owners, self._counters.add)
        self._counters.add(service_starts=1)
        pid = self._process.pid if self._process is not None else None
        log.info("node %s: embedshare service pid %s on %s", self.node_id[:8], pid, layout.socket)

    def _spawn(self, deadline: float) -> tuple[str, str]:
        """The launcher's spawn, plus a lifeline: the service stops when this actor's process dies."""
        life_read, life_write = os.pipe()
        try:
            process, line = spawn_service(
                self.config,
                deadline - time.monotonic(),
                pass_fds=(life_read,),
                entry=("embedshare.ray._service", "--lifeline-fd", str(life_read)),
            )
        except ServiceStartError as exc:  # no answer in time: it was killed
            os.close(life_write)
            return "error", str(exc)
        except BaseException:
            os.close(life_write)
            raise
        finally:
            os.close(life_read)
        status, _, detail = line.partition(" ")
        if status != "ready":
            os.close(life_write)
            process.wait(timeout=60)
            return status, detail
        self._process, self._lifeline = process, life_write
        return "ready", detail

    @staticmethod
    def _wait_exit(pid: int, deadline: float) -> None:
        import psutil

        try:
            psutil.Process(pid).wait(timeout=max(1.0, deadline - time.monotonic()))
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise RuntimeError(f"another embedshare service (pid {pid}) keeps the node's store") from None

    def _close_service(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lifeline is not None:
            os.close(self._lifeline)  # the service stops on its own
            self._lifeline = None
        if self._process is not None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _service_alive(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            return False
        conn = self._conn
        if conn is None or not conn.alive:
            return False
        try:
            conn.request("ping", timeout=10.0)
        except ServiceUnavailable:
            return False
        return True

    def ensure(self) -> dict[str, Any]:
        """Make sure the service process answers (start it again if not); returns ``info()``."""
        with self._lock:
            if not self._service_alive():
                log.warning("node %s: embedshare service lost; starting it again", self.node_id[:8])
                self._start_service()
        return self.info()

    def info(self) -> dict[str, Any]:
        process = self._process
        return {
            "node_id": self.node_id,
            "address": str(self.layout.socket),
            "store": str(self.layout.root),
            "actor_pid": os.getpid(),
            "service_pid": process.pid if process else None,
            "model_id": self._hello["model_id"] if self._hello else None,
            "dim": self._hello["dim"] if self._hello else None,
            "incarnation": self.incarnation,
            "ring": self.ring,
        }

    def stop(self) -> None:
        """Stop the service process gracefully (before the actor is killed)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.request("shutdown", timeout=30.0)
                except ServiceUnavailable:
                    pass
            self._close_service()
            if self._cache is not None:
                self._cache.close()
                self._cache, self._misses = None, None

    # -- texts this node owns -------------------------------------------------------------

    @property
    def _dim(self) -> int:
        """The model's, as the node's service said (it is started before any request)."""
        if self._hello is None:
            raise RuntimeError(f"the embedshare service of node {self.node_id} has not started")
        return self._hello["dim"]

    def _request(self, texts: list[str]) -> np.ndarray:
        """Vectors from this node's service (which computes each text once and caches it)."""
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start, end in request_chunks(texts):
            chunk = texts[start:end]
            for attempt in range(4):
                conn = self._conn
                try:
                    if conn is None:
                        raise ServiceUnavailable("the service is being restarted")
                    reply = conn.request("embed", timeout=600.0, texts=chunk)
                    break
                except ServiceUnavailable:
                    if attempt == 3:
                        raise
                    self.ensure()
            out[start:end] = _vectors(reply, len(chunk))
        return out

    def compute(self, texts: list[str]) -> np.ndarray:
        """Vectors of texts this node owns, for the coordinator or another node's ``fetch``."""
        self._counters.add(compute_requests=1, compute_texts=len(texts))
        return self._request(list(texts))

    # -- texts other nodes own ------------------------------------------------------------

    def fetch(self, texts: list[str]) -> np.ndarray:
        """Vectors of this node's workers' misses that other nodes own; cached here after."""
        assert self._cache is not None and self._misses is not None
        cache = self._cache
        texts = list(texts)
        keys = [cache.key(t) for t in texts]
        out = np.empty((len(texts), cache.dim), dtype=np.float32)
        found = cache.get_many_into(keys, out)  # another worker of this node may have fetched them
        self._counters.add(fetch_requests=1, fetch_texts=len(texts), fetch_cache_hits=int(found.sum()))
        missing = np.flatnonzero(~found)
        if missing.size:
            # another worker's fetch of a key is awaited; a failed write still answers (misspath.py)
            out[missing] = self._misses.compute_and_store(
                self._inflight, [keys[i] for i in missing], [texts[i] for i in missing], joined="fetch_joined"
            )
        return out

    def _ask_owners(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Each text from the node that owns it, all owners at once."""
        by_owner: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_owner.setdefault(owner_of(key, self.ring), []).append(i)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        pending = {}
        for owner, rows in by_owner.items():
            chunk = [texts[i] for i in rows]
            if owner == self.node_id:  # only if the ring changed under a worker; compute here
                out[rows] = self._request(chunk)
                continue
            pending[owner] = (rows, chunk, self._owner(owner).compute.remote(chunk))
        self._counters.add(asked_owners=len(pending))
        for owner, (rows, chunk, ref) in pending.items():
            out[rows] = self._from_owner(owner, chunk, ref)
        return out

    def _from_owner(self, owner: str, chunk: list[str], ref: Any) -> np.ndarray:
        for _attempt in range(5):
            try:
                return np.asarray(ray.get(ref), dtype=np.float32)
            except RETRYABLE as exc:
                self._counters.add(owner_retries=1)
                log.warning(
                    "node %s: the service of node %s failed (%s); asking again",
                    self.node_id[:8],
                    owner[:8],
                    type(exc).__name__,
                )
                try:
                    ref = self._owner(owner, restart=True).compute.remote(chunk)
                except NodeGone:
                    break
        # The owner's node is gone (or keeps failing): compute here. Counted, never silent.
        self._counters.add(owner_failovers=1)
        log.warning(
            "node %s: node %s cannot compute its texts; computing %d of them here",
            self.node_id[:8],
            owner[:8],
            len(chunk),
        )
        return self._request(chunk)

    def _owner(self, node_id: str, restart: bool = False) -> Any:
        handle = None if restart else self._owners.get(node_id)
        if handle is None:
            # An actor handle: its methods are remote calls, which ray's annotations do not type.
            coordinator: Any = ray.get_actor(COORDINATOR_NAME, namespace=self.settings["namespace"])
            handle = ray.get(coordinator.node.remote(node_id, restart=restart))["handle"]
            self._owners[node_id] = handle
        return handle

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        service: dict[str, Any] | None
        try:
            service = self._conn.request("stats", timeout=30.0)["stats"] if self._conn else None
        except ServiceUnavailable:
            service = None
        return {**self.info(), "actor": self._counters.snapshot(), "service": service}

    def node_memory(self, roles: dict[int, str] | None = None) -> dict[str, Any]:
        """PSS of every process of this node (the raylet and all it started), by role.

        ``roles`` names pids the caller knows (the task workers, the coordinator).
        """
        import psutil

        from ..util.pss import pss_bytes

        roles = dict(roles or {})
        roles[os.getpid()] = "embedshare node actor"
        if self._process is not None:
            roles[self._process.pid] = "embedshare service"
        raylet = psutil.Process(os.getppid())
        processes = [raylet, *raylet.children(recursive=True)]
        out: list[dict[str, Any]] = []
        for p in processes:
            try:
                name = p.name()
            except psutil.Error:
                continue
            role = roles.get(p.pid)
            if role is None:
                if p.pid == raylet.pid:
                    role = "raylet"
                elif name.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
                    role = "ray agents"
                elif name.startswith("ray::"):
                    role = "other ray workers"
                else:
                    role = "other"
            out.append({"pid": p.pid, "role": role, "name": name, "pss": pss_bytes(p.pid)})
        return {"node_id": self.node_id, "processes": out}
