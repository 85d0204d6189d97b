"""``FailoverSource``: what a process does when its service is gone (the failure policy).

It wraps the source of a service (``ServiceSource``, or a Ray node's) and, when that source
says no service answers, applies the policy:

- ``restart``: bring the service back (``revive``: on one machine, join or start the store's
  service, the store's lock making sure only one process starts it; on Ray, ask the
  coordinator for the node's service), reconnect, and send the request again. A service
  stopped on purpose (``embedshare stop``) is not brought back: ``ServiceStopped`` says so.
- ``local``: from now on, embed in this process (a ``LocalSource`` on the same cache, with the
  model the service ran), once, with a warning.
- ``error``: raise ``ServiceUnavailable``.

A request that fails on a connection that the primary replaced at once (an idle connection
closed, a service someone restarted) is sent again without the policy. Every retry of a call
counts against one bound (``MAX_FAILURES``). One thread at a time applies the policy; a thread
that comes after finds the service back (or the fallback in place) and simply retries. A call
never returns ``None`` or a vector of another model: the fallback's model must be the service's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import settings
from ..client.state import read_state
from ..embedders import create_embedder
from ..errors import ServiceStopped, ServiceUnavailable
from ..registry import Registry
from ..store import ToolIndex
from ..util.lazylog import LazyLogger
from .base import EmbedFn, Progress, ServiceBackedSource, VectorSource

if TYPE_CHECKING:  # imported when a process falls back: a worker that never does loads none of it
    from .local import LocalSource

log = LazyLogger(__name__)  # logging is imported only if something is logged

POLICIES = ("restart", "local", "error")
MAX_FAILURES = 5  # failed attempts of one call that are retried; the next one's error is raised


class FailoverSource(VectorSource):
    """``primary`` under the failure ``policy``; ``revive`` brings its service back (``restart``)
    and returns whether this process started it."""

    def __init__(self, primary: ServiceBackedSource, policy: str, revive: Callable[[], bool] | None = None) -> None:
        policy = settings.choice("on_failure", policy, POLICIES)
        if policy == "restart" and revive is None:
            raise ValueError("the restart policy needs a way to bring the service back (revive)")
        self.primary = primary
        self.policy = policy
        self._revive = revive
        self.mode = primary.mode
        self.model_id = primary.model_id
        self.dim = primary.dim
        self.layout = primary.layout
        self.cache = primary.cache
        self.index_on_first_use = primary.index_on_first_use
        self._fallback: LocalSource | None = None
        self._lock = threading.Lock()  # one thread applies the policy at a time
        self._warned = False
        self._restarts = 0

    def __repr__(self) -> str:
        return f"FailoverSource({self.primary!r}, policy={self.policy!r})"

    def compute(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        failures = 0
        while True:
            fallback = self._fallback
            if fallback is not None:
                return fallback.compute(keys, texts)
            try:
                return self.primary.compute(keys, texts)
            except ServiceUnavailable as exc:
                failures += 1
                if failures > MAX_FAILURES:
                    raise
                self._recover(exc)

    def _recover(self, exc: ServiceUnavailable) -> None:
        """Apply the policy; returns to retry, raises to give up."""
        with self._lock:
            if self._fallback is not None or self.primary.connected():
                return  # the primary replaced the connection, another thread revived it or fell back
            if self.policy == "error":
                raise exc
            if self.policy == "local":
                self._fallback = self._local_fallback(exc)
                return
            assert self._revive is not None
            self._say_once(f"embedshare service lost ({exc}); restarting it")
            try:
                if self._revive():
                    self._restarts += 1
            except ServiceStopped:
                raise
            except ServiceUnavailable as again:
                # It died again while we brought it back (or while we joined another process's
                # restart): one more failure, and the caller's retry (bounded) goes on.
                log.debug("embedshare service restart did not hold: %s", again)
                return
            self.primary.reconnect()

    def _local_fallback(self, exc: Exception) -> LocalSource:
        """This process embeds from now on, with the model the service ran, on its cache."""
        self._say_once(f"embedshare service unavailable ({exc}); this process now uses a local manager")
        spec = read_state(self.layout).get("model") or "local"
        embedder = create_embedder(spec)
        if embedder.model_id != self.model_id:
            raise ServiceUnavailable(
                f"cannot fall back: the local model is {embedder.model_id!r}, the service's was {self.model_id!r}"
            ) from exc
        # The same LMDB handle: py-lmdb allows one per path and process.
        from .local import LocalSource

        return LocalSource(self.layout, embedder, self.primary.cache, spec=spec)

    def _say_once(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    # -- the rest is the primary's --------------------------------------------------------------

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        return self.primary.served_index(embed)

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        return self.primary.index_for(registry, name, embed, progress)

    def no_index_advice(self) -> str:
        return self.primary.no_index_advice()

    def stats(self) -> dict[str, Any]:
        return {**self.primary.stats(), "restarts": self._restarts, "fallback": self._fallback is not None}

    def close(self) -> None:
        self.primary.close()  # a fallback shares the primary's cache handle: nothing of its own
