"""What a client's attach costs: connect and ``hello`` (over TCP, the handshake first), p50/p90.

Used to check what the TCP handshake costs on connect: run it on a checkout before and after,
on the same machine, in the same minute. It starts its own service (the hashing model, a TCP
listener on loopback with a fresh token) and attaches ``--calls`` times over each listener.

    PYTHONPATH=src python bench/attach_timeit.py [--calls 500]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from embedshare.client.connection import ServiceConnection
from embedshare.service.launcher import EmbeddingService


def attach(address: str, token: str | None) -> None:
    """Connect and say hello, as a client does; the handshake's place differs across versions."""
    if token is None:
        conn = ServiceConnection(address)
        conn.hello()
    else:
        try:
            conn = ServiceConnection(address, token=token)  # type: ignore[call-arg, unused-ignore]
            conn.hello()
        except TypeError:  # before the handshake: the token went in the hello
            conn = ServiceConnection(address)
            conn.hello(token=token)
    conn.close()


def timed(address: str, token: str | None, calls: int) -> list[float]:
    for _ in range(20):  # warm-up
        attach(address, token)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        attach(address, token)
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        token = secrets.token_hex(24)
        token_file = Path(folder) / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        with EmbeddingService(
            Path(folder) / "store", model="hash:64", tcp="127.0.0.1:0", token_file=token_file, export_env=False
        ) as service:
            assert service.tcp_address is not None
            for name, address, secret in (("unix", service.address, None), ("tcp", service.tcp_address, token)):
                seconds = timed(address, secret, args.calls)
                p50 = statistics.median(seconds) * 1e6
                p90 = seconds[int(0.9 * len(seconds))] * 1e6
                print(f"attach over {name}: p50 {p50:.0f} us, p90 {p90:.0f} us ({args.calls} attaches)")


if __name__ == "__main__":
    main()
