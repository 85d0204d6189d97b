"""Admission at the service's edges (issue 21, items 3 and 4), in the shapes that were found.

HTTP (``service/http/admission.py``, ``inputs.py``, ``guard.py``):

- connections that declare large bodies and send nothing reserve nothing: another client's
  large POST is answered at once (it waited 59 s behind ten of them);
- connections that send headers and no body are evicted for new clients at the cap (300 of
  them got every other client reset), and a body that stops arriving is cut after
  ``http_read_timeout``;
- a body's JSON values are counted and charged before it is parsed, and token arrays are
  bounded before they are decoded (six 30 MiB token bodies took the service to 1.2 GB);
- TEI's limits: ``max_client_batch_size`` (413 naming it) and ``max_concurrent_requests``
  (429 with ``Retry-After``, not a wait).

The Unix socket (``limits.ByteBudget``): one process's 300 stalled 1 MiB frames hold its share
of the budget, not the budget; another process's hello and embed get through (it was closed
after 10 s).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
from helpers.extras import requires
from helpers.processes import SPAWNED, stop_process
from helpers.waiting import wait_for

from embedshare.service.http.tokens import MAX_TOKENS_PER_INPUT, MAX_TOKENS_PER_REQUEST

MODEL = "hash:64"


def _address(service) -> tuple[str, int]:
    host, port = service.http_url[len("http://") :].rsplit(":", 1)
    return host, int(port)


def _head(length: int) -> bytes:
    return (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


def _post(address: tuple[str, int], body: bytes, timeout: float = 60.0) -> tuple[int, dict[str, str], dict]:
    """One POST on its own keep-alive connection, as HTTP clients send it: status, headers and
    JSON body of the answer (read by its Content-Length; the connection is not closed by it)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(_head(len(body)) + body)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"closed after {raw[:200]!r}")
            raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(payload) < int(headers["content-length"]):
            payload += sock.recv(1 << 16)
    return int(lines[0].split()[1]), headers, json.loads(payload)


def _texts(n: int, chars: int = 10) -> bytes:
    return json.dumps({"model": MODEL, "input": [f"{i} " + "x" * chars for i in range(n)]}).encode()


def _ids_body(ids: int) -> bytes:
    return ('{"model": "hash:64", "input": [[' + ",".join(["15339"] * ids) + "]]}").encode()


# -- HTTP ----------------------------------------------------------------------------------------------


@requires("http")
def test_declared_body_lengths_reserve_nothing(make_service):
    """Ten connections declare 7 MiB bodies (eight of them were the 56 MiB a large body may
    use) and send nothing; a 1.2 MiB POST is answered, and the budget never held their lengths."""
    limits = {"frame_timeout": 600.0, "http_read_timeout": 600.0}  # nothing here is cut by a deadline
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False, limits=limits)
    address = _address(service)
    declared = [socket.create_connection(address, timeout=30) for _ in range(10)]
    try:
        for sock in declared:
            sock.sendall(_head(7 << 20))
        wait_for(lambda: service.stats()["limits"]["http"]["open"] >= 10, 30, "the ten connections")
        status, _, reply = _post(address, _texts(2048, 600))
        assert status == 200 and len(reply["data"]) == 2048
        budget = service.stats()["limits"]["http_body_bytes"]
        assert budget["peak"] < 7 << 20, budget  # only the POST's own bytes were ever held
    finally:
        for sock in declared:
            sock.close()


@requires("http")
def test_connections_that_send_headers_and_no_body_are_evicted_for_new_clients(make_service):
    limits = {"max_http_connections": 16, "frame_timeout": 600.0, "http_read_timeout": 600.0}
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False, limits=limits)
    address = _address(service)
    stalled = []
    try:
        for _ in range(40):
            sock = socket.create_connection(address, timeout=30)
            sock.sendall(_head(100))
            stalled.append(sock)
        wait_for(
            lambda: (h := service.stats()["limits"]["http"])["open"] == 16 and h["evicted"] + h["refused"] >= 24,
            30,
            "the cap to be reached",
        )
        for n in range(10):  # each new client evicts a stalled connection, then is answered
            status, _, reply = _post(address, _texts(1), timeout=30)
            assert status == 200, (n, reply)
        http = service.stats()["limits"]["http"]
        assert http["refused"] == 0 and http["evicted"] >= 25
    finally:
        for sock in stalled:
            sock.close()


@requires("http")
def test_a_body_that_stops_arriving_is_cut_by_the_read_timeout(make_service):
    """Headers and part of a body, then nothing: a 408 after ``http_read_timeout`` without a
    byte, long before the whole body's deadline, and the connection is closed."""
    limits = {"frame_timeout": 600.0, "http_read_timeout": 0.5}
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False, limits=limits)
    with socket.create_connection(_address(service), timeout=60) as sock:
        sock.sendall(_head(100) + b'{"model":')
        raw = b""
        while chunk := sock.recv(1 << 16):  # the service closes it after its answer
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(payload)["error"]["message"] == "no byte of the body arrived for 0.5 s"


@requires("http")
def test_token_bodies_are_bounded_before_they_are_parsed(make_service):
    """Six concurrent 30 MiB bodies of token ids: each is refused before it is parsed, so the
    service's peak memory stays far below the 1.2 GB they reached."""
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False)
    address = _address(service)
    body = _ids_body(5_000_000)[: 30 << 20]
    body = body[: body.rfind(b",")] + b"]]}"
    before = _vm(service.pid)
    results: list[tuple[int, dict]] = []

    def send() -> None:
        try:  # a 413 or 429 before the whole body: the rest is read and dropped, the answer read
            status, _, reply = _post(address, body, timeout=300)
            results.append((status, reply["error"]))
        except OSError as exc:
            results.append((0, {"message": repr(exc)}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    grown_mb = (_vm(service.pid)["VmHWM"] - before["VmRSS"]) >> 20
    assert len(results) == 6 and {status for status, _ in results} <= {413, 429}, results
    assert any(status == 413 and "JSON values" in error["message"] for status, error in results), results
    assert grown_mb < 400, f"the service's peak RSS grew by {grown_mb} MB"
    status, _, _ = _post(address, _texts(1))
    assert status == 200


@requires("http")
@requires("tokens")
def test_token_arrays_over_openais_limits_are_refused_before_decoding(make_service):
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False)
    address = _address(service)
    long_input = json.dumps({"model": MODEL, "input": [[15339] * (MAX_TOKENS_PER_INPUT + 1)]}).encode()
    status, _, reply = _post(address, long_input)
    assert status == 400
    assert reply["error"]["message"] == "input[0] has 8193 token ids; the limit is 8192 per input"
    full, rest = divmod(MAX_TOKENS_PER_REQUEST + 1, MAX_TOKENS_PER_INPUT)
    arrays = [[15339] * MAX_TOKENS_PER_INPUT] * full + [[15339] * rest]
    many = json.dumps({"model": MODEL, "input": arrays}).encode()
    status, _, reply = _post(address, many)
    assert status == 400
    assert reply["error"]["message"] == "'input' has 300001 token ids in all; the limit is 300000 per request"
    status, _, reply = _post(address, _ids_body(MAX_TOKENS_PER_INPUT))
    assert status == 200 and len(reply["data"]) == 1


@requires("http")
def test_max_client_batch_size_is_a_413_that_names_it(make_service):
    service = make_service(
        MODEL, registry=None, http="127.0.0.1:0", export_env=False, limits={"max_client_batch_size": 4}
    )
    address = _address(service)
    assert _post(address, _texts(4))[0] == 200
    status, _, reply = _post(address, _texts(5))
    assert status == 413
    assert reply["error"] == {
        "message": "'input' has 5 items; the limit is 4 per request (--max-client-batch-size)",
        "type": "invalid_request_error",
        "param": "input",
        "code": "too_many_inputs",
    }


def test_the_new_limits_are_checked_at_both_ends():
    from embedshare.service.config import ServiceConfig
    from embedshare.settings import SettingError

    for name in ("max_client_batch_size", "max_concurrent_requests"):
        for bad in (0, 100_001, 2.5, "8"):
            with pytest.raises(SettingError, match=name):
                ServiceConfig(store="/tmp/x", **{name: bad})
    with pytest.raises(SettingError, match="http_read_timeout"):
        ServiceConfig(store="/tmp/x", http_read_timeout=0)


@requires("http")
def test_max_concurrent_requests_answers_429_with_retry_after_not_a_wait(tmp_path):
    """The model's load is held (a FIFO), so admitted requests stay in progress: with a limit
    of 2, the third of three concurrent POSTs is answered 429 at once."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            *(sys.executable, str(SPAWNED / "slow_load_server.py"), "--gate", str(gate)),
            *("--store", str(tmp_path / "s"), "--model", MODEL, "--http", f"127.0.0.1:{port}"),
            *("--max-concurrent-requests", "2"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[tuple[int, dict[str, str], dict]] = []
    try:
        wait_for(lambda: _listening(port), 60, "the HTTP port")
        threads = [
            threading.Thread(target=lambda: results.append(_post(("127.0.0.1", port), _texts(1)))) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: results, 30, "one answer while the model loads")
        status, headers, reply = results[0]
        assert status == 429, reply
        assert headers["retry-after"] == "1"
        assert (
            reply["error"]["code"] == "rate_limit_exceeded"
            and "--max-concurrent-requests 2" in (reply["error"]["message"])
        )
        with open(gate, "w") as fifo:  # let the load finish: the two admitted ones are answered
            fifo.write("go\n")
        for thread in threads:
            thread.join(60)
        assert sorted(r[0] for r in results) == [200, 200, 429]
    finally:
        stop_process(process)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _vm(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


# -- the Unix socket ------------------------------------------------------------------------------------

OTHER_CLIENT = """
import json, sys
from embedshare.access import SharedEmbeddingManager
from embedshare.client.connection import ServiceConnection
try:
    client = SharedEmbeddingManager(sys.argv[1], on_failure="error", connect_timeout=60, request_timeout=60)
    print("ok", client.get_embedding("a small embed").shape[0])
    print(json.dumps(ServiceConnection(sys.argv[1]).stats(timeout=60)["limits"]["frame_bytes"]))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_one_process_stalled_frames_leave_another_processs_hello_through(make_service):
    """This process opens 300 connections, each past its first frame, and stalls a 1 MiB frame
    on each after its first KiB: with the default 256 MiB budget they held all of it, and
    every new hello was closed. Now they hold this process's share; another process's hello
    and embed succeed."""
    service = make_service(MODEL, registry=None, export_env=False)
    ping = msgpack.packb({"v": 1, "id": 1, "op": "ping"})
    held = []
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(service.address)
            sock.sendall(struct.pack(">I", len(ping)) + ping)
            sock.recv(1 << 16)
            held.append(sock)
        for sock in held:
            sock.sendall(struct.pack(">I", 1 << 20) + b"\x00" * 1024)
        other = subprocess.run(
            [sys.executable, "-c", OTHER_CLIENT, service.address], capture_output=True, text=True, timeout=120
        )
        lines = other.stdout.splitlines()
        assert lines[0] == "ok 64", other.stdout + other.stderr[-2000:]
        budget = json.loads(lines[1])  # this process's frames: its share read, the rest waiting
        assert budget["used"] <= (256 << 20) // 4 + (1 << 20) and budget["waiting"] >= 300 - 64, budget
    finally:
        for sock in held:
            sock.close()


@pytest.mark.timeout(60)
def test_an_unclosed_string_full_of_escaped_quotes_is_counted_in_one_pass():
    """A body of `"` then `\\"` again and again, never closed: the value counter scanned the rest
    of the body again from every quote inside it, on the event loop (80 KB took 17.6 s; 1 MiB
    would hold every request for about 50 minutes). Now the string is consumed once."""
    from embedshare.service.http.inputs import count_values

    body = b'{"input": "' + b'\\"' * (1 << 19)  # 1 MiB, the string never closed
    assert count_values(body, 10) == 3  # the object, the key's value, and the cut string: no more
