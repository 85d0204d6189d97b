"""An impostor on the TCP port gets neither the token nor a text, and is never believed (issue 21).

The real service (``--tcp``, a token file) is SIGKILLed under a client; uid 65534 binds the
same port and answers every frame with what would fool a trusting client: a challenge with a
made-up proof, its own model, vectors and index. Under each failure policy the client must
send it no token byte and no text, and must not use a word of its answers: ``local`` embeds
in-process (the real model's vectors, the real index), ``error`` and ``restart`` raise a
one-line error naming the address and the failed authentication (a TCP client starts no
service: the one behind the address is its owner's). A new client meets the impostor the same
way. An older client, one that sends its token in a hello, gets a clear error from a new
service, not a hang.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
from helpers.frames import closed_by_peer, connect_raw, exchange
from helpers.services import kill_service
from helpers.users import NEEDS_ROOT, as_other_user

from embedshare.access import NoServiceWarning, SharedEmbeddingManager, get_embedding_manager
from embedshare.client.config import ClientConfig
from embedshare.client.connection import ServiceAuthenticationError, ServiceConnection
from embedshare.embedders import create_embedder
from embedshare.errors import RemoteError
from embedshare.sources.service import ServiceSource

EMBEDDER = create_embedder("hash:64")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)


def fake_service(port: int, evil_index: str, cache: str, report) -> None:
    """Listen on ``port`` and answer every frame as a trusting client would want; report the
    bytes each connection sent (hex), until a connection says STOP or two minutes pass."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    server.settimeout(0.5)
    report("listening")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        received = _answer_all(conn, evil_index, cache)
        if received.startswith(b"STOP"):
            return
        report("received " + received.hex())


def _answer_all(conn: socket.socket, evil_index: str, cache: str) -> bytes:
    """Every byte the peer sent on ``conn``; each whole frame is answered with a lie."""
    everything = buffer = b""
    conn.settimeout(3.0)
    try:
        while not everything.startswith(b"STOP"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            everything += chunk
            buffer += chunk
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                length = struct.unpack(">I", buffer[:4])[0]
                message, buffer = msgpack.unpackb(buffer[4 : 4 + length], raw=False), buffer[4 + length :]
                body = msgpack.packb(_lie(message, evil_index, cache), use_bin_type=True)
                conn.sendall(struct.pack(">I", len(body)) + body)
    except (OSError, ValueError):
        pass
    finally:
        conn.close()
    return everything


def _lie(message: dict, evil_index: str, cache: str) -> dict:
    """What would fool a trusting client: a made-up proof, a hello, vectors, another index."""
    texts = message.get("texts") or []
    return {
        "id": message.get("id", 0),
        "ok": True,
        "handshake": 1,
        "nonce": os.urandom(32),
        "proof": os.urandom(32),
        "version": 1,
        "model_id": EMBEDDER.model_id,
        "dim": 64,
        "cache": cache,
        "index": evil_index,
        "registry": None,
        "pid": 1,
        "max_texts": 100_000,
        "n": len(texts),
        "vectors": np.full((len(texts), 64), 7.0, dtype=np.float32).tobytes(),
    }


class Impostor:
    """The fake service run by uid 65534 on ``port`` while ``scenario()`` runs; ``received``:
    every byte any client sent it."""

    def __init__(self, port: int, cache: str, folder: Path) -> None:
        self.port, self.cache, self.folder = port, cache, folder
        self.received = b""

    def run(self, scenario) -> None:
        outcome: dict[str, BaseException] = {}

        def while_listening(_: str) -> None:
            try:
                scenario()
            except BaseException as exc:  # re-raised once the impostor stopped
                outcome["error"] = exc
            finally:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as stop:
                    stop.sendall(b"STOP")

        lines = as_other_user(
            lambda report: fake_service(self.port, "/tmp/impostor-index", self.cache, report),
            self.folder,
            ready=while_listening,
        )
        assert lines[0] == "listening", lines
        self.received += b"".join(
            bytes.fromhex(line[len("received ") :]) for line in lines if line.startswith("received ")
        )
        if "error" in outcome:
            raise outcome["error"]

    def assert_learned_nothing(self, token: str, texts: list[str]) -> None:
        assert self.received, "the client never tried the impostor: the test proves nothing"
        assert token.encode() not in self.received
        for text in texts:
            assert text.encode() not in self.received, f"the impostor received {text!r}"


@needs_root
@pytest.mark.parametrize("policy", ["local", "error", "restart"])
def test_an_impostor_on_the_port_gets_no_token_no_text_and_is_never_used(
    policy, make_service, token_file, tmp_path, monkeypatch
):
    monkeypatch.delenv("EMBEDSHARE_TOKEN", raising=False)
    token = token_file.read_text().strip()
    service = make_service(tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    address = service.tcp_address
    port = int(address.rsplit(":", 1)[1])
    client = SharedEmbeddingManager(address, token=token, on_failure=policy)
    real_top = [r.name for r in client.search("read a csv file")]
    assert client.get_embeddings(["before the impostor"]).shape == (1, 64)
    kill_service(service)

    secret_texts = [f"a secret text {i} for {policy}" for i in range(3)]
    impostor = Impostor(port, str(client.store / "cache"), tmp_path)
    got: dict[str, object] = {}

    def scenario() -> None:
        if policy == "local":
            with warnings.catch_warnings(record=True):
                got["vectors"] = client.get_embeddings(secret_texts)
            got["top"] = [r.name for r in client.search("read a csv file")]
        else:
            with pytest.raises(ServiceAuthenticationError) as info:
                client.get_embeddings(secret_texts)
            got["error"] = str(info.value)
        # a client made now meets the impostor at once, under every policy
        with pytest.raises(ServiceAuthenticationError) as info:
            SharedEmbeddingManager(address, token=token, on_failure=policy)
        got["new client"] = str(info.value)

    impostor.run(scenario)
    client.close()
    impostor.assert_learned_nothing(token, secret_texts)
    if policy == "local":  # embedded here, by the real model, and searched in the real index
        assert np.array_equal(got["vectors"], EMBEDDER.embed(secret_texts))
        assert got["top"] == real_top
    else:
        assert got["error"].startswith(f"the peer at {address} failed authentication: it did not prove it holds")
        assert "\n" not in got["error"]
    assert got["new client"].startswith(f"the peer at {address} failed authentication")
    with pytest.raises(ConnectionError):  # nothing started a service on the store again
        ServiceConnection(service.layout.socket, connect_timeout=2)


@needs_root
def test_get_embedding_manager_falls_back_locally_from_an_impostor(make_service, token_file, tmp_path, monkeypatch):
    token = token_file.read_text().strip()
    service = make_service(tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    address, port = service.tcp_address, int(service.tcp_address.rsplit(":", 1)[1])
    kill_service(service)
    monkeypatch.setenv("EMBEDSHARE_ADDRESS", address)
    monkeypatch.setenv("EMBEDSHARE_TOKEN", token)
    monkeypatch.setenv("EMBEDSHARE_STORE", str(service.layout.root))
    got: dict[str, object] = {}

    def scenario() -> None:
        with pytest.warns(NoServiceWarning, match="failed authentication"):
            manager = get_embedding_manager(model="hash:64")
        got["mode"] = manager.stats()["mode"]
        got["vector"] = manager.get_embedding("a secret text for get_embedding_manager")

    impostor = Impostor(port, str(service.layout.cache), tmp_path)
    impostor.run(scenario)
    impostor.assert_learned_nothing(token, ["a secret text for get_embedding_manager"])
    assert got["mode"] == "local"
    assert np.array_equal(got["vector"], EMBEDDER.embed(["a secret text for get_embedding_manager"])[0])


def test_an_old_client_gets_a_clear_error_from_a_new_service(make_service, token_file):
    """A client of before the handshake sends ``hello`` with its token: it is told why, at once."""
    service = make_service(registry=None, tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    with connect_raw(service.tcp_address, timeout=30) as sock:
        reply = exchange(sock, {"v": 1, "id": 1, "op": "hello", "token": token_file.read_text().strip()})
    error = RemoteError(reply["error"]["code"], reply["error"]["message"])
    assert reply["id"] == 1 and error.code == "handshake"
    assert "is not this service's TCP handshake (version 1" in str(error)


def test_a_new_client_says_an_old_service_does_not_know_the_handshake(tmp_path):
    """An older service answers the ``auth`` op with ``unknown_op``: the client says so, sends nothing more."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    import threading

    seen: list[dict] = []

    def old_service() -> None:
        conn, _ = server.accept()
        with conn:
            (length,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
            message = msgpack.unpackb(conn.recv(length, socket.MSG_WAITALL), raw=False)
            seen.append(message)
            reply = {"id": message["id"], "ok": False, "error": {"code": "unknown_op", "message": "unknown op 'auth'"}}
            body = msgpack.packb(reply)
            conn.sendall(struct.pack(">I", len(body)) + body)
            seen.append({"after": conn.recv(65536)})

    thread = threading.Thread(target=old_service)
    thread.start()
    with pytest.raises(ServiceAuthenticationError, match="does not know the authenticated handshake"):
        ServiceSource(f"tcp://127.0.0.1:{port}", token="t" * 32, config=ClientConfig(connect_timeout=10))
    thread.join(30)
    server.close()
    assert seen[0]["op"] == "auth" and "token" not in seen[0]
    assert seen[1] == {"after": b""}  # closed, nothing more sent


def test_a_listener_that_never_answers_the_handshake_is_a_timeout_not_a_hang():
    server = socket.create_server(("127.0.0.1", 0))
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="did not complete the TCP handshake within 0.5 s"):
        ServiceConnection(f"tcp://127.0.0.1:{server.getsockname()[1]}", connect_timeout=0.5, token="t" * 32)
    assert time.monotonic() - started < 30
    server.close()


def test_a_replayed_or_reflected_proof_is_refused(make_service, token_file):
    """A proof is bound to both nonces and to its direction: one recorded from an earlier
    session, or the service's own proof sent back, opens nothing."""
    import hashlib
    import hmac

    token = token_file.read_text().strip().encode()
    service = make_service(registry=None, tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    context = b"embedshare TCP handshake 1\x00"
    client_nonce = os.urandom(32)
    with connect_raw(service.tcp_address, timeout=30) as sock:  # a session someone recorded
        first = exchange(sock, {"v": 1, "id": 0, "op": "auth", "handshake": 1, "nonce": client_nonce})
        recorded = hmac.new(token, context + b"client" + client_nonce + first["nonce"], hashlib.sha256).digest()
        assert exchange(sock, {"v": 1, "id": 0, "op": "auth", "proof": recorded})["ok"] is True
    for replay in ("recorded", "reflected"):
        with connect_raw(service.tcp_address, timeout=30) as sock:
            challenge = exchange(sock, {"v": 1, "id": 0, "op": "auth", "handshake": 1, "nonce": client_nonce})
            assert challenge["nonce"] != first["nonce"]
            proof = recorded if replay == "recorded" else challenge["proof"]
            reply = exchange(sock, {"v": 1, "id": 0, "op": "auth", "proof": proof})
            assert reply["error"]["code"] == "unauthorized", replay
            assert closed_by_peer(sock)
    assert service.stats()["auth_failures"] == 2


def test_a_request_instead_of_the_proof_is_refused_and_counted(make_service, token_file):
    """A peer that takes the challenge and then sends a request, not its proof, is refused like
    one that sends a request first: counted in auth_failures, connection closed."""
    service = make_service(registry=None, tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    with connect_raw(service.tcp_address, timeout=30) as sock:
        challenge = exchange(sock, {"v": 1, "id": 0, "op": "auth", "handshake": 1, "nonce": os.urandom(32)})
        assert challenge["ok"] is True
        reply = exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": ["a text"]})
        assert reply["error"]["code"] == "unauthorized"
        assert closed_by_peer(sock)
    assert service.stats()["auth_failures"] == 1
