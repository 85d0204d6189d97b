"""Helpers shared by the reliability, security and fuzz tests (issue #5).

- ``record(test, **figures)``: the figures a test measured. Printed (``pytest -s`` shows them) and,
  when ``EMBEDSHARE_RELIABILITY_REPORT`` names a file, appended to it as one JSON line.
- Raw frames on a service socket, for requests the client library would never send.
- ``wait_for``: wait for a *fact* (a condition that is polled), with a deadline that fails the
  test; never a bare sleep that hopes something happened meanwhile.
- Memory of a process (RSS, anonymous RSS, PSS) and a process-started-with-a-ready-pipe helper.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

REPORT_ENV = "EMBEDSHARE_RELIABILITY_REPORT"
TESTS = Path(__file__).resolve().parent


def record(test: str, **figures: Any) -> None:
    line = json.dumps({"test": test, **figures}, default=str, sort_keys=True)
    print(f"\n[reliability] {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- raw frames ---------------------------------------------------------------------------------


def connect_raw(address: str, timeout: float = 30.0) -> socket.socket:
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    return sock


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def request_frame(message: dict[str, Any]) -> bytes:
    return frame(msgpack.packb(message, use_bin_type=True))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_reply(sock: socket.socket) -> dict[str, Any]:
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    return msgpack.unpackb(recv_exactly(sock, length), raw=False)


def exchange(sock: socket.socket, message: dict[str, Any] | bytes) -> dict[str, Any]:
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


# -- processes ------------------------------------------------------------------------------------


def memory_of(pid: int) -> dict[str, int]:
    """RSS, anonymous RSS (the heap: what a leak grows) and PSS of a process, in bytes."""
    import psutil

    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kb = lambda name: int(fields[name].split()[0]) * 1024
    info = psutil.Process(pid).memory_full_info()
    return {"rss": kb("VmRSS"), "rss_anon": kb("RssAnon"), "rss_file": kb("RssFile"), "pss": info.pss}


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet is dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_with_ready_pipe(args: list[str], log_path: Path, timeout: float = 120.0,
                          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``args + ['--ready-fd', N]`` like the launcher does; return it and its ready line."""
    read_fd, write_fd = os.pipe()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args + ["--ready-fd", str(write_fd)], pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                raise AssertionError(f"{args[:4]} did not say ready within {timeout} s")
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if readable:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
    return proc, data.decode().strip()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PYTHON = sys.executable
