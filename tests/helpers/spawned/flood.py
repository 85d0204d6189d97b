"""Hold N idle connections to an address (a Unix socket path, or HOST:PORT) until stdin closes.

Run as its own process (``python tests/helpers/spawned/flood.py ADDRESS N``), so the flood's descriptors are
not the test's. It prints ``held K failed F`` once K connects succeeded, then waits; closing
its stdin ends it. The connections never send a byte: the idle flood of issue 11.

Unix connects block (bounded by SO_SNDTIMEO) while the service's accept queue is full. TCP
connects are non-blocking, up to WINDOW at once, so that SYNs a full queue dropped are
retried by the kernel in parallel, not one after another; they come from many loopback
source addresses, since 20,000 ports of one address are slow to find.
"""

from __future__ import annotations

import resource
import selectors
import socket
import struct
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: the source port is chosen at connect, per 4-tuple
WINDOW = 2000
CONNECT_TIMEOUT = 30.0


def flood_unix(path: str, count: int) -> tuple[list[socket.socket], int]:
    held, failed = [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
        try:
            sock.connect(path)
            held.append(sock)
        except OSError:
            sock.close()
            failed += 1
    return held, failed


def flood_tcp(host: str, port: int, count: int) -> tuple[list[socket.socket], int]:
    selector = selectors.DefaultSelector()
    held: list[socket.socket] = []
    failed = started = 0
    deadline = time.monotonic() + CONNECT_TIMEOUT * 4
    while (started < count or selector.get_map()) and time.monotonic() < deadline:
        while started < count and len(selector.get_map()) < WINDOW:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.1.{started // 250 % 250}.{started % 250 + 1}", 0))
            sock.setblocking(False)
            sock.connect_ex((host, port))
            selector.register(sock, selectors.EVENT_WRITE)
            started += 1
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj  # type: ignore[assignment]
            selector.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                held.append(sock)
            else:
                sock.close()
                failed += 1
    failed += len(selector.get_map()) + (count - started)
    return held, failed


def main() -> None:
    address, count = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if address.startswith("/"):
        held, failed = flood_unix(address, count)
    else:
        host, _, port = address.rpartition(":")
        held, failed = flood_tcp(host, int(port), count)
    print(f"held {len(held)} failed {failed}", flush=True)
    sys.stdin.read()  # until the test closes our stdin


if __name__ == "__main__":
    main()
