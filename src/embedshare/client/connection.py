"""One client connection to the service, shared by every thread of a process.

Requests carry ids and replies are matched by a reader thread, so a hundred threads can each
have a request in flight over one socket, and the service batches them together.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, cast

from .. import settings
from ..env import ENV_TOKEN
from ..errors import ForeignServiceError, ServiceAuthenticationError, ServiceUnavailable
from . import handshake, protocol
from .address import TCP_SCHEME, parse_tcp_address
from .peercred import peer_credentials


class _Reply:
    """One request's reply, handed from the reader thread to the thread that waits for it.

    What ``concurrent.futures.Future`` does for this, minus its import: that module loads
    ``logging``, ~1 MB in every worker process.
    """

    __slots__ = ("_error", "_ready", "_value")

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._value: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._ready.is_set()

    def set_result(self, value: dict[str, Any]) -> None:
        self._value = value
        self._ready.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    def result(self, timeout: float | None) -> dict[str, Any]:
        """The reply; ``TimeoutError`` if none came within ``timeout`` seconds."""
        if not self._ready.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class ServiceConnection:
    """A connection to the service at ``address``: its Unix socket, or ``tcp://HOST:PORT`` with
    ``token`` (default ``EMBEDSHARE_TOKEN``), proven by the handshake before anything else."""

    def __init__(self, address: str | Path, connect_timeout: float = 5.0, *, token: str | None = None) -> None:
        self.address = str(address)
        self.pid = os.getpid()
        connect_timeout = settings.seconds("connect_timeout", connect_timeout)
        tcp = self.address.startswith(TCP_SCHEME)
        secret = _tcp_token(self.address, token) if tcp else b""
        try:
            if tcp:  # the optional TCP listener: the handshake first
                sock = socket.create_connection(parse_tcp_address(self.address), timeout=connect_timeout)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    _authenticate(sock, self.address, secret, connect_timeout)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    _connect_unix(sock, self.address, connect_timeout)
                    _check_served_by_us(sock, self.address)
                except OSError:
                    sock.close()
                    raise
        except (ForeignServiceError, ServiceUnavailable):
            raise
        except OSError as exc:
            raise ServiceUnavailable(f"no embedshare service at {self.address}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        self._sock = sock
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._lock = threading.Lock()
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="embedshare-client-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._closed is None and self.pid == os.getpid()

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; a service error raises its class (errors.py)."""
        future = _Reply()
        with self._lock:
            if self._closed is not None:
                raise ServiceUnavailable(self._closed)
            request_id = next(self._ids)
            self._pending[request_id] = future
            try:
                self._sock.sendall(protocol.pack({"v": protocol.VERSION, "id": request_id, "op": op, **fields}))
            except OSError as exc:
                self._pending.pop(request_id, None)
                self._fail_all(f"lost the embedshare service at {self.address}: {exc}")
                raise ServiceUnavailable(self._closed) from None
        try:
            reply = future.result(timeout)
        except TimeoutError:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ServiceUnavailable(
                f"the embedshare service at {self.address} did not answer {op!r} within {timeout} s"
            ) from None
        if not reply.get("ok"):
            raise protocol.reply_exception(reply)
        return reply

    def hello(self, timeout: float | None = None, **fields: Any) -> protocol.HelloReply:
        """The ``hello`` request: the service's model, cache and index (``fields``: model_id, token)."""
        return cast(protocol.HelloReply, self.request("hello", timeout=timeout, **fields))

    def stats(self, timeout: float | None = None) -> protocol.StatsReply:
        """The service's counters, model, store, limits and clients."""
        return cast(protocol.StatsReply, self.request("stats", timeout=timeout)["stats"])

    def _read_loop(self) -> None:
        sock = self._sock
        try:
            while True:
                header = _recv_exactly(sock, protocol.HEADER.size)
                body = _recv_exactly(sock, protocol.frame_length(header))
                reply = protocol.unpack(body)
                with self._lock:
                    request_id = reply.get("id")
                    future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                    if future is None and request_id == 0 and not reply.get("ok"):
                        # The service could not tell which request this error answers (an old
                        # service, or an envelope it could not read): fail every waiting request
                        # with it rather than leave them waiting for a reply that will not come.
                        orphans, self._pending = list(self._pending.values()), {}
                        for orphan in orphans:
                            if not orphan.done():
                                orphan.set_result(reply)
                if future is not None:
                    future.set_result(reply)
        except (OSError, EOFError, protocol.ProtocolError) as exc:
            reason = "closed the connection" if isinstance(exc, EOFError) else str(exc)
            with self._lock:
                self._fail_all(f"lost the embedshare service at {self.address}: {reason}")

    def _fail_all(self, reason: str) -> None:
        """Called with the lock held: every waiting request gets ServiceUnavailable."""
        if self._closed is None:
            self._closed = reason
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ServiceUnavailable(reason))

    def close(self) -> None:
        with self._lock:
            self._fail_all("connection closed by the client")
        if self.pid == os.getpid():
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._sock.close()


def _connect_unix(sock: socket.socket, address: str, timeout: float) -> None:
    """A blocking connect bounded by SO_SNDTIMEO: while the service's accept queue is full (a
    flood of connections), the kernel queues us until there is room, within ``timeout``. A
    non-blocking connect, which ``settimeout`` would make, fails at once with EAGAIN instead."""
    seconds = max(0.001, timeout)
    as_timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, as_timeval)
    sock.connect(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))


def _check_served_by_us(sock: socket.socket, address: str) -> None:
    """Refuse a socket bound by another uid: its answers (vectors, paths) would be that user's."""
    pid, uid, _ = peer_credentials(sock)
    if uid != os.getuid():
        raise ForeignServiceError(
            f"the socket {address} is served by uid {uid} (pid {pid}), not by you (uid {os.getuid()}): "
            "another user controls it, so embedshare will not use it. Check who can write its folder, "
            "or use a store of your own (--store or EMBEDSHARE_STORE)."
        )


def _tcp_token(address: str, token: str | None) -> bytes:
    token = token if token is not None else os.environ.get(ENV_TOKEN)
    if not token:
        raise PermissionError(
            f"the embedshare service at {address} needs its token: pass token= or set {ENV_TOKEN} "
            "(the content of the service's --token-file)"
        )
    return token.strip().encode("utf-8")


def _authenticate(sock: socket.socket, address: str, token: bytes, timeout: float) -> None:
    """The handshake (``handshake.py``) on a new TCP connection; each read waits ``timeout`` at most."""

    def send(message: dict[str, object]) -> None:
        sock.sendall(protocol.pack(message))

    def receive() -> dict[str, object]:
        length = protocol.frame_length(_recv_exactly(sock, protocol.HEADER.size))
        if length > handshake.MAX_FRAME:
            raise handshake.HandshakeError(
                f"it sent a first frame of {length} bytes; a handshake fits in {handshake.MAX_FRAME}"
            )
        return protocol.unpack(_recv_exactly(sock, length))

    try:
        handshake.client_handshake(token, send, receive)
    except (handshake.HandshakeError, protocol.ProtocolError) as exc:
        raise ServiceAuthenticationError(f"the peer at {address} failed authentication: {exc}") from None
    except TimeoutError:
        raise ServiceUnavailable(
            f"the peer at {address} did not complete the TCP handshake within {timeout} s"
        ) from None
    except EOFError:
        raise ServiceUnavailable(f"the peer at {address} closed the connection during the TCP handshake") from None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)
