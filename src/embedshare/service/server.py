"""The embedding service: one process per store that owns the model, cache writes and index.

Run it as its own interpreter (``embedshare serve`` or ``python -m embedshare.service``; see
``process.py``), never forked from a process that imported torch. It:

- holds an exclusive ``flock`` on ``run/service.lock`` for its whole life (``process.py``
  takes it), so a second service on the same store cannot start a rival (it reports the
  running one), and a socket left by a killed service is known to be stale (nobody holds the
  lock) and replaced;
- listens on ``run/service.sock`` (folder 0700, socket 0600) and only answers peers of its own
  uid, and optionally on TCP and HTTP (``listeners.py``, ``http/``);
- keeps each listener (socket, TCP, HTTP) within its own connection cap, deadlines and
  buffered-bytes budget (``limits.py``), and logs each kind of message at most once per
  ``log_interval`` (``ratelog.py``), so a flood on one cannot lock the owner out of another;
- answers every request through its engine (``engine.py``): the model, the cache, the index,
  and the batcher (``batcher.py``) that computes each distinct text once, across every client.

This module is the service's life: listen at once, load the model in a thread while early
clients wait, say ready, serve until stopped, and stop without waiting for a hung load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..client import protocol
from ..client.state import ServiceState
from ..store.files import write_atomic
from .config import ServiceConfig
from .engine import Engine
from .limits import (
    ByteBudget,
    Listener,
    fit_caps,
    raise_fd_limit,
    sweep_forever,
    sweep_tick,
)
from .listeners import FrameServer
from .metrics import ServiceMetrics

log = logging.getLogger("embedshare.service")


class EmbeddingServer:
    """The asyncio server. One per store; see the module docstring."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.engine = Engine(config, self.metrics)
        self.layout = self.engine.layout
        self.http: Any = None  # the HttpEndpoint when config.http is set
        self._stop = asyncio.Event()
        c = config
        deadlines = {"first_frame_timeout": c.first_frame_timeout, "frame_timeout": c.frame_timeout}
        self.socket_listener = Listener("socket", c.max_connections, idle_timeout=c.idle_timeout, **deadlines)
        self.tcp_listener = Listener("tcp", c.max_tcp_connections, idle_timeout=c.idle_timeout, **deadlines)
        self.http_listener = Listener(
            "http", c.max_http_connections, idle_timeout=c.http_keepalive_timeout, **deadlines
        )
        self.frame_budget = ByteBudget(c.max_buffered_mb << 20)  # the socket's and TCP's frames
        self.http_budget = ByteBudget(c.max_http_buffered_mb << 20)  # HTTP bodies
        self.frames = FrameServer(
            self.engine,
            socket_listener=self.socket_listener,
            tcp_listener=self.tcp_listener,
            frame_budget=self.frame_budget,
            stats=self.stats,
            stop=self._stop.set,
        )

    async def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Listen at once, load the model and index in a thread, answer until stopped.

        The socket exists from the start so that clients arriving while the model loads (after
        a restart, say) wait inside ``hello`` instead of polling for the socket.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

        self._fit_connection_caps()
        listeners = [self.socket_listener, self.tcp_listener, self.http_listener]
        sweeper = loop.create_task(sweep_forever(listeners, sweep_tick(listeners)), name="embedshare-sweeper")
        path = self.layout.socket
        server = await self.frames.listen_unix(path)
        try:
            async with server:
                self.http = await self._start_http()
                # before the model loads: a bad token file fails at once
                await self.frames.start_tcp(self.config.tcp, self.config.token_file)
                if not await self._loaded_unless_stopped(loop):
                    log.info("stopped while the model was loading; not waiting for the load")
                    return  # the finally below removes the socket; hello's waiters are cut off at exit
                self._write_state()
                self.engine.start()
                log.info("serving %s on %s (pid %d)", self.engine.model_id, path, os.getpid())
                if ready is not None:
                    ready(f"ready {os.getpid()}")
                await self._stop.wait()
                await self._stop_http()  # its requests finish on the batcher
                await self.engine.aclose()
        finally:
            sweeper.cancel()
            await self._stop_http()
            self.frames.stop_tcp()
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    async def _loaded_unless_stopped(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run the engine's ``load`` until it ends (True; its error is raised) or a stop comes
        first (False).

        A load can take seconds (the local model) or forever (an API embedder whose load hangs),
        and SIGTERM, SIGINT or ``shutdown`` must not wait for it. So it runs in a *daemon* thread
        of its own, not in the loop's default executor: asyncio.run's shutdown joins that
        executor's threads and the interpreter joins non-daemon threads, which would both wait
        for the load. A daemon thread is simply dropped when the process exits, after the normal
        cleanup (socket file, listeners, HTTP, lock fd) has run, which ``os._exit`` would skip.
        """
        loaded: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if loaded.done():  # a stop came first and serve has moved on
                return
            if error is None:
                loaded.set_result(None)
            else:
                loaded.set_exception(error)

        def load() -> None:
            error: BaseException | None = None
            try:
                self.engine.load()
            except BaseException as exc:  # handed to the loop, which raises it in serve
                error = exc
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:  # the loop is closed: the service stopped during the load
                pass

        threading.Thread(target=load, name="embedshare-load", daemon=True).start()
        stopped: asyncio.Future[Any] = loop.create_task(self._stop.wait(), name="embedshare-stop-during-load")
        try:
            await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not loaded.done():
            loaded.cancel()
            return False
        loaded.result()
        return True

    def _fit_connection_caps(self) -> None:
        """Raise the open-file limit to its hard limit and keep every cap under it, with a
        reserve, so that accept() never fails with EMFILE (asyncio would log each failure)."""
        listeners = {"socket": self.socket_listener, "tcp": self.tcp_listener, "http": self.http_listener}
        active = {
            name: listener.cap
            for name, listener in listeners.items()
            if name == "socket" or (name == "tcp" and self.config.tcp) or (name == "http" and self.config.http)
        }
        for name, cap in fit_caps(active, raise_fd_limit()).items():
            listeners[name].cap = cap

    # -- the optional OpenAI-compatible HTTP endpoint and /metrics (service/http/) ---------------

    async def _start_http(self) -> Any:
        if not self.config.http:
            return None
        from .http.endpoint import HttpEndpoint

        return await HttpEndpoint.start(
            self.engine,
            listener=self.http_listener,
            budget=self.http_budget,
            stats=self.stats,
        )

    async def _stop_http(self) -> None:
        if self.http is not None:
            await self.http.stop()

    def _write_state(self) -> None:
        """``run/service.json``: how to reach this service, and how to start it again."""
        served = self.engine.served_config  # with the registry it found: a restart serves the same
        state: ServiceState = {
            "pid": os.getpid(),
            "socket": str(self.layout.socket),
            "model": self.config.model,
            "model_id": self.engine.model_id,
            "dim": self.engine.dim,
            "index": self.engine.index_path,
            "config": {f.name: getattr(served, f.name) for f in dataclasses.fields(served)} | {"preload": []},
            "started": time.time(),
            "protocol": protocol.VERSION,
            "http": self.http.url if self.http is not None else None,
            "tcp": self.frames.tcp_address,
        }
        write_atomic(self.layout.state, json.dumps(state, indent=2))  # a full disk: names the file

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> protocol.StatsReply:
        """The engine's counters, and the listeners': clients, the HTTP address, limits."""
        return {
            **self.engine.stats(),
            "clients": [{"id": cid, **info} for cid, info in self.frames.clients.items()],
            "http": self.http.url if self.http is not None else None,
            "limits": self.limit_stats(),
        }

    def limit_stats(self) -> protocol.LimitStats:
        """Each listener's connections (open, cap, refused, evicted, timed out) and budgets."""
        return {
            "socket": self.socket_listener.stats(),
            "tcp": self.tcp_listener.stats(),
            "http": self.http_listener.stats(),
            "frame_bytes": self.frame_budget.stats(),
            "http_body_bytes": self.http_budget.stats(),
        }
