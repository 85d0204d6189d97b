"""Who is at the other end of a Unix socket, as the kernel says (``SO_PEERCRED``).

Both ends check it: the service answers only peers of its own uid, and a client talks only to
a service of its own uid (a socket bound by another user, say in a store folder that user
could write, would otherwise be believed). Kept apart so that workers import it without the
server's asyncio machinery.
"""

from __future__ import annotations

import socket
import struct

_CREDENTIALS = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket."""
    return _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
