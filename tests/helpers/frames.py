"""Raw frames on a service socket, for requests the client library would never send.

A frame is a 4-byte big-endian length and a msgpack body (embedshare/client/protocol.py);
these helpers write and read them by hand, so a test controls every byte.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack


def connect_raw(address: str, timeout: float = 30.0) -> socket.socket:
    """A plain socket to a service: a Unix socket path, or ``tcp://HOST:PORT``."""
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    return sock


def frame(body: bytes) -> bytes:
    """``body`` behind its 4-byte length: whatever it holds, even bytes that are not msgpack."""
    return struct.pack(">I", len(body)) + body


def request_frame(message: dict[str, Any]) -> bytes:
    """A message framed as the client library frames it."""
    return frame(msgpack.packb(message, use_bin_type=True))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes; EOFError if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_reply(sock: socket.socket) -> dict[str, Any]:
    """One framed reply, decoded."""
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    return msgpack.unpackb(recv_exactly(sock, length), raw=False)


def exchange(sock: socket.socket, message: dict[str, Any] | bytes) -> dict[str, Any]:
    """Send a message (or an already framed ``bytes``) and read one reply."""
    sock.sendall(message if isinstance(message, bytes) else request_frame(message))
    return read_reply(sock)


def closed_by_peer(sock: socket.socket, timeout: float = 30.0) -> bool:
    """True once the other end closed the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def handshake_by_hand(sock: socket.socket, token: bytes) -> None:
    """The TCP handshake (embedshare/client/handshake.py) written out, checking the service's proof."""
    import hashlib
    import hmac
    import secrets

    context = b"embedshare TCP handshake 1\x00"
    client_nonce = secrets.token_bytes(32)
    challenge = exchange(sock, {"v": 1, "id": 0, "op": "auth", "handshake": 1, "nonce": client_nonce})
    service_nonce = challenge["nonce"]
    expected = hmac.new(token, context + b"service" + client_nonce + service_nonce, hashlib.sha256).digest()
    assert challenge["ok"] and hmac.compare_digest(challenge["proof"], expected), challenge
    mine = hmac.new(token, context + b"client" + client_nonce + service_nonce, hashlib.sha256).digest()
    assert exchange(sock, {"v": 1, "id": 0, "op": "auth", "proof": mine}) == {"id": 0, "ok": True}
