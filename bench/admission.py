"""The figures of issue 21, items 3 and 4, measured against a live service on loopback.

    PYTHONPATH=src .venv/bin/python bench/admission.py [--only stall,headers,tokens,socket]

Each scenario starts its own service (the hashing model, a temporary store), attacks it the
way the issue found, measures what another client sees, and stops: every wait is bounded, so
a run ends by itself (at most a few minutes, even against a service that has none of the
defences). Prints one JSON line per scenario. Run it on two checkouts (``PYTHONPATH`` picks
which one's ``src``) to compare them.

- ``stall``: 10 connections declare 7 MiB bodies (eight fill the 56 MiB a large body may use of
  the 64 MiB budget) and send none; a 2,048-text POST (1.2 MiB, a large body) is timed.
- ``headers``: 300 connections send a POST's headers and no body; 20 other clients then POST.
- ``tokens``: six concurrent 30 MiB bodies of token ids; the service's peak RSS (VmHWM) and
  its RSS once they are answered.
- ``socket``: one process opens 300 connections, pings on each, then stalls a 1 MiB frame on
  each after its first KiB; another process connects, says hello and embeds a text.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from embedshare.service.launcher import EmbeddingService

HTTP_TIMEOUT = 90.0  # past the 60 s body deadline: a stalled wait shows as itself, not as our cut-off


def _service(store: Path, **options: Any) -> EmbeddingService:
    return EmbeddingService(
        store, model="hash:64", registry=None, http="127.0.0.1:0", export_env=False, start_timeout=120, **options
    )  # started and stopped by the with-block


def _host_port(service: EmbeddingService) -> tuple[str, int]:
    assert service.http_url is not None
    host, port = service.http_url[len("http://") :].rsplit(":", 1)
    return host, int(port)


def _post(address: tuple[str, int], body: bytes, timeout: float = HTTP_TIMEOUT) -> tuple[str, float]:
    """POST ``body`` on a new connection: (status or the error, seconds).

    Keep-alive, as HTTP clients send it: a service that answers before the whole body has come
    (a 413, a 429) reads the rest and drops it, so the client, still sending, reads its answer.
    """
    started = time.monotonic()
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(head + body)
            reply = sock.recv(64)
        status = reply.split(b" ", 2)[1].decode() if reply else "closed"
    except OSError as exc:
        status = type(exc).__name__
    return status, round(time.monotonic() - started, 3)


def _declare(address: tuple[str, int], length: int) -> socket.socket:
    sock = socket.create_connection(address, timeout=HTTP_TIMEOUT)
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )
    return sock


def _texts_body(n: int, chars: int) -> bytes:
    return json.dumps({"model": "hash:64", "input": [f"{i} " + "x" * chars for i in range(n)]}).encode()


def stall(store: Path) -> dict[str, Any]:
    with _service(store) as service:
        address = _host_port(service)
        big = _texts_body(2048, 600)
        baseline = _post(address, big)
        held = [_declare(address, 7 << 20) for _ in range(10)]  # 8 fill the large share (56 MiB)
        try:
            time.sleep(1.0)  # let the service take their headers (a bench: no assertion rides on it)
            during = _post(address, big)
            small = _post(address, _texts_body(1, 10))
        finally:
            for sock in held:
                sock.close()
    return {"post_mib": round(len(big) / 2**20, 2), "baseline": baseline, "during": during, "small_during": small}


def headers(store: Path) -> dict[str, Any]:
    with _service(store) as service:
        address = _host_port(service)
        held = []
        for _ in range(300):
            try:
                held.append(_declare(address, 100))
            except OSError:
                pass
        try:
            time.sleep(1.0)
            results = [_post(address, _texts_body(1, 10), timeout=30)[0] for _ in range(20)]
        finally:
            for sock in held:
                sock.close()
    return {"held": len(held), "others": {s: results.count(s) for s in sorted(set(results))}}


def tokens(store: Path) -> dict[str, Any]:
    ids = ",".join(str(1000 + i % 90000) for i in range((30 << 20) // 6))
    body = ('{"model": "hash:64", "input": [[' + ids + "]]}").encode()[: 30 << 20]
    body = body[: body.rfind(b",")] + b"]]}"
    with _service(store) as service:
        address, pid = _host_port(service), service.pid
        assert pid is not None
        before = _vm(pid)
        results: list[tuple[str, float]] = []
        threads = [threading.Thread(target=lambda: results.append(_post(address, body))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HTTP_TIMEOUT + 30)
        after = _vm(pid)
    return {
        "body_mib": round(len(body) / 2**20, 1),
        "statuses": sorted(r[0] for r in results),
        "rss_before_mb": before["VmRSS"],
        "peak_rss_mb": after["VmHWM"],
        "rss_after_mb": after["VmRSS"],
    }


def _vm(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


OTHER_CLIENT = """
import sys, time
from embedshare.access import SharedEmbeddingManager
started = time.monotonic()
try:
    client = SharedEmbeddingManager(sys.argv[1], on_failure="error", connect_timeout=30, request_timeout=30)
    client.get_embedding("a small embed")
    print("ok", round(time.monotonic() - started, 3))
except Exception as exc:
    print(type(exc).__name__, round(time.monotonic() - started, 3), str(exc)[:120].replace(chr(10), " "))
"""


def socket_budget(store: Path) -> dict[str, Any]:
    with _service(store) as service:
        address = service.address
        held = []
        ping = msgpack.packb({"v": 1, "id": 1, "op": "ping"})
        for _ in range(300):  # this one process: 300 connections, each past its first frame (a ping)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(address)
            sock.sendall(struct.pack(">I", len(ping)) + ping)
            sock.recv(65536)  # its reply (one small frame)
            held.append(sock)
        for sock in held:  # then a 1 MiB frame on each, stalled after its first KiB
            sock.sendall(struct.pack(">I", 1 << 20) + b"\x00" * 1024)
        try:
            time.sleep(1.0)
            other = subprocess.run(
                [sys.executable, "-c", OTHER_CLIENT, address], capture_output=True, text=True, timeout=120
            ).stdout.split(maxsplit=2)
        finally:
            for sock in held:
                sock.close()
    return {"stalled_frames": len(held), "other_client": other}


SCENARIOS = {"stall": stall, "headers": headers, "tokens": tokens, "socket": socket_budget}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    args = parser.parse_args()
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as folder:
            started = time.monotonic()
            figures = SCENARIOS[name](Path(folder) / "store")
            figures["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps({"scenario": name, **figures}), flush=True)


if __name__ == "__main__":
    main()
