"""The listeners of the framed protocol: the Unix socket and the optional TCP listener.

Both read ``client/protocol.py`` frames and answer each by calling the engine's public front
(``engine.py``); nothing here touches the model, the cache or the index.

- The Unix socket (``run/service.sock``, 0600) answers only peers of the service's own uid
  (``SO_PEERCRED``).
- The TCP listener (``--tcp HOST:PORT --token-file FILE``; off by default) answers a peer only
  once both ends proved they hold the token (``client/handshake.py``; the token is never sent).

Each keeps within its own connection cap and deadlines (``limits.Listener``). A frame's bytes
are taken from one budget, shared by both, before its body is read, and a connection with
too many requests in flight is not read until one is answered (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import protocol
from ..client.address import parse_tcp_address
from ..client.peercred import peer_credentials
from ..client.state import mark_stopped
from ..errors import EmbedderError, wire_error
from .engine import Engine
from .http.address import is_loopback
from .limits import ByteBudget, Listener, Slot
from .tcp_auth import TcpAuthenticator
from .token_file import read_token_file

log = logging.getLogger("embedshare.service")

# Requests of one connection answered concurrently; past this the connection is not read until
# one finishes. A worker process has one connection, so this is its threads' requests in flight.
MAX_PENDING_PER_CONNECTION = 256
# A TCP peer must complete the handshake within this many seconds, in frames of at most
# handshake.MAX_FRAME bytes; nothing else is read from it before.
TCP_HANDSHAKE_TIMEOUT = 10.0
# What a connection may hold unread beyond its frames' budget before its transport pauses.
READ_BUFFER = 64 << 10
# Connections the kernel queues before we accept them. asyncio accepts up to this many per
# turn of the loop, so in a flood a short queue keeps every turn (and the owner's wait behind
# the queue) short; a client's connect waits in the kernel while the queue is full.
SOCKET_BACKLOG = 32


class FrameServer:
    """The socket's and the TCP listener's connections, answered through ``engine``.

    ``stats`` gives the whole service's stats (the ``stats`` request); ``stop`` stops the
    service (the ``shutdown`` request).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        socket_listener: Listener,
        tcp_listener: Listener,
        frame_budget: ByteBudget,
        stats: Callable[[], protocol.StatsReply],
        stop: Callable[[], None],
    ) -> None:
        self.engine = engine
        self.metrics = engine.metrics
        self.socket_listener = socket_listener
        self.tcp_listener = tcp_listener
        self.frame_budget = frame_budget
        self._stats = stats
        self._stop = stop
        self.clients: dict[int, protocol.Connection] = {}  # the open connections, for stats
        self._next_client = 0
        self.tcp_server: asyncio.Server | None = None
        self.tcp_address: str | None = None  # HOST:PORT it is bound to, once started
        self._tcp_auth: TcpAuthenticator | None = None  # once the TCP listener has its token

    # -- the Unix socket ------------------------------------------------------------------------

    async def listen_unix(self, path: Path) -> asyncio.Server:
        """Listen on ``path``, replacing a socket left there (the caller holds the store's lock)."""
        if path.exists() or path.is_symlink():
            path.unlink()  # we hold the lock, so whoever made this socket is gone
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            server = await asyncio.start_unix_server(
                self._handle_unix, path=str(path), limit=READ_BUFFER, backlog=SOCKET_BACKLOG
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        return server

    async def _handle_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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

    # -- the optional TCP listener (--tcp HOST:PORT --token-file FILE; off by default) ----------

    async def start_tcp(self, address: str | None, token_file: str | None) -> None:
        """Listen on ``address`` (nothing if None) for peers that bring the token of ``token_file``."""
        if not address:
            return
        if not token_file:
            raise ValueError("--tcp needs --token-file: a TCP listener without a token is refused")
        self._tcp_auth = TcpAuthenticator(read_token_file(token_file), self.metrics)
        host, port = parse_tcp_address(address)
        self.tcp_server = await asyncio.start_server(self._handle_tcp, host, port, limit=READ_BUFFER)
        bound = self.tcp_server.sockets[0].getsockname()
        self.tcp_address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        if not is_loopback(host):
            log.warning(
                "the TCP listener is on %s, reachable from other machines: the token is never "
                "sent, but texts and vectors travel unencrypted (docs/reliability.md, TLS off the host)",
                self.tcp_address,
            )
        log.info("TCP listener on %s (token handshake required)", self.tcp_address)

    def stop_tcp(self) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A TCP peer: the handshake first (``client/handshake.py``), or it is cut off."""
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        slot = self.tcp_listener.admit(writer.transport.abort)
        if slot is None:
            writer.transport.abort()
            return
        try:
            try:
                assert self._tcp_auth is not None  # set before the listener starts
                accepted = await asyncio.wait_for(
                    self._tcp_auth.authenticate(reader, writer, where), TCP_HANDSHAKE_TIMEOUT
                )
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                accepted = False
            if not accepted:
                writer.close()
                return
            slot.frame_done()
            await self._serve_connection(reader, writer, {"pid": None, "tcp": where}, slot)
        finally:
            self.tcp_listener.release(slot)

    # -- one connection, either listener -----------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: protocol.Peer, slot: Slot
    ) -> None:
        """Answer a peer's requests until it leaves: a Unix peer of our uid, or TCP after hello.

        ``slot`` carries the connection's deadlines; each frame's bytes are taken from
        ``frame_budget`` before its body is read and given back once it is answered.
        """
        budget = self.frame_budget
        peer_key = budget_peer(peer)  # a share of the budget for its process, one for this connection
        peer_holder = budget.peer(peer_key)
        holders = (budget.connection(), peer_holder)
        self._next_client += 1
        client_id = self._next_client
        self.clients[client_id] = {**peer, "connected": time.time(), "requests": 0}
        self.engine.serve_client(peer["pid"], peer.get("tcp"))  # the batcher's fairness: who asks
        self.metrics.add(connections_total=1)
        tasks: set[asyncio.Task[None]] = set()
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
                            "too_large",
                            f"a frame of {length} bytes exceeds what the service's buffer "
                            f"budget lets one frame hold, {budget.largest()} bytes (--max-buffered-mb)",
                        )
                except protocol.ProtocolError as exc:
                    # We cannot find the next frame boundary: answer, then drop this connection.
                    self.metrics.add(requests=1, errors=1)
                    writer.write(protocol.pack(protocol.error_reply(0, exc.code, str(exc))))
                    await writer.drain()
                    return
                await budget.acquire(length, holders=holders)  # waits while others (or its own share) hold it
                try:
                    body = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    budget.release(length, holders)
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

                def answered(_: asyncio.Task[None], n: int = length) -> None:
                    budget.release(n, holders)
                    slot.request_done()

                task.add_done_callback(answered)
        finally:
            for task in tasks:
                task.cancel()
            budget.leave(peer_key, peer_holder)
            self.clients.pop(client_id, None)
            writer.close()

    async def _answer(self, body: bytes, writer: asyncio.StreamWriter, peer: protocol.Peer) -> None:
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
        except Exception as exc:  # a failing model or cache must not take the service down
            self.metrics.add(errors=1)
            reply = failure_reply(request_id, exc)
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

    # -- operations -----------------------------------------------------------------------------

    async def _op_hello(self, message: dict[str, Any]) -> dict[str, Any]:
        return {**await self.engine.hello(message.get("model_id"))}

    async def _op_embed(self, message: dict[str, Any]) -> dict[str, Any]:
        vectors, _ = await self.engine.embed(protocol.request_texts(message))
        return {"n": vectors.shape[0], "dim": vectors.shape[1], "vectors": vectors.tobytes()}

    async def _op_preload(self, message: dict[str, Any]) -> dict[str, Any]:
        _, computed = await self.engine.embed(protocol.request_texts(message))
        return {"new": computed}

    async def _op_stats(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.engine.ready()
        return {"stats": self._stats()}

    async def _op_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _op_shutdown(self, message: dict[str, Any]) -> dict[str, Any]:
        """Stop. ``by`` (``embedshare stop``) marks the stop deliberate: clients do not restart it."""
        pids = [c.get("pid") for c in self.clients.values()]
        if message.get("pid") in pids:
            pids.remove(message.get("pid"))  # the connection that asks (embedshare stop itself)
        others = sorted({pid for pid in pids if pid is not None})
        if message.get("by"):
            mark_stopped(self.engine.layout, str(message["by"]), others)  # before any client sees it go
        asyncio.get_running_loop().call_soon(self._stop)
        return {"pid": os.getpid(), "clients": others}


def budget_peer(peer: protocol.Peer) -> tuple[str, object]:
    """Whose share of the frame budget a connection's frames take: its process (a Unix peer's
    pid, by SO_PEERCRED) or its host (a TCP peer, which has no pid we can see)."""
    if peer.get("pid") is not None:
        return ("pid", peer["pid"])
    return ("tcp", peer.get("tcp", "").rpartition(":")[0])


def failure_reply(request_id: int, exc: Exception) -> dict[str, Any]:
    """The error reply to a request that raised ``exc``: a malformed request's own code, the
    code of ``errors.WIRE_ERRORS`` (the client raises the same class again), or ``internal``."""
    if isinstance(exc, protocol.ProtocolError):
        return protocol.error_reply(request_id, exc.code, str(exc))
    wire = wire_error(exc)
    if wire is None:
        log.exception("request failed")
        return protocol.error_reply(request_id, "internal", f"{type(exc).__name__}: {exc}")
    if wire.status >= 500 and not isinstance(exc, EmbedderError):  # the batcher logs the model's
        log.error("request failed (%s): %s", wire.code, exc)
    return protocol.error_reply(request_id, wire.code, str(exc))


def log_request(message: Any, reply: dict[str, Any], seconds: float, peer: protocol.Peer) -> None:
    """One debug line for a socket request: operation, how many texts, latency, client pid."""
    op = message.get("op") if isinstance(message, dict) else None
    texts = message.get("texts") if isinstance(message, dict) else None
    count = len(texts) if isinstance(texts, (list, tuple)) else 0
    outcome = "ok" if reply.get("ok") else f"error {reply.get('error', {}).get('code')}"
    who = f"pid {peer['pid']}" if peer.get("pid") is not None else f"tcp {peer.get('tcp')}"
    log.debug(
        "request %s texts=%d %.2f ms %s from %s",
        op if isinstance(op, str) else "?",
        count,
        seconds * 1000,
        outcome,
        who,
    )
