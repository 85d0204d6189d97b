"""A service asked to stop while its model is still loading stops at once, not after the load.

The load is held on a FIFO (tests/helpers/spawned/slow_load_server.py) that these tests never open for writing,
so the load cannot end by itself: a service that waited for it would never exit. Before the
stop, a raw client has a ``hello`` waiting inside the service (its ``ping``, sent after it on the
same connection, was answered while ``hello`` was not); that client must see its connection
closed (what ServiceConnection reports as ServiceUnavailable), not hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers.frames import closed_by_peer, connect_raw, exchange, read_reply, request_frame
from helpers.processes import SPAWNED, stop_process
from helpers.waiting import wait_for

from embedshare.client.state import acquire_service_lock
from embedshare.store import StoreLayout

pytestmark = pytest.mark.timeout(120)

HELPER = SPAWNED / "slow_load_server.py"
EXIT_DEADLINE = 10.0  # generous: without the fix the service never exits while the gate is shut


def _answers_ping(address: str) -> bool:
    try:
        sock = connect_raw(address, timeout=5)
    except OSError:
        return False
    with sock:
        return exchange(sock, {"v": 1, "id": 1, "op": "ping"}).get("ok") is True


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "embedshare stop"])
def test_a_stop_during_the_model_load_exits_promptly(tmp_path, how):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    layout = StoreLayout(tmp_path / "store")
    process = subprocess.Popen(
        [
            sys.executable,
            str(HELPER),
            "--gate",
            str(gate),
            "--store",
            str(layout.root),
            "--model",
            "hash:64",
            "--registry",
            "bundled",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiting = None
    try:
        address = str(layout.socket)
        wait_for(lambda: layout.socket.exists() and _answers_ping(address), 60, "the socket to answer ping")
        waiting = connect_raw(address, timeout=5)
        waiting.sendall(
            request_frame({"v": 1, "id": 1, "op": "hello"}) + request_frame({"v": 1, "id": 2, "op": "ping"})
        )
        assert read_reply(waiting)["id"] == 2  # ping answered, hello still waits for the model

        if how == "embedshare stop":
            stopped = subprocess.run(
                [sys.executable, "-m", "embedshare", "stop", "--store", str(layout.root)],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert stopped.returncode == 0, stopped.stderr
            assert f"pid {process.pid}" in stopped.stdout
        else:
            process.send_signal(getattr(signal, how))
        try:
            process.wait(EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not exit within {EXIT_DEADLINE} s of {how} while its model loads")

        log = process.stderr.read()
        assert process.returncode == 0 and "Traceback" not in log, log
        assert closed_by_peer(waiting, timeout=5), "the client waiting in hello was not cut off"
        assert not layout.socket.exists() and not layout.socket.is_symlink()
        os.close(acquire_service_lock(layout))  # the lock went with the process
    finally:
        if waiting is not None:
            waiting.close()
        stop_process(process, timeout=5)  # kills it if it is still deaf to SIGTERM
        process.stderr.close()
