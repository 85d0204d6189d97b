"""``SharedEmbeddingManager``: the worker's side of the shared service.

Same API as ``EmbeddingManager``. Cache hits are read from the LMDB map and searches run on
the memory-mapped index, inside the worker, with no IPC; only cache misses go to the
service, all misses of one call in one request.

When the service goes away, ``on_failure`` decides:

- ``restart``: reconnect, starting the service again if nobody has (the store's lock makes
  sure only one process does), then retry the request. The default in a process that owns
  the service, and in pool workers. One restart costs one reconnect per process, whatever its
  threads; a service stopped by ``embedshare stop`` is not restarted (ServiceUnavailable).
- ``local``: switch this process to a local manager on the same store and model, once, with
  a warning. The default elsewhere.
- ``error``: raise :class:`ServiceUnavailable`.

A call never returns ``None`` or a vector of another model: every reconnect checks the
model id again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..embedders import create_embedder, model_id_of
from ..util.lazylog import LazyLogger
from ..manager import EmbeddingManager, ManagerBase
from ..store import EmbeddingCache, StoreLayout, ToolIndex
from ..store.record import RegistryMismatchError, describe_registry
from ..client import protocol
from ..client.connection import ServiceConnection, ServiceUnavailable
from ..client.state import ENV_ON_FAILURE, ENV_TOKEN, TCP_SCHEME, read_state, stopped_on_purpose

log = LazyLogger(__name__)  # logging is imported only if something is logged

POLICIES = ("restart", "local", "error")
MAX_REQUEST_TEXTS = 4096
MAX_REQUEST_CHARS = 8 << 20


class SharedEmbeddingManager(ManagerBase):
    """A client of the store's service, with the API of :class:`EmbeddingManager`."""

    mode = "shared"

    def __init__(
        self,
        address: str | Path,
        model: str | None = None,
        *,
        on_failure: str | None = None,
        request_timeout: float = 600.0,
        connect_timeout: float = 5.0,
        search_cache_size: int = 1024,
        token: str | None = None,
        registry: str | Path | None = None,
    ) -> None:
        super().__init__(search_cache_size=search_cache_size)
        # A tcp://HOST:PORT address needs the service's token (token= or EMBEDSHARE_TOKEN);
        # on the Unix socket the kernel vouches for the peer's uid instead.
        self._token = token if token is not None else os.environ.get(ENV_TOKEN)
        if on_failure is None:
            on_failure = settings.env_choice(ENV_ON_FAILURE, POLICIES, default="local")
        self.address = str(address)
        self.on_failure = settings.choice("on_failure", on_failure, POLICIES)
        self.request_timeout = settings.seconds("request_timeout", request_timeout)
        self.connect_timeout = settings.seconds("connect_timeout", connect_timeout)
        self._wanted_model_id = model_id_of(model) if model else None  # no API client built
        self._conn_lock = threading.Lock()
        self._conn: ServiceConnection | None = None
        self._fallback: EmbeddingManager | None = None
        self._warned = False
        self._counters.update(service_requests=0, service_texts=0, reconnects=0, restarts=0)

        hello = self._connect()
        self.model_id: str = hello["model_id"]
        self.dim: int = int(hello["dim"])
        self.store = Path(hello["cache"]).parent
        if self.address.startswith(TCP_SCHEME) and not Path(hello["cache"]).is_dir():
            self.close()
            raise ServiceUnavailable(
                f"the service at {self.address} keeps its store in {self.store}, which is not on this "
                "machine: a TCP client reads the cache and index from the store's files"
            )
        self.served_registry: dict[str, Any] | None = hello.get("registry")
        if registry is not None:
            try:
                check_served_registry(registry, self.served_registry, self.store)
            except BaseException:
                self.close()
                raise
        self.cache = EmbeddingCache(hello["cache"], self.model_id, self.dim)
        if hello.get("index"):
            self._index = ToolIndex(hello["index"])

    def __repr__(self) -> str:
        return f"SharedEmbeddingManager(address={self.address!r}, model={self.model_id!r})"

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> dict[str, Any]:
        conn = ServiceConnection(self.address, connect_timeout=self.connect_timeout)
        auth = {"token": self._token} if self.address.startswith(TCP_SCHEME) and self._token else {}
        try:
            hello = conn.request("hello", timeout=self.request_timeout, model_id=self._wanted_model_id, **auth)
        except protocol.RemoteError as exc:
            conn.close()
            if exc.code == "unauthorized":
                raise PermissionError(
                    f"the embedshare service at {self.address} refused this client: {exc.remote_message}"
                    + ("" if auth else f" (no token given: pass token= or set {ENV_TOKEN})")
                ) from None
            raise ValueError(exc.remote_message) from None
        except BaseException:
            conn.close()
            raise
        known = getattr(self, "model_id", None)
        if known is not None and hello["model_id"] != known:
            conn.close()
            raise ServiceUnavailable(
                f"the service at {self.address} now embeds with {hello['model_id']!r}, not {known!r}"
            )
        self._conn = conn
        return hello

    def _connection(self) -> ServiceConnection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with self._conn_lock:
            if self._conn is not None and self._conn.alive:
                return self._conn
            replacing = self._conn is not None
            if replacing:
                self._conn.close()  # dead, or inherited through fork (the parent keeps its own)
                self._conn = None
            self._connect()
            if replacing:
                self._count(reconnects=1)
            return self._conn  # type: ignore[return-value]

    # -- the miss path --------------------------------------------------------------------

    def _compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        if self._fallback is not None:
            return self._fallback._compute(keys, texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start, end in _chunks(texts):
            out[start:end] = self._request_vectors(texts[start:end])
        return out

    def _request_vectors(self, texts: list[str]) -> np.ndarray:
        failures = 0
        while True:
            if self._fallback is not None:
                return self._fallback.get_embeddings(texts)
            conn = None
            try:
                conn = self._connection()
                reply = conn.request("embed", timeout=self.request_timeout, texts=texts)
            except ServiceUnavailable as exc:
                failures += 1
                self._handle_failure(exc, failures, conn)
                continue  # the request (in flight when the service died) is sent again
            self._count(service_requests=1, service_texts=len(texts))
            vectors = np.frombuffer(reply["vectors"], dtype=np.float32)
            if reply.get("dim") != self.dim or vectors.size != len(texts) * self.dim:
                raise protocol.RemoteError("bad_reply", f"expected {len(texts)} vectors of {self.dim} dims")
            return vectors.reshape(len(texts), self.dim)

    def _handle_failure(self, exc: ServiceUnavailable, failures: int,
                        failed: ServiceConnection | None = None) -> None:
        """Apply the failure policy; returns to retry, raises to give up.

        ``failed`` is the connection the request failed on. Only the first thread to fail on it
        reconnects: a thread that finds a newer live connection retries on that one and never
        closes it, so one restart costs one reconnect per process. Whatever the policy, a
        service that answers a new connection is used (it closed an idle connection, or someone
        restarted it): the policy decides only what happens when none answers.
        """
        if failures > 5:
            raise exc
        with self._conn_lock:
            current = self._conn
            if current is not None and current is not failed and current.alive:
                return  # another thread already reconnected after the failure we saw
            if current is not None:
                current.close()
                self._conn = None
            try:
                self._connect()
                self._count(reconnects=1)
                return
            except ServiceUnavailable:
                pass
            if self.on_failure == "error":
                raise exc
            if self.on_failure == "local":
                self._switch_to_local(exc)  # called with the lock held
                return
            why = stopped_on_purpose(StoreLayout(self.store))
            if why:
                raise ServiceUnavailable(why) from None
            from .launcher import restart_service

            self._say_once(f"embedshare service lost ({exc}); restarting it")
            try:
                service = restart_service(self.store)
                self._count(restarts=1 if service.owned else 0)
                self._connect()
                self._count(reconnects=1)  # counted once connected: an attempt that fails is not one
            except ServiceUnavailable as again:
                if stopped_on_purpose(StoreLayout(self.store)):
                    raise
                # It died again while we brought it back (or while we joined another process's
                # restart): that is one more failure, and the caller's retry (bounded) goes on.
                log.debug("embedshare service restart did not hold: %s", again)

    def _switch_to_local(self, exc: Exception) -> None:
        """Called with ``_conn_lock`` held: this process uses a local manager from now on."""
        if self._fallback is not None:
            return
        self._say_once(f"embedshare service unavailable ({exc}); this process now uses a local manager")
        spec = read_state(StoreLayout(self.store)).get("model") or "local"
        embedder = create_embedder(spec)
        if embedder.model_id != self.model_id:
            raise ServiceUnavailable(
                f"cannot fall back: the local model is {embedder.model_id!r}, "
                f"the service's was {self.model_id!r}"
            ) from exc
        # The same LMDB handle: py-lmdb allows one per path and process.
        fallback = EmbeddingManager(self.store, model=embedder, cache=self.cache)
        fallback._index = self._index
        self._fallback = fallback

    def _say_once(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    def _no_index_advice(self) -> str:
        root = self.store
        return (f"the service at {self.address} serves no tool registry, and its store {root} records "
                f"none: run `embedshare index build FILE --store {root}` (or `bundled` for the example), "
                f"then restart the service (`embedshare stop --store {root}`, then "
                f"`embedshare serve --store {root} --detach`)")

    # -- extras ---------------------------------------------------------------------------

    def service_stats(self) -> dict[str, Any]:
        """The service's own counters (every client's requests, batches, latency)."""
        return self._connection().request("stats", timeout=self.request_timeout)["stats"]

    def stats(self, latency_samples: bool = False) -> dict[str, Any]:
        stats = super().stats(latency_samples)
        stats["address"] = self.address
        stats["fallback"] = self._fallback is not None
        return stats

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def check_served_registry(wanted: str | Path, served: dict[str, Any] | None, store: Path) -> None:
    """Raise unless ``wanted`` (a file or 'bundled') is the registry the service serves.

    A nonexistent or invalid file is its own error (RegistryError); another registry than the
    one served is :class:`RegistryMismatchError`, never silently the service's.
    """
    from ..registry import load_registry

    asked = load_registry(wanted)
    if served is not None and served.get("hash") == asked.content_hash:
        return
    what = describe_registry(asked.content_hash, str(wanted))
    if served is None:
        raise RegistryMismatchError(
            f"the embedshare service of {store} serves no tool registry, not {what}: stop it "
            f"(`embedshare stop --store {store}`) and start it with this one "
            f"(`embedshare serve --store {store} --registry {wanted} --detach`)")
    raise RegistryMismatchError(
        f"the embedshare service of {store} serves {describe_registry(served.get('hash'), served.get('source'))}, "
        f"not {what}: use the served one (ask for no registry), or stop the service "
        f"(`embedshare stop --store {store}`) and start it with this one "
        f"(`embedshare serve --store {store} --registry {wanted} --detach`), or use another --store")


def _chunks(texts: list[str]) -> list[tuple[int, int]]:
    """Split a long list into requests under the frame limits."""
    bounds, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= MAX_REQUEST_TEXTS or chars + len(text) > MAX_REQUEST_CHARS):
            bounds.append((start, i))
            start, chars = i, 0
        chars += len(text)
    bounds.append((start, len(texts)))
    return bounds
