"""The embedding service: one process per store that owns the model, cache writes and index.

Run it as its own interpreter (``embedshare serve`` or ``python -m embedshare.service.server``),
never forked from a process that imported torch. It:

- holds an exclusive ``flock`` on ``run/service.lock`` for its whole life, so a second service on
  the same store cannot start a rival (it reports the running one), and a socket left by a
  killed service is known to be stale (nobody holds the lock) and replaced;
- listens on ``run/service.sock`` (folder 0700, socket 0600) and only answers peers of its own
  uid (``SO_PEERCRED``);
- keeps each listener (socket, TCP, HTTP) within its own connection cap, deadlines and
  buffered-bytes budget (``limits.py``), and logs each kind of message at most once per
  ``log_interval`` (``ratelog.py``), so a flood on one cannot lock the owner out of another;
- gathers embed requests from every client for up to ``max_wait_ms`` or ``max_batch`` texts,
  de-duplicates them, computes each batch once in a model thread (off the event loop), writes
  the cache and answers. A text already queued or being computed is awaited, not computed
  again: single-flight across every process of the machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import settings
from ..embedders import EmbedderError, InvalidTextError, create_embedder, validate_text
from ..manager import EmbeddingManager
from ..store import CacheError, StoreLayout
from ..store.files import write_atomic
from ..store.cache import lookup
from ..store.record import recorded_registry, write_record
from ..client import protocol
from . import ratelog
from .http.address import is_loopback
from .limits import ByteBudget, Listener, fit_caps, raise_fd_limit, sweep_forever, sweep_tick
from .metrics import ServiceMetrics
from ..client.peercred import peer_credentials
from ..client.state import (
    AlreadyRunning,
    acquire_service_lock,
    mark_stopped,
    parse_tcp_address,
    read_token_file,
)
from .config import ServiceArgvError, ServiceConfig, service_main_args

log = logging.getLogger("embedshare.service")

# Requests of one connection answered concurrently; past this the connection is not read until
# one finishes. A worker process has one connection, so this is its threads' requests in flight.
MAX_PENDING_PER_CONNECTION = 256
# A TCP peer must send its hello (with the token) within this many seconds, in a frame of at
# most this many bytes; nothing else is read from it before.
TCP_HELLO_TIMEOUT = 10.0
TCP_HELLO_MAX_FRAME = 64 << 10
# On shutdown, batches still at the model get this many seconds to finish and be cached.
SHUTDOWN_BATCH_WAIT = 10.0
# The service's log lines, in service.log and on the terminal of a foreground `serve` alike.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# What a connection may hold unread beyond its frames' budget before its transport pauses.
READ_BUFFER = 64 << 10
# Connections the kernel queues before we accept them. asyncio accepts up to this many per
# turn of the loop, so in a flood a short queue keeps every turn (and the owner's wait behind
# the queue) short; a client's connect waits in the kernel while the queue is full.
SOCKET_BACKLOG = 32


async def _wait_all(futures: list[asyncio.Future]) -> list[Any]:
    """The results of ``futures``, like ``gather``, but cancelling the wait cancels none of them.

    These futures are shared with every other request waiting for the same texts. ``gather``
    cancels its children when it is cancelled, so a client that disconnected (or was killed)
    while it waited cancelled them, and every other waiter of those texts never got an answer
    (it hung until its timeout). ``shield`` around each would cost a future and two callbacks
    more per text; one callback per text is what gather costs too.
    """
    pending = sum(not f.done() for f in futures)
    if pending:
        all_done = asyncio.get_running_loop().create_future()

        def one_done(_: asyncio.Future) -> None:
            nonlocal pending
            pending -= 1
            if not pending and not all_done.done():
                all_done.set_result(None)

        waiting = [f for f in futures if not f.done()]
        for future in waiting:
            future.add_done_callback(one_done)
        try:
            await all_done
        finally:
            if pending:  # cancelled: the shared futures carry on without our callback
                for future in waiting:
                    future.remove_done_callback(one_done)
    return [f.result() for f in futures]


class Batcher:
    """Gathers texts from every client and computes each distinct text once.

    The model and the cache writes form a pipeline: while the writer thread commits one batch
    (a durable LMDB commit costs two fsyncs), the model computes the next. Batches that finish
    during a commit are committed together in the next one. A batch is answered once its
    commit lands, so an answer means the vectors are on disk, and until then its texts stay in
    flight: a client asking for one meanwhile waits for that answer instead of a new model call.

    Embedders that wait on the network (``concurrency`` > 1, the API embedder) get that many
    batches at the model at once; a local model gets one, since it already uses every core.
    """

    def __init__(self, manager: EmbeddingManager, metrics: ServiceMetrics,
                 max_batch: int, max_wait_ms: float) -> None:
        self.manager = manager
        self.metrics = metrics
        # Checked here too, not only in ServiceConfig: with max_batch < 1 every turn of _run
        # takes no text and the loop spins, deaf to stop and SIGTERM.
        self.max_batch = settings.whole_number("max_batch", max_batch, 1)
        self.max_wait = settings.seconds("max_wait_ms", max_wait_ms, allow_zero=True, unit="milliseconds") / 1000.0
        self.concurrency = max(1, int(getattr(manager.embedder, "concurrency", 1)))
        self._queue: dict[bytes, str] = {}  # waiting to be computed, in arrival order
        self._inflight: dict[bytes, asyncio.Future] = {}  # queued, being computed or committed
        self._to_write: list[tuple[list[bytes], np.ndarray]] = []  # computed, not yet committed
        self._writing: asyncio.Task | None = None
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._batches: set[asyncio.Task] = set()
        self._model_threads = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embedshare-model")
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedshare-cache-writer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def embed(self, keys: list[bytes], texts: list[str]) -> np.ndarray:
        """Vectors for (unique) keys that missed the cache."""
        loop = asyncio.get_running_loop()
        futures = []
        for key, text in zip(keys, texts):
            future = self._inflight.get(key)
            if future is None:
                future = self._inflight[key] = loop.create_future()
                self._queue[key] = text
            else:
                self.metrics.add(joined_inflight=1)
            futures.append(future)
        self.metrics.set_queue_depth(len(self._queue))
        if self._queue:
            self._wakeup.set()
            if len(self._queue) >= self.max_batch:
                self._full.set()
        return np.stack(await _wait_all(futures))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            model_was_busy = self._slots.locked()
            await self._slots.acquire()  # texts keep gathering while every slot is busy
            # The gathering window lets a batch form while the model is idle; texts that
            # arrived while it was busy already are one, and the model should not idle now.
            if not model_was_busy and len(self._queue) < self.max_batch and self.max_wait > 0:
                try:  # gather more texts for a moment, unless the batch fills first
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except asyncio.TimeoutError:
                    pass
            keys = list(self._queue)[: self.max_batch]
            texts = [self._queue.pop(k) for k in keys]
            if len(self._queue) < self.max_batch:
                self._full.clear()
            if not self._queue:
                self._wakeup.clear()
            self.metrics.set_queue_depth(len(self._queue))
            if not keys:
                self._slots.release()
                continue
            batch = asyncio.get_running_loop().create_task(self._compute_batch(keys, texts))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    async def _compute_batch(self, keys: list[bytes], texts: list[str]) -> None:
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(self._model_threads, self._embed, texts)
        except Exception as exc:  # the model failed: every waiter gets the error, we go on
            log.error("embedding batch of %d failed: %s", len(keys), exc)
            for key in keys:
                future = self._inflight.pop(key)
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # logged once above, not again for a waiter that left
            return
        finally:
            self._slots.release()
        self._to_write.append((keys, vectors))
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write_and_answer())

    def _embed(self, texts: list[str]) -> np.ndarray:
        """In a model thread: embed one batch."""
        started = time.perf_counter()
        vectors = self.manager.embedder.embed(texts)
        self.metrics.observe_batch(len(texts), time.perf_counter() - started)
        return vectors

    async def _write_and_answer(self) -> None:
        """Commit every computed batch (grouping those that finish during a commit), answer it."""
        loop = asyncio.get_running_loop()
        try:
            while self._to_write:
                pending, self._to_write = self._to_write, []
                keys = [key for batch_keys, _ in pending for key in batch_keys]
                vectors = np.concatenate([batch_vectors for _, batch_vectors in pending])
                try:
                    await loop.run_in_executor(self._writer_thread, self._write, keys, vectors)
                finally:
                    for key, vector in zip(keys, vectors):
                        future = self._inflight.pop(key)
                        if not future.done():
                            future.set_result(vector)
        finally:
            self._writing = None

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """In the writer thread: one transaction for every batch computed since the last."""
        try:
            self.manager.cache.put_many_keys(keys, vectors)
        except CacheError as exc:  # full disk, size limit, I/O error: the vectors are still good
            self.metrics.add(cache_write_failures=1)
            log.warning("cache write failed, serving uncached vectors: %s", exc)

    async def aclose(self) -> None:
        """Stop taking batches, let those under way finish and commit what they computed."""
        if self._task:
            self._task.cancel()
        if self._batches:  # a batch stuck on a dead API is not worth a hung shutdown
            await asyncio.wait(set(self._batches), timeout=SHUTDOWN_BATCH_WAIT)
        if self._writing is not None:
            await asyncio.shield(self._writing)
        self._model_threads.shutdown(wait=False, cancel_futures=True)
        self._writer_thread.shutdown(wait=True)


class EmbeddingServer:
    """The asyncio server. One per store; see the module docstring."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.layout = StoreLayout(config.store)
        self.metrics = ServiceMetrics()
        self.clients: dict[int, dict[str, Any]] = {}
        self._next_client = 0
        self._stop: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self.manager: EmbeddingManager | None = None
        self.registry: dict[str, Any] | None = None  # hash, source, index of what it serves
        self.http: Any = None  # the HttpEndpoint when config.http is set
        self.tcp_server: asyncio.Server | None = None  # the token-checked TCP listener (--tcp)
        self.tcp_address: str | None = None
        self._token: bytes | None = None
        c = config
        deadlines = {"first_frame_timeout": c.first_frame_timeout, "frame_timeout": c.frame_timeout}
        self.socket_listener = Listener("socket", c.max_connections, idle_timeout=c.idle_timeout, **deadlines)
        self.tcp_listener = Listener("tcp", c.max_tcp_connections, idle_timeout=c.idle_timeout, **deadlines)
        self.http_listener = Listener("http", c.max_http_connections, idle_timeout=c.http_keepalive_timeout,
                                      **deadlines)
        self.frame_budget = ByteBudget(c.max_buffered_mb << 20)  # the socket's and TCP's frames
        self.http_budget = ByteBudget(c.max_http_buffered_mb << 20)  # HTTP bodies

    def prepare(self) -> None:
        """Load the model, open or build the index and preload texts (before listening)."""
        options = {"threads": self.config.threads} if self.config.threads and self.config.model.startswith("local") else {}
        embedder = create_embedder(self.config.model, **options)
        self.manager = EmbeddingManager(self.layout.root, model=embedder)
        load = getattr(embedder, "load", None)
        if load:
            load()
        if self.config.registry:
            self.manager.load_registry(self.config.registry)
        else:
            self.manager._default_index()  # no --registry: the one the store records, if any
        self._record_served()
        if self.config.preload:
            self.manager.preload(self.config.preload)

    async def serve(self, ready: Any = None) -> None:
        """Listen at once, load the model and index in a thread, answer until stopped.

        The socket exists from the start so that clients arriving while the model loads (after
        a restart, say) wait inside ``hello`` instead of polling for the socket.
        """
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

        self._fit_connection_caps()
        listeners = [self.socket_listener, self.tcp_listener, self.http_listener]
        sweeper = loop.create_task(sweep_forever(listeners, sweep_tick(listeners)), name="embedshare-sweeper")
        path = self.layout.socket
        if path.exists() or path.is_symlink():
            path.unlink()  # we hold the lock, so whoever made this socket is gone
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(path), limit=READ_BUFFER,
                                                     backlog=SOCKET_BACKLOG)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        try:
            async with server:
                self.http = await self._start_http()
                await self._start_tcp()  # before the model loads: a bad token file fails at once
                if not await self._prepared_unless_stopped(loop):
                    log.info("stopped while the model was loading; not waiting for the load")
                    return  # the finally below removes the socket; hello's waiters are cut off at exit
                assert self.manager is not None
                self.batcher = Batcher(self.manager, self.metrics, self.config.max_batch, self.config.max_wait_ms)
                self.batcher.start()
                self._write_state()
                self._ready.set()
                log.info("serving %s on %s (pid %d)", self.manager.model_id, path, os.getpid())
                if ready is not None:
                    ready(f"ready {os.getpid()}")
                await self._stop.wait()
                await self._stop_http()  # its requests finish on the batcher
                await self.batcher.aclose()
        finally:
            sweeper.cancel()
            await self._stop_http()
            self._stop_tcp()
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    async def _prepared_unless_stopped(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run ``prepare`` until it ends (True; its error is raised) or a stop comes first (False).

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
                self.prepare()
            except BaseException as exc:  # handed to the loop, which raises it in serve
                error = exc
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:  # the loop is closed: the service stopped during the load
                pass

        assert self._stop is not None
        threading.Thread(target=load, name="embedshare-load", daemon=True).start()
        stopped = loop.create_task(self._stop.wait(), name="embedshare-stop-during-load")
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
        active = {name: l.cap for name, l in listeners.items()
                  if name == "socket" or (name == "tcp" and self.config.tcp) or (name == "http" and self.config.http)}
        for name, cap in fit_caps(active, raise_fd_limit()).items():
            listeners[name].cap = cap

    # -- the optional OpenAI-compatible HTTP endpoint and /metrics (service/http.py) -------------

    async def _start_http(self) -> Any:
        if not self.config.http:
            return None
        from .http.app import HttpEndpoint

        return await HttpEndpoint.start(self, self.config.http)

    async def _stop_http(self) -> None:
        if self.http is not None:
            await self.http.stop()

    def _record_served(self) -> None:
        """Write the store's record (store/record.py): this service's model and registry."""
        assert self.manager is not None
        index = self.manager._index
        if index is not None:
            recorded = recorded_registry(self.layout) or {}
            registry_hash = index.manifest["registry_hash"]
            source = self.config.registry
            if source and source != "bundled":
                source = str(Path(source).resolve())
            if not source and recorded.get("hash") == registry_hash:
                source = recorded.get("source")
            # a restart serves the same (the config is frozen: a new one, with the registry)
            self.config = dataclasses.replace(self.config, registry=self.config.registry or source)
            self.registry = {"hash": registry_hash, "source": source, "index": str(index.path)}
        write_record(self.layout, model=self.config.model, model_id=self.manager.model_id,
                     dim=self.manager.dim, registry_hash=(self.registry or {}).get("hash"),
                     registry_source=(self.registry or {}).get("source"),
                     index=(self.registry or {}).get("index"), tools=len(index) if index is not None else None)

    def _write_state(self) -> None:
        assert self.manager is not None
        state = {
            "pid": os.getpid(),
            "socket": str(self.layout.socket),
            "model": self.config.model,
            "model_id": self.manager.model_id,
            "dim": self.manager.dim,
            "index": self.manager.index_path,
            "config": self.config.__dict__ | {"preload": []},
            "started": time.time(),
            "protocol": protocol.VERSION,
            "http": self.http.url if self.http is not None else None,
            "tcp": self.tcp_address,
        }
        write_atomic(self.layout.state, json.dumps(state, indent=2))  # a full disk: names the file

    # -- connections ----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, _ = peer_credentials(sock)
        except OSError:  # gone already
            writer.transport.abort()
            return
        if uid != os.getuid():
            self.metrics.add(refused_peers=1)
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            writer.close()
            return
        slot = self.socket_listener.admit(writer.transport.abort)
        if slot is None:
            writer.transport.abort()
            return
        try:
            await self._serve_connection(reader, writer, {"pid": pid}, slot)
        finally:
            self.socket_listener.release(slot)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                peer: dict[str, Any], slot: Any) -> None:
        """Answer a peer's requests until it leaves: a Unix peer of our uid, or TCP after hello.

        ``slot`` (limits.Slot) carries the connection's deadlines; each frame's bytes are taken
        from ``frame_budget`` before its body is read and given back once it is answered.
        """
        budget = self.frame_budget
        self._next_client += 1
        client_id = self._next_client
        self.clients[client_id] = {**peer, "connected": time.time(), "requests": 0}
        self.metrics.add(connections_total=1)
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    header = await reader.readexactly(protocol.HEADER.size)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    return  # the client left, or we are shutting down
                slot.frame_started()
                try:
                    length = protocol.frame_length(header)
                    if length > budget.largest():
                        raise protocol.ProtocolError(
                            "too_large", f"a frame of {length} bytes exceeds what the service's buffer "
                            f"budget lets one frame hold, {budget.largest()} bytes (--max-buffered-mb)")
                except protocol.ProtocolError as exc:
                    # We cannot find the next frame boundary: answer, then drop this connection.
                    self.metrics.add(requests=1, errors=1)
                    writer.write(protocol.pack(protocol.error_reply(0, exc.code, str(exc))))
                    await writer.drain()
                    return
                await budget.acquire(length)  # waits while other frames hold the budget
                try:
                    body = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    budget.release(length)
                    return
                slot.frame_done()
                self.clients[client_id]["requests"] += 1
                if len(tasks) >= MAX_PENDING_PER_CONNECTION:
                    # Backpressure: a peer that pipelines without reading its replies stops
                    # being read, instead of growing tasks and reply buffers without bound.
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                slot.request_started()
                task = asyncio.create_task(self._answer(body, writer, peer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _, n=length: (budget.release(n), slot.request_done()))
        finally:
            for task in tasks:
                task.cancel()
            self.clients.pop(client_id, None)
            writer.close()

    # -- the optional TCP listener (--tcp HOST:PORT --token-file FILE; off by default) ----------

    async def _start_tcp(self) -> None:
        if not self.config.tcp:
            return
        if not self.config.token_file:
            raise ValueError("--tcp needs --token-file: a TCP listener without a token is refused")
        self._token = read_token_file(self.config.token_file)
        host, port = parse_tcp_address(self.config.tcp)
        self.tcp_server = await asyncio.start_server(self._handle_tcp, host, port, limit=READ_BUFFER)
        bound = self.tcp_server.sockets[0].getsockname()
        self.tcp_address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        if not is_loopback(host):
            log.warning("the TCP listener is on %s, reachable from other machines; the token is "
                        "its only protection and travels unencrypted", self.tcp_address)
        log.info("TCP listener on %s (token required)", self.tcp_address)

    def _stop_tcp(self) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A TCP peer: its first frame must be a hello with the token, or it is cut off."""
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        slot = self.tcp_listener.admit(writer.transport.abort)
        if slot is None:
            writer.transport.abort()
            return
        try:
            try:
                accepted = await self._hello_tcp(reader, writer, where)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                accepted = False
            if not accepted:
                writer.close()
                return
            slot.frame_done()
            await self._serve_connection(reader, writer, {"pid": None, "tcp": where}, slot)
        finally:
            self.tcp_listener.release(slot)

    async def _hello_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> bool:
        header = await asyncio.wait_for(reader.readexactly(protocol.HEADER.size), TCP_HELLO_TIMEOUT)
        (length,) = protocol.HEADER.unpack(header)
        self.metrics.add(requests=1)
        request_id = 0
        try:
            if length > TCP_HELLO_MAX_FRAME:
                raise protocol.ProtocolError(
                    "too_large", f"a first frame of {length} bytes; a hello fits in {TCP_HELLO_MAX_FRAME}")
            body = await asyncio.wait_for(reader.readexactly(length), TCP_HELLO_TIMEOUT)
            message = protocol.unpack(body)
            request_id = protocol.reply_id(message)
            request_id, op = protocol.check_request(message)
            token = message.get("token")
            assert self._token is not None
            if op != "hello" or not isinstance(token, str) or not hmac.compare_digest(
                    token.encode("utf-8"), self._token):
                self.metrics.add(auth_failures=1)
                log.warning("refused a TCP connection from %s: %s", where,
                            "no token" if op == "hello" and token is None else
                            "wrong token" if op == "hello" else f"{op!r} before hello")
                raise protocol.ProtocolError(
                    "unauthorized", "a TCP connection must start with a hello carrying the service's "
                    "token (missing or wrong); connection closed")
            reply = await self._op_hello(message)
        except protocol.ProtocolError as exc:
            self.metrics.add(errors=1)
            writer.write(protocol.pack(protocol.error_reply(request_id, exc.code, str(exc))))
            await writer.drain()
            return False
        writer.write(protocol.pack({**reply, "id": request_id, "ok": True}))
        await writer.drain()
        return True

    async def _answer(self, body: bytes, writer: asyncio.StreamWriter, peer: dict[str, Any]) -> None:
        started = time.perf_counter()
        request_id = 0
        message: Any = None
        self.metrics.add(requests=1)
        try:
            message = protocol.unpack(body)
            request_id = protocol.reply_id(message)  # an error about the envelope carries it too
            request_id, op = protocol.check_request(message)
            reply = await getattr(self, f"_op_{op}")(message)
            reply["id"] = request_id
            reply["ok"] = True
        except protocol.ProtocolError as exc:
            self.metrics.add(errors=1)
            reply = protocol.error_reply(request_id, exc.code, str(exc))
        except InvalidTextError as exc:
            self.metrics.add(errors=1)
            reply = protocol.error_reply(request_id, "invalid_text", str(exc))
        except EmbedderError as exc:  # the model or API gave no valid vectors (logged by the batcher)
            self.metrics.add(errors=1)
            reply = protocol.error_reply(request_id, "model_error", str(exc))
        except CacheError as exc:  # a damaged cache file: an error reply, the service lives on
            self.metrics.add(errors=1)
            log.error("request failed on the cache: %s", exc)
            reply = protocol.error_reply(request_id, "cache_error", str(exc))
        except Exception as exc:  # a failing model or cache must not take the service down
            self.metrics.add(errors=1)
            log.exception("request failed")
            reply = protocol.error_reply(request_id, "internal", f"{type(exc).__name__}: {exc}")
        try:
            frame = protocol.pack(reply)
        except protocol.ProtocolError as exc:
            frame = protocol.pack(protocol.error_reply(request_id, exc.code, str(exc)))
        if not writer.is_closing():
            writer.write(frame)
            try:
                await writer.drain()
            except ConnectionError:
                pass
        seconds = time.perf_counter() - started
        self.metrics.observe_request(seconds)
        if log.isEnabledFor(logging.DEBUG):  # -vv: one line a request, never its texts
            log_request(message, reply, seconds, peer)

    # -- operations -----------------------------------------------------------------------

    async def _op_hello(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()  # a client that comes while the model loads waits here
        assert self.manager is not None
        wanted = message.get("model_id")
        if wanted is not None and wanted != self.manager.model_id:
            raise protocol.ProtocolError(
                "model_mismatch",
                f"this service embeds with {self.manager.model_id!r}, the client asked for {wanted!r}",
            )
        return {
            "version": protocol.VERSION,
            "model_id": self.manager.model_id,
            "dim": self.manager.dim,
            "cache": str(self.layout.cache),
            "index": self.manager.index_path,
            "registry": self.registry,
            "pid": os.getpid(),
            "max_texts": protocol.MAX_TEXTS_PER_REQUEST,
        }

    async def _embed_texts(self, message: dict[str, Any]) -> tuple[np.ndarray, int]:
        assert self.manager is not None
        texts = [validate_text(t, f"texts[{i}]") for i, t in enumerate(protocol.request_texts(message))]
        found = lookup(self.manager.cache, texts)
        misses = int(found.missing.size)
        self.metrics.add(embed_requests=1, texts=len(texts), hits=len(texts) - misses, misses=misses)
        if misses:
            found.fill(await self.batcher.embed(found.miss_keys, found.miss_texts))
        return found.vectors, misses

    async def _op_embed(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        vectors, _ = await self._embed_texts(message)
        return {"n": vectors.shape[0], "dim": vectors.shape[1], "vectors": vectors.tobytes()}

    async def _op_preload(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        _, computed = await self._embed_texts(message)
        return {"new": computed}

    async def _op_stats(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        assert self.manager is not None
        return {"stats": self.stats()}

    async def _op_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _op_shutdown(self, message: dict[str, Any]) -> dict[str, Any]:
        """Stop. ``by`` (``embedshare stop``) marks the stop deliberate: clients do not restart it."""
        assert self._stop is not None
        pids = [c.get("pid") for c in self.clients.values()]
        if message.get("pid") in pids:
            pids.remove(message.get("pid"))  # the connection that asks (embedshare stop itself)
        others = sorted({pid for pid in pids if pid is not None})
        if message.get("by"):
            mark_stopped(self.layout, str(message["by"]), others)  # before any client sees it go
        asyncio.get_running_loop().call_soon(self._stop.set)
        return {"pid": os.getpid(), "clients": others}

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def is_ready(self) -> bool:
        """The model and index are loaded and requests are answered without waiting."""
        return self._ready is not None and self._ready.is_set()

    def stats(self) -> dict[str, Any]:
        """The counters; while the model loads (``ready`` false) model fields are the spec's."""
        snapshot = self.metrics.snapshot()
        manager = self.manager if self.is_ready else None
        # Texts the service embedded for itself (the index build, preloads) count as well:
        # the model calls of a whole run are the batcher's plus these.
        own = manager.stats() if manager is not None else {"model_calls": 0, "texts_embedded": 0, "tools": 0,
                                                           "corrupt_vectors": 0, "old_format_vectors": 0}
        snapshot["model_calls"] += own["model_calls"]
        snapshot["texts_embedded"] += own["texts_embedded"]
        snapshot["startup_model_calls"] = own["model_calls"]
        snapshot["startup_texts_embedded"] = own["texts_embedded"]
        snapshot["corrupt_vectors"] = own["corrupt_vectors"]  # damaged values it replaced
        snapshot["old_format_vectors"] = own["old_format_vectors"]
        return {
            **snapshot,
            "ready": manager is not None,
            "pid": os.getpid(),
            "model_id": manager.model_id if manager is not None else self.config.model,
            "dim": manager.dim if manager is not None else None,
            "store": str(self.layout.root),
            "index": manager.index_path if manager is not None else None,
            "tools": own["tools"],
            "max_batch": self.config.max_batch,
            "max_wait_ms": self.config.max_wait_ms,
            "clients": [{"id": cid, **info} for cid, info in self.clients.items()],
            "http": self.http.url if self.http is not None else None,
            "limits": self.limit_stats(),
            # the ONNX backend's promise (issue 13): a `local` service never loads torch
            "torch_imported": "torch" in sys.modules,
            "embedder": repr(manager.embedder) if manager is not None else None,
        }

    def limit_stats(self) -> dict[str, Any]:
        """Each listener's connections (open, cap, refused, evicted, timed out) and budgets."""
        return {"socket": self.socket_listener.stats(), "tcp": self.tcp_listener.stats(),
                "http": self.http_listener.stats(), "frame_bytes": self.frame_budget.stats(),
                "http_body_bytes": self.http_budget.stats()}


def log_request(message: Any, reply: dict[str, Any], seconds: float, peer: dict[str, Any]) -> None:
    """One debug line for a socket request: operation, how many texts, latency, client pid."""
    op = message.get("op") if isinstance(message, dict) else None
    texts = message.get("texts") if isinstance(message, dict) else None
    count = len(texts) if isinstance(texts, (list, tuple)) else 0
    outcome = "ok" if reply.get("ok") else f"error {reply.get('error', {}).get('code')}"
    who = f"pid {peer['pid']}" if peer.get("pid") is not None else f"tcp {peer.get('tcp')}"
    log.debug("request %s texts=%d %.2f ms %s from %s", op if isinstance(op, str) else "?", count,
              seconds * 1000, outcome, who)


def run_service(config: ServiceConfig, ready_fd: int | None = None,
                ready: Callable[[str], None] | None = None) -> int:
    """Run a service in this process until SIGTERM, SIGINT or a shutdown request.

    ``ready_fd``: a pipe on which one line is written once the service answers
    (``ready PID``), or why it did not start (``already PID`` or ``error MESSAGE``).
    ``ready``: called with the same line (``embedshare serve`` announces the service only then).
    """

    def tell(line: str) -> None:
        if ready is not None:
            ready(line)
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    layout = StoreLayout(config.store)
    limiter = ratelog.install(config.log_interval)
    try:
        lock_fd = acquire_service_lock(layout)
    except AlreadyRunning as exc:
        tell(f"already {exc.pid}")
        if ready_fd is None and ready is None:  # run by hand: say so where the user looks
            log.warning("%s; not starting another", exc)
        ratelog.uninstall(limiter)
        return 0
    except BaseException:
        ratelog.uninstall(limiter)
        raise
    try:
        server = EmbeddingServer(config)
        asyncio.run(server.serve(ready=tell))
    except Exception as exc:
        tell(f"error {type(exc).__name__}: {exc}")
        raise
    finally:
        os.close(lock_fd)
        ratelog.uninstall(limiter)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config, ready_fd, verbose = service_main_args(argv)
    except ServiceArgvError as exc:  # a bad setting: one line (the launcher has it on its pipe)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
    )
    return run_service(config, ready_fd=ready_fd)
