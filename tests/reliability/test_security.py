"""Security (issue #5): who may talk to the service, what a peer's bytes can do, and secrets.

- The Unix socket: folder 0700, socket 0600, and the service checks the peer's uid itself
  (SO_PEERCRED): tested for real by a client that runs as another user (as root only).
- Nothing a peer sends is unpickled or evaluated: pickles sent every way get a clean error.
- API keys never appear in the service's log (at debug level), its stats, its state file, the
  CLI's output or the errors a client sees.
- The optional TCP listener: off by default, needs a private token file, answers only a peer that
  completed the handshake (both ends prove they hold the token, which is never sent; the
  impostor cases are in test_tcp_auth.py), refuses every op before it, bounds its frames and
  the time to complete it.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import psutil
import pytest
from helpers.extras import requires
from helpers.fake_openai import FakeOpenAIServer
from helpers.figures import record
from helpers.frames import closed_by_peer, connect_raw, exchange, frame, handshake_by_hand, read_reply, request_frame
from helpers.users import NEEDS_ROOT, NOBODY, as_other_user

from embedshare.access import SharedEmbeddingManager
from embedshare.client.state import read_state
from embedshare.embedders import create_embedder
from embedshare.errors import EmbedderError
from embedshare.service.launcher import EmbeddingService, ServiceStartError

EMBEDDER = create_embedder("hash:64")


# -- the Unix socket ----------------------------------------------------------------------------------


def test_run_folder_socket_and_log_are_private(make_service):
    layout = make_service(registry=None, export_env=False).layout
    assert stat.S_IMODE(os.stat(layout.run).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(layout.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(layout.log).st_mode) == 0o600


def test_a_run_folder_left_open_to_others_is_refused_not_trusted(store):
    run = store / "run"
    run.mkdir(parents=True)
    os.chmod(run, 0o777)  # anyone could have put a socket or a state file in it
    with pytest.raises(PermissionError, match=r"run is writable by its group and other users \(mode 0777\)"):
        EmbeddingService(store, model="hash:64", export_env=False).start()
    assert not (run / "service.sock").exists()


def _connect_as(uid: int, socket_path: Path) -> str:
    """As ``uid``, try the socket; returns what that client saw.

    The client works in the socket's folder (as_other_user changes into it as root), so that only
    that folder's and the socket's own modes decide whether it can reach the socket, not those
    of the test's private temporary folders above it.
    """

    def attempt(report: Callable[[str], None]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        try:
            sock.connect(socket_path.name)
        except OSError as exc:
            report(f"connect failed: {exc.strerror}")
            return
        try:
            sock.sendall(request_frame({"v": 1, "id": 1, "op": "stats"}))
            report("answered" if sock.recv(4) else "closed")
        except (ConnectionResetError, BrokenPipeError):
            report("closed")
        except TimeoutError:
            report("no answer, not closed")

    (seen,) = as_other_user(attempt, cwd=socket_path.parent, uid=uid)
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
def test_a_client_of_another_uid_is_refused_by_the_service_itself(hash_service):
    layout = hash_service.layout
    # With the normal modes another user cannot even reach the socket:
    assert _connect_as(NOBODY, layout.socket) == "connect failed: Permission denied"
    before = hash_service.stats()["refused_peers"]
    # Open the folder and the socket for this test only, so the uid check is what stops it.
    os.chmod(layout.run, 0o711)
    os.chmod(layout.socket, 0o666)
    try:
        report = _connect_as(NOBODY, layout.socket)
    finally:
        os.chmod(layout.socket, 0o600)
        os.chmod(layout.run, 0o700)
    assert report == "closed"  # connected (the file modes let it), then cut off without a reply
    stats = hash_service.stats()
    assert stats["refused_peers"] == before + 1
    assert f"refused a connection from uid {NOBODY}" in hash_service.log_tail(50)
    # our own uid is still welcome
    assert SharedEmbeddingManager(hash_service.address).get_embedding("still mine").shape == (64,)
    record("peer_uid_check", refused_uid=NOBODY, refused_peers=stats["refused_peers"])


# -- nothing is unpickled ----------------------------------------------------------------------------


class _Exploit:
    """Unpickling this creates a folder: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_sent_every_way_get_a_clean_error_and_are_never_unpickled(hash_service, tmp_path):
    marker = tmp_path / "unpickled"
    payloads = [pickle.dumps(_Exploit(str(marker)), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    sent = 0
    with connect_raw(hash_service.address) as sock:
        for payload in payloads:
            frames = [
                frame(payload),  # the whole frame body is a pickle
                request_frame({"v": 1, "id": 1, "op": "embed", "texts": [payload]}),  # a pickle as a text
                request_frame({"v": 1, "id": 1, "op": "embed", "texts": payload}),  # as the texts
                request_frame({"v": 1, "id": 1, "op": "embed", "texts": [msgpack.ExtType(1, payload)]}),
                request_frame({"v": 1, "id": payload, "op": "ping"}),
                request_frame({"v": 1, "id": 1, "op": "hello", "model_id": payload}),
            ]
            for f in frames:
                reply = exchange(sock, f)
                sent += 1
                assert reply["ok"] is False, reply
                assert reply["error"]["code"] in ("bad_request", "invalid_text", "model_mismatch")
    assert not marker.exists()
    assert hash_service.stats()["pid"] == hash_service.pid
    record("pickle_payloads", frames=sent, unpickled=0)


# -- API keys ------------------------------------------------------------------------------------------


@requires("openai")
def test_the_api_key_never_appears_in_logs_stats_state_cli_or_errors(store, make_service, monkeypatch):
    secret = "sk-live-" + secrets.token_hex(20)
    with FakeOpenAIServer(dim=64, api_key=secret) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        service = make_service("openai:fake-embed", registry=None, export_env=False, verbose=2)
        client = SharedEmbeddingManager(service.address, on_failure="error")
        client.get_embeddings(["first text", "second text"])
        server.fail_next(429, retry_after=0)  # retried: logged at debug level
        client.get_embedding("after a rate limit")
        server.fail_next(400, message=f"Incorrect API key provided: {secret}")  # a server that echoes it
        with pytest.raises(EmbedderError) as info:
            client.get_embedding("the server echoes the key")
        error = str(info.value)
        stats = json.dumps(service.stats())
        state = service.layout.state.read_text()
        cli = subprocess.run(
            [sys.executable, "-m", "embedshare.cli", "-vv", "stats", "--json", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        client.close()
        service.stop()  # the whole log, its last lines included
        log = service.layout.log.read_text()
    assert any(r.headers.get("authorization") == f"Bearer {secret}" for r in server.requests)  # it was used
    assert "DEBUG" in log and "429" in log  # the log is verbose, and mentions the retry
    assert "***" in error  # the echoed key was redacted
    for where, text in (
        ("error", error),
        ("stats", stats),
        ("service.json", state),
        ("service.log", log),
        ("cli stdout", cli.stdout),
        ("cli stderr", cli.stderr),
    ):
        assert secret not in text and secret[8:] not in text, f"the API key leaked into the {where}"
    assert cli.returncode == 0, cli.stderr
    record(
        "api_key_redaction",
        places_checked=["client error", "stats", "service.json", "service.log (-vv)", "embedshare stats stdout/stderr"],
        log_bytes=len(log),
    )


# -- the optional TCP listener ----------------------------------------------------------------------------


def _listening(pid: int) -> list:
    return [c.laddr for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_tcp_is_off_by_default(hash_service):
    assert read_state(hash_service.layout)["tcp"] is None
    assert hash_service.tcp_address is None
    assert _listening(hash_service.pid) == []


@pytest.mark.parametrize(
    ("tcp", "token", "words"),
    [
        ("0", None, "--tcp needs --token-file"),
        ("0", ("a" * 32, 0o644), "is readable by other users (mode 0644); chmod 600 it"),
        ("0", ("short", 0o600), "too short"),
        ("0", "missing", "cannot read the token file"),
        ("localhost:http", ("a" * 32, 0o600), "bad TCP address"),
    ],
)
def test_tcp_without_a_usable_token_file_does_not_start(tmp_path, tcp, token, words):
    token_path = tmp_path / "token"
    if isinstance(token, tuple):
        token_path.write_text(token[0])
        token_path.chmod(token[1])
    # A bad address is refused where it is given (a ValueError), the token file when the service reads it.
    error = ValueError if words == "bad TCP address" else ServiceStartError
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        EmbeddingService(
            tmp_path / "store",
            model="hash:64",
            tcp=tcp,
            export_env=False,
            start_timeout=60,
            token_file=token_path if token is not None else None,
        ).start()
    assert "a" * 32 not in str(info.value)


def test_tcp_with_a_token_serves_only_clients_that_present_it(make_service, token_file, monkeypatch):
    from embedshare.client.handshake import MAX_FRAME
    from embedshare.service.listeners import TCP_HANDSHAKE_TIMEOUT

    token = token_file.read_text().strip()
    monkeypatch.delenv("EMBEDSHARE_TOKEN", raising=False)
    service = make_service(tcp="0", token_file=token_file, export_env=False)
    address = service.tcp_address
    assert address.startswith("tcp://127.0.0.1:")  # loopback unless another host is asked for
    port = int(address.rsplit(":", 1)[1])
    assert [(a.ip, a.port) for a in _listening(service.pid)] == [("127.0.0.1", port)]
    idle = connect_raw(address)  # says nothing: must be cut off after TCP_HANDSHAKE_TIMEOUT
    idle_since = time.monotonic()

    # a client with the token gets exactly what a Unix-socket client gets
    tcp_client = SharedEmbeddingManager(address, token=token, on_failure="error")
    unix_client = SharedEmbeddingManager(service.address, on_failure="error")
    texts = [f"over tcp {i}" for i in range(20)]
    assert tcp_client.get_embeddings(texts).tobytes() == EMBEDDER.embed(texts).tobytes()
    assert tcp_client.get_embeddings(texts).tobytes() == unix_client.get_embeddings(texts).tobytes()
    assert [r.name for r in tcp_client.search("read a csv file")] == [
        r.name for r in unix_client.search("read a csv file")
    ]
    monkeypatch.setenv("EMBEDSHARE_TOKEN", token)  # or from the environment
    assert SharedEmbeddingManager(address, on_failure="error").get_embedding("env token").shape == (64,)
    monkeypatch.delenv("EMBEDSHARE_TOKEN")

    # wrong or missing token: the service's proof does not check out, or nothing is tried
    with pytest.raises(PermissionError, match=f"the peer at {address} failed authentication"):
        SharedEmbeddingManager(address, token="0" * len(token), on_failure="error")
    with pytest.raises(PermissionError, match="needs its token: pass token= or set EMBEDSHARE_TOKEN"):
        SharedEmbeddingManager(address, on_failure="error")

    # no request is read before the handshake; the connection is closed
    refused_ops = []
    for op in ("ping", "stats", "embed", "preload", "shutdown"):
        with connect_raw(address) as sock:
            reply = exchange(sock, {"v": 1, "id": 5, "op": op, "texts": ["x"]})
            assert reply == {
                "id": 5,
                "ok": False,
                "error": {"code": "unauthorized", "message": reply["error"]["message"]},
            }
            assert "token" in reply["error"]["message"]
            assert closed_by_peer(sock)
            refused_ops.append(op)
    with connect_raw(address) as sock:  # an older client's hello, its token in the clear: told why
        reply = exchange(sock, {"v": 1, "id": 5, "op": "hello", "token": token})
        assert reply["id"] == 5 and reply["error"]["code"] == "handshake" and reply["handshake"] == 1
        assert "same embedshare version on both ends" in reply["error"]["message"]
        assert closed_by_peer(sock)
        refused_ops.append("hello")
    with connect_raw(address) as sock:  # garbage first
        reply = exchange(sock, frame(b"\xc1 not msgpack"))
        assert reply["error"]["code"] == "bad_request" and closed_by_peer(sock)
    with connect_raw(address) as sock:  # a big first frame is refused before it is read
        sock.sendall((MAX_FRAME + 1).to_bytes(4, "big"))
        reply = read_reply(sock)
        assert reply["error"]["code"] == "too_large" and closed_by_peer(sock)
    with connect_raw(address) as sock:  # the handshake by hand, then anything
        handshake_by_hand(sock, token.encode())
        hello = exchange(sock, {"v": 1, "id": 1, "op": "hello"})
        assert hello["ok"] and hello["model_id"] == EMBEDDER.model_id
        assert exchange(sock, {"v": 1, "id": 2, "op": "ping"}) == {"id": 2, "ok": True}

    assert closed_by_peer(idle, timeout=TCP_HANDSHAKE_TIMEOUT + 30)
    idle_seconds = time.monotonic() - idle_since
    stats = service.stats()
    assert stats["pid"] == service.pid  # the refused shutdown did nothing
    assert stats["auth_failures"] == len(refused_ops)  # a client that left mid-handshake is not one
    state = service.layout.state.read_text()
    log = service.log_tail(500)
    tcp_client.close()
    unix_client.close()
    for where, text in (("stats", json.dumps(stats)), ("service.json", state), ("service.log", log)):
        assert token not in text, f"the token leaked into the {where}"
    assert "refused a TCP connection" in log
    record(
        "tcp_listener",
        refused_before_hello=refused_ops,
        auth_failures=stats["auth_failures"],
        idle_connection_closed_after_s=round(idle_seconds, 1),
        handshake_timeout_s=TCP_HANDSHAKE_TIMEOUT,
        first_frame_limit_bytes=MAX_FRAME,
    )


def test_get_embedding_manager_follows_a_tcp_address(make_service, token_file, monkeypatch):
    from embedshare.access import get_embedding_manager, reset_embedding_manager

    service = make_service(registry=None, tcp="127.0.0.1:0", token_file=token_file, export_env=False)
    monkeypatch.setenv("EMBEDSHARE_ADDRESS", service.tcp_address)
    monkeypatch.setenv("EMBEDSHARE_TOKEN", token_file.read_text().strip())
    manager = get_embedding_manager(model="hash:64")
    assert manager.stats()["mode"] == "shared" and manager.address == service.tcp_address
    assert (
        manager.get_embedding("via get_embedding_manager").tobytes()
        == EMBEDDER.embed(["via get_embedding_manager"])[0].tobytes()
    )
    reset_embedding_manager()
