"""``ServiceSource``: the misses of a worker go to the store's service, over its socket.

One connection per process, shared by every thread (``client/connection.py``): requests carry
ids, so a hundred threads each have one in flight and the service batches them together. All
the misses of one call go in one request (split only past the frame limits).

When a request fails because the connection died, a new connection is tried at once, whatever
the failure policy: the service may have closed an idle connection, or someone restarted it.
Only a thread that failed on the *current* connection replaces it, so one restart costs one
reconnect per process, however many threads saw it. The error still goes to the caller:
``FailoverSource`` (``failover.py``) sends the request again if a connection is live, and
applies the policy if not. That one loop bounds the attempts of a call, so a service that dies
on every request is not sent the same texts again and again.

Every (re)connection checks the service's model again: a call never gets another model's vectors.

A service's error reply raises the class its failure had there (the codes of ``errors.WIRE_ERRORS``,
mapped by the client's ``protocol.reply_exception``): a model failure is an ``EmbedderError``, a
damaged cache a ``CacheDamagedError``, as with a local source.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..client import protocol
from ..client.address import TCP_SCHEME
from ..client.config import CLIENT_DEFAULTS, ClientConfig
from ..client.connection import ServiceConnection
from ..embedders import model_id_of
from ..env import ENV_MODEL, ENV_TOKEN
from ..errors import (
    ModelMismatchError,
    NoIndexError,
    ProtocolError,
    RegistryMismatchError,
    RemoteError,
    ServiceAuthenticationError,
    ServiceUnavailable,
)
from ..registry import Registry
from ..store import EmbeddingCache, StoreLayout, ToolIndex
from ..store.record import describe_registry
from ..util.counters import Counters
from .base import EmbedFn, Progress, ServiceBackedSource

MAX_REQUEST_TEXTS = 4096
MAX_REQUEST_CHARS = 8 << 20


class ServiceSource(ServiceBackedSource):
    """The store's service at ``address`` (its Unix socket, or ``tcp://HOST:PORT``)."""

    mode = "shared"

    def __init__(
        self,
        address: str | Path,
        model: str | None = None,
        *,
        token: str | None = None,
        config: ClientConfig = CLIENT_DEFAULTS,
    ) -> None:
        self.address = str(address)
        # A tcp://HOST:PORT address needs the service's token (token= or EMBEDSHARE_TOKEN);
        # on the Unix socket the kernel vouches for the peer's uid instead.
        self._token = token if token is not None else os.environ.get(ENV_TOKEN)
        self.request_timeout = config.request_timeout
        self.connect_timeout = config.connect_timeout
        self._wanted_model_id = model_id_of(model) if model else None  # no API client built
        self._wanted_spec = model
        self._conn_lock = threading.Lock()
        self._conn: ServiceConnection | None = None
        self._connections = 0  # made so far: every one after the first is a reconnect
        self._counters = Counters("service_requests", "service_texts", "reconnects")

        hello = self._connect()
        self.model_id: str = hello["model_id"]
        self.dim: int = int(hello["dim"])
        self.layout = StoreLayout(Path(hello["cache"]).parent)
        if self.address.startswith(TCP_SCHEME) and not Path(hello["cache"]).is_dir():
            self.close()
            raise ServiceUnavailable(
                f"the service at {self.address} keeps its store in {self.layout.root}, which is not on "
                "this machine: a TCP client reads the cache and index from the store's files"
            )
        self.served_registry: protocol.ServedRegistry | None = hello.get("registry")
        self.cache = EmbeddingCache(hello["cache"], self.model_id, self.dim)
        index = hello.get("index")
        self._index = ToolIndex(index) if index else None

    def __repr__(self) -> str:
        return f"ServiceSource(address={self.address!r}, model={self.model_id!r})"

    # -- the connection -----------------------------------------------------------------------

    def _connect(self) -> protocol.HelloReply:
        """Open a connection and say hello (model); it becomes the current one. Over TCP the
        connection is made only once the service proved it holds the token (``handshake.py``)."""
        conn = ServiceConnection(self.address, connect_timeout=self.connect_timeout, token=self._token)
        try:
            hello = conn.hello(timeout=self.request_timeout, model_id=self._wanted_model_id)
        except ModelMismatchError as exc:  # the service's refusal, with the ways out
            conn.close()
            raise ModelMismatchError(self._mismatch_fix(str(exc))) from None
        except RemoteError as exc:  # a hello it cannot answer (another protocol version)
            conn.close()
            raise ProtocolError(exc.code, exc.remote_message) from None
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
        self._connections += 1
        if self._connections > 1:  # counted once connected: an attempt that fails is not one
            self._counters.add(reconnects=1)
        return hello

    def _mismatch_fix(self, refusal: str) -> str:
        """The service's refusal, and the two ways out: its model, or a store for ours."""
        socket_path = Path(self.address)
        store = str(socket_path.parent.parent) if socket_path.name == "service.sock" else "STORE"
        spec = self._wanted_spec
        return (
            f"{refusal}. One store's service has one model: ask for its model (give no model and leave "
            f"{ENV_MODEL} unset), or serve {spec} on a store of its own (`embedshare serve --store "
            f"OTHER-STORE --model {spec} --detach`), or restart this one with it (`embedshare stop --store "
            f"{store}`, then `embedshare serve --store {store} --model {spec} --detach`)"
        )

    def _connection(self) -> ServiceConnection:
        """The current connection, or a new one if it died (or was inherited through fork)."""
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with self._conn_lock:
            conn = self._conn
            if conn is None or not conn.alive:
                self._replace(conn)
            assert self._conn is not None
            return self._conn

    def _replace(self, current: ServiceConnection | None) -> None:
        """Called with the lock held: close ``current`` and connect again (ServiceUnavailable
        if no service answers)."""
        if current is not None:
            current.close()  # dead, or inherited through fork (the parent keeps its own)
            self._conn = None
        self._connect()

    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive

    def reconnect(self, failed: ServiceConnection | None = None) -> bool:
        """Make sure a live connection exists, replacing ``failed``; False if no service answers.

        A thread that finds a newer live connection than the one it failed on uses it and never
        closes it: one restart costs one reconnect per process. A TCP peer that fails the
        handshake raises :class:`ServiceAuthenticationError`: the failure policy sees an
        impostor on the port for what it is, not a lost connection.
        """
        with self._conn_lock:
            current = self._conn
            if current is not None and current is not failed and current.alive:
                return True
            try:
                self._replace(current)
            except ServiceAuthenticationError:
                raise
            except ServiceUnavailable:
                return False
            return True

    # -- the miss path ------------------------------------------------------------------------

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start, end in request_chunks(texts):
            out[start:end] = self._request_vectors(texts[start:end])
        return out

    def _request_vectors(self, texts: list[str]) -> np.ndarray:
        conn = self._connection()
        try:
            reply = conn.request("embed", timeout=self.request_timeout, texts=texts)
        except ServiceUnavailable:
            self.reconnect(failed=conn)  # replaced once, for every thread that failed on it
            raise  # FailoverSource sends it again on the new connection, or applies the policy
        self._counters.add(service_requests=1, service_texts=len(texts))
        vectors = np.frombuffer(reply["vectors"], dtype=np.float32)
        if reply.get("dim") != self.dim or vectors.size != len(texts) * self.dim:
            raise RemoteError("bad_reply", f"expected {len(texts)} vectors of {self.dim} dims")
        return vectors.reshape(len(texts), self.dim)

    # -- what the service serves --------------------------------------------------------------

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        return self._index

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        """The service's index, if ``registry`` is the one it serves (RegistryMismatchError if not)."""
        check_served_registry(registry, name, self.served_registry, self.layout.root)
        if self._index is None:
            raise NoIndexError(self.no_index_advice())
        return self._index

    def no_index_advice(self) -> str:
        root = self.layout.root
        return (
            f"the service at {self.address} serves no tool registry, and its store {root} records "
            f"none: run `embedshare index build FILE --store {root}` (or `bundled` for the example), "
            f"then restart the service (`embedshare stop --store {root}`, then "
            f"`embedshare serve --store {root} --detach`)"
        )

    # -- extras -------------------------------------------------------------------------------

    def service_stats(self) -> protocol.StatsReply:
        """The service's own counters (every client's requests, batches, latency)."""
        return self._connection().stats(timeout=self.request_timeout)

    def stats(self) -> dict[str, Any]:
        return {**self._counters.snapshot(), "address": self.address}

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def check_served_registry(asked: Registry, name: str, served: protocol.ServedRegistry | None, store: Path) -> None:
    """Raise unless ``asked`` (the registry named ``name``) is the one the service serves.

    Another registry than the one served is :class:`RegistryMismatchError`, never silently
    the service's.
    """
    if served is not None and served.get("hash") == asked.content_hash:
        return
    what = describe_registry(asked.content_hash, name)
    if served is None:
        raise RegistryMismatchError(
            f"the embedshare service of {store} serves no tool registry, not {what}: stop it "
            f"(`embedshare stop --store {store}`) and start it with this one "
            f"(`embedshare serve --store {store} --registry {name} --detach`)"
        )
    raise RegistryMismatchError(
        f"the embedshare service of {store} serves {describe_registry(served.get('hash'), served.get('source'))}, "
        f"not {what}: use the served one (ask for no registry), or stop the service "
        f"(`embedshare stop --store {store}`) and start it with this one "
        f"(`embedshare serve --store {store} --registry {name} --detach`), or use another --store"
    )


def request_chunks(texts: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of each request a long list is split into, under the frame limits."""
    bounds, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= MAX_REQUEST_TEXTS or chars + len(text) > MAX_REQUEST_CHARS):
            bounds.append((start, i))
            start, chars = i, 0
        chars += len(text)
    bounds.append((start, len(texts)))
    return bounds
