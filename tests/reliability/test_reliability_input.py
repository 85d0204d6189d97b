"""Bad input (issue #5): each is a clear error naming the problem, and the service keeps serving
everyone else. Texts of every wrong type, huge and huge-in-number texts, a backend returning NaN,
infinity or vectors of the wrong dimension, indexes built with another model or damaged,
registry errors at start, and a client speaking another protocol version."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from helpers.extras import requires
from helpers.fake_openai import FakeOpenAIServer
from helpers.figures import record
from helpers.frames import connect_raw, exchange, frame, read_reply, request_frame
from helpers.services import running_service

from embedshare.access import SharedEmbeddingManager
from embedshare.client import protocol
from embedshare.embedders import MAX_TEXT_CHARS, InvalidTextError, create_embedder
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.sources.service import MAX_REQUEST_TEXTS

EMBEDDER = create_embedder("hash:64")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service for the whole module: each bad input must leave it serving the next test."""
    store = tmp_path_factory.mktemp("bad-input") / "store"
    with running_service(store, export_env=False) as running:
        yield running


def _still_serving(address: str, text: str) -> None:
    """A well-behaved client (a new connection) gets the right vector for a new text."""
    client = SharedEmbeddingManager(address, on_failure="error")
    try:
        assert client.get_embedding(text).tobytes() == EMBEDDER.embed([text])[0].tobytes()
    finally:
        client.close()


# -- texts of the wrong kind ------------------------------------------------------------------------

BAD_TEXTS = [
    pytest.param(None, "must be a str, got NoneType", id="None"),
    pytest.param(b"some bytes", "must be a str, got bytes", id="bytes"),
    pytest.param(42, "must be a str, got int", id="int"),
    pytest.param(["nested"], "must be a str, got list", id="list"),
    pytest.param("", "is empty", id="empty"),
    pytest.param("a lone \ud800 surrogate", "is not valid Unicode (lone surrogate at position 7)", id="surrogate"),
]


@pytest.mark.parametrize(("bad", "words"), BAD_TEXTS)
def test_a_bad_text_is_a_clear_error_in_the_client_and_on_the_wire(service, bad, words):
    client = SharedEmbeddingManager(service.address, on_failure="error")
    with pytest.raises(InvalidTextError, match=re.escape(words)) as info:
        client.get_embedding(bad)
    assert str(info.value).startswith("text ")
    with pytest.raises(InvalidTextError, match=re.escape("texts[1] " + words)):
        client.get_embeddings(["a fine text", bad])
    with pytest.raises(InvalidTextError, match="query"):
        client.search(bad)
    # the same text sent by a client that does not check (another library, a bug): the service
    # answers a clear error for that request, on a connection that stays usable
    with connect_raw(service.address) as sock:
        if isinstance(bad, str) and "\ud800" in bad:  # msgpack cannot encode it: CESU-8 bytes
            body = msgpack.packb({"v": 1, "id": 7, "op": "embed", "texts": ["@"]}).replace(
                b"\xa1@", b"\xa3\xed\xa0\x80"
            )
            reply = exchange(sock, frame(body))
            assert reply["error"]["code"] == "bad_request" and "not valid UTF-8" in reply["error"]["message"]
        else:
            reply = exchange(sock, {"v": 1, "id": 7, "op": "embed", "texts": ["fine", bad]})
            assert reply["ok"] is False and reply["id"] == 7
            assert reply["error"]["code"] == "invalid_text"
            assert reply["error"]["message"].startswith("texts[1] ") and words in reply["error"]["message"]
        assert exchange(sock, {"v": 1, "id": 8, "op": "ping"}) == {"id": 8, "ok": True}
    _still_serving(service.address, f"served after {words}")


def test_texts_that_are_not_a_list_are_a_clear_error(service):
    client = SharedEmbeddingManager(service.address, on_failure="error")
    with pytest.raises(InvalidTextError, match="texts must be a list of strings, got str"):
        client.get_embeddings("one string, not a list")
    with connect_raw(service.address) as sock:
        for texts, name in (("abc", "str"), (None, "NoneType"), ({"a": 1}, "dict"), (5, "int")):
            reply = exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": texts})
            assert reply["error"]["code"] == "bad_request"
            assert f"field 'texts' must be a list, got {name}" in reply["error"]["message"]
        reply = exchange(sock, {"v": 1, "id": 2, "op": "embed"})
        assert "field 'texts' must be a list, got NoneType" in reply["error"]["message"]
    _still_serving(service.address, "served after non-lists")


def test_invalid_utf8_anywhere_in_a_frame_is_a_clear_error(service):
    good = msgpack.packb({"v": 1, "id": 3, "op": "embed", "texts": ["@@@@"]})
    bodies = [
        good.replace(b"\xa4@@@@", b"\xa4\xff\xfe@@"),  # in a text
        good.replace(b"\xa5embed", b"\xa5\xc3\x28bed"),  # in the op
        good.replace(b"\xa2op", b"\xa2\xe2\x82"),  # in a key
        good.replace(b"\xa4@@@@", b"\xa4\xf0\x9f\x98@"),  # a 4-byte sequence cut short
    ]
    with connect_raw(service.address) as sock:
        for body in bodies:
            assert body != good
            reply = exchange(sock, frame(body))
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
            assert "not valid UTF-8" in reply["error"]["message"]
    _still_serving(service.address, "served after invalid UTF-8")


def test_a_1_mb_text_is_truncated_to_the_documented_limit(service):
    big = "".join(f"word{i} " for i in range(200_000))[: 1 << 20]  # 1 MiB of text
    assert len(big) == 1 << 20 and MAX_TEXT_CHARS == 8192
    expected = EMBEDDER.embed([big[:MAX_TEXT_CHARS]])[0]
    client = SharedEmbeddingManager(service.address, on_failure="error")
    assert client.get_embedding(big).tobytes() == expected.tobytes()
    # the same 8,192 characters with another tail are the same text as far as anyone can tell
    assert client.get_embedding(big[:MAX_TEXT_CHARS] + " a different tail").tobytes() == expected.tobytes()
    with connect_raw(service.address) as sock:  # a 1 MiB string on the wire
        reply = exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": [big[::-1]]})
        assert reply["ok"], reply
        assert reply["vectors"] == EMBEDDER.embed([big[::-1][:MAX_TEXT_CHARS]])[0].tobytes()
    _still_serving(service.address, "served after a 1 MB text")


@pytest.mark.slow
def test_100k_short_texts_through_the_shared_client(make_service):
    """100k texts in one call: the client splits them into requests under the limits. (max_batch
    512: at the default 64, 1,563 cache commits, each with its fsync, make it a 30-45 s test.)"""
    texts = [f"short text {i}" for i in range(100_000)]
    service = make_service(registry=None, max_batch=512, export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    started = time.perf_counter()
    vectors = client.get_embeddings(texts)
    seconds = time.perf_counter() - started
    requests = client.stats()["service_requests"]
    assert requests == -(-len(texts) // MAX_REQUEST_TEXTS)  # split into requests under the limits
    sample = sorted(random.Random(100_000).sample(range(len(texts)), 10_000))  # checked one by one
    assert vectors[sample].tobytes() == EMBEDDER.embed([texts[i] for i in sample]).tobytes()
    assert len({v.tobytes() for v in vectors}) == len(texts)  # and all different
    again = client.get_embeddings(texts)  # all hits now, read from the map in this process
    assert again.tobytes() == vectors.tobytes() and client.stats()["service_requests"] == requests
    stats = service.stats()
    client.close()
    assert stats["texts_embedded"] == len(texts) and stats["errors"] == 0
    record(
        "100k_texts",
        texts=len(texts),
        requests=requests,
        seconds=round(seconds, 1),
        texts_per_request=MAX_REQUEST_TEXTS,
        model_calls=stats["model_calls"],
        max_batch=512,
    )


def test_a_reply_the_client_cannot_match_fails_its_requests_instead_of_hanging(tmp_path):
    """An (old) service that answers an error with id 0: every waiting request gets that error
    at once, instead of waiting out its timeout."""
    import socket
    import threading

    from embedshare.client.connection import ServiceConnection
    from embedshare.errors import RemoteError

    path = str(tmp_path / "old.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def old_service() -> None:
        peer, _ = listener.accept()
        with peer:
            read_reply(peer)
            peer.sendall(request_frame({"id": 0, "ok": False, "error": {"code": "version", "message": "no"}}))
            peer.recv(1)  # until the client leaves

    thread = threading.Thread(target=old_service, daemon=True)
    thread.start()
    conn = ServiceConnection(path)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="version"):
        conn.request("hello", timeout=60)
    assert time.monotonic() - started < 30  # generous; it used to take the whole timeout
    conn.close()
    thread.join(30)
    listener.close()


def test_more_texts_than_the_limit_in_one_request_is_a_clear_error(service):
    too_many = ["x"] * (protocol.MAX_TEXTS_PER_REQUEST + 1)
    with connect_raw(service.address) as sock:
        reply = exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": too_many})
        assert reply["error"]["code"] == "too_large"
        assert (
            f"{len(too_many)} texts in one request; the limit is {protocol.MAX_TEXTS_PER_REQUEST}"
            in reply["error"]["message"]
        )
        reply = exchange(sock, {"v": 1, "id": 2, "op": "embed", "texts": []})  # and none at all is fine
        assert reply["ok"] and reply["n"] == 0
    _still_serving(service.address, "served after too many texts")


# -- a backend that returns garbage (the OpenAI embedder against a scripted server) ---------------------


@pytest.fixture
def openai_service(store, monkeypatch):
    """A service embedding with ``openai:fake-embed`` through FakeOpenAIServer (in this process)."""
    with FakeOpenAIServer(dim=64, api_key="sk-test-0123456789abcdef") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
        with running_service(store, "openai:fake-embed", registry=None, export_env=False) as service:
            yield server, service


BACKEND_FAULTS = [
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
    ("wrong_dim", "dimension 63, expected 64"),
    ("wrong_count", "embeddings for"),
    ("non_numeric", "not valid base64"),  # base64 transfer: the bytes are not base64
    ("missing_index", "'index'"),
    ("duplicate_index", "duplicate index"),
    ("no_data", "no 'data' list"),
    ("malformed_json", "not valid JSON"),
    (400, "HTTP 400"),
]


@requires("openai")
def test_garbage_from_the_backend_fails_that_request_only_and_is_never_cached(openai_service):
    from embedshare.errors import EmbedderError

    server, service = openai_service

    def expected(text: str) -> bytes:
        return server.vector(text).astype(np.float32).tobytes()

    client = SharedEmbeddingManager(service.address, on_failure="error")
    bystander = SharedEmbeddingManager(service.address, on_failure="error")
    failures = []
    for fault, words in BACKEND_FAULTS:
        text = f"a text that meets {fault}"
        server.fail_next(fault)
        with pytest.raises(EmbedderError) as info:  # two texts: one request, one batch; as in-process
            client.get_embeddings([text, text + " too"])
            pytest.fail(f"no error for the backend fault {fault!r}")
        assert words in str(info.value) and "openai:fake-embed" in str(info.value)
        failures.append(fault)
        assert text not in client.cache and text + " too" not in client.cache  # nothing of it cached
        # the next request (another client's, then the same text again) is answered normally
        assert np.allclose(
            np.frombuffer(bystander.get_embedding(f"bystander after {fault}").tobytes(), np.float32),
            np.frombuffer(expected(f"bystander after {fault}"), np.float32),
            atol=1e-6,
        )
        assert np.allclose(client.get_embedding(text), np.frombuffer(expected(text), np.float32), atol=1e-6)
    stats = service.stats()
    assert stats["pid"] == service.pid and stats["errors"] >= len(BACKEND_FAULTS)
    # transient failures are retried by the embedder and never reach the client
    server.fail_next(500)
    server.fail_next("disconnect")
    assert np.allclose(
        client.get_embedding("after a 500 and a dropped connection"),
        np.frombuffer(expected("after a 500 and a dropped connection"), np.float32),
        atol=1e-6,
    )
    record(
        "backend_garbage", faults=failures, each_failed_only_its_request=True, retried_transients=[500, "disconnect"]
    )


# -- damaged indexes and registries at start ---------------------------------------------------------


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    """A store with the bundled registry's index for hash:64, and one built with hash:32."""
    base = tmp_path_factory.mktemp("indexes")
    manager = EmbeddingManager(base / "store", model="hash:64", registry="bundled")
    index = Path(manager.index_path)
    manager.close()
    other = EmbeddingManager(base / "other", model="hash:32", registry="bundled")
    other_index = Path(other.index_path)
    other.close()
    return base / "store", index.name, other_index


def _truncate(folder: Path, other: Path) -> None:
    path = folder / "vectors.npy"
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_byte(folder: Path, other: Path) -> None:
    path = folder / "vectors.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _another_model(folder: Path, other: Path) -> None:
    shutil.rmtree(folder)
    shutil.copytree(other, folder)


def _edit_manifest(change):
    def damage(folder: Path, other: Path) -> None:
        path = folder / "manifest.json"
        path.write_text(change(path.read_text()))

    return damage


def _drop_key(key):
    def change(text: str) -> str:
        manifest = json.loads(text)
        del manifest[key]
        return json.dumps(manifest)

    return change


DAMAGES = [
    pytest.param(_truncate, "vectors.npy has", id="truncated-matrix"),
    pytest.param(_flip_a_byte, "vectors.npy does not match its checksum", id="flipped-byte"),
    pytest.param(
        _another_model,
        "another model or registry (model 'hash:32:v1', this service's is 'hash:64:v1')",
        id="another-model",
    ),
    pytest.param(_edit_manifest(lambda t: "{not json"), "manifest.json is not valid JSON", id="manifest-not-json"),
    pytest.param(_edit_manifest(lambda t: ""), "manifest.json is not valid JSON", id="manifest-empty"),
    pytest.param(_edit_manifest(_drop_key("files")), "manifest.json is incomplete", id="manifest-incomplete"),
    pytest.param(_edit_manifest(lambda t: t.replace('"dim": 64', '"dim": 32')), "shape", id="manifest-wrong-dim"),
    pytest.param(lambda f, o: (f / "fields.npy").unlink(), "fields.npy is missing", id="file-missing"),
    pytest.param(lambda f, o: (f / "manifest.json").unlink(), "has no manifest.json", id="manifest-missing"),
]


@pytest.mark.parametrize(("damage", "words"), DAMAGES)
def test_a_damaged_or_foreign_index_stops_the_service_from_starting_with_a_clear_error(
    built_store, tmp_path, damage, words
):
    source, folder_name, other = built_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    folder = store / "indexes" / folder_name
    damage(folder, other)
    with pytest.raises(ServiceStartError) as info:
        EmbeddingService(store, model="hash:64", registry="bundled", export_env=False, start_timeout=60).start()
    message = str(info.value).splitlines()[0]
    assert "ToolIndexError" in message and str(folder) in message and words in message, message
    assert "delete the folder to rebuild it" in message
    assert not (store / "run" / "service.sock").exists()  # it did not stay up half-working


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"a": {"description": 5}}', "tool 'a': field 'description' must be a non-empty string, got int"),
        ('{"a": {\n "description": "x",\n}', "invalid JSON at line 3, column 1"),
        (None, "registry file not found"),
    ],
)
def test_a_bad_registry_stops_the_service_from_starting_with_a_clear_error(tmp_path, content, words):
    registry = tmp_path / "tools.json"
    if content is not None:
        registry.write_text(content)
    with pytest.raises(ServiceStartError) as info:
        EmbeddingService(
            tmp_path / "store", model="hash:64", registry=registry, export_env=False, start_timeout=60
        ).start()
    message = str(info.value).splitlines()[0]
    assert "RegistryError" in message and str(registry) in message and words in message, message


def test_an_unknown_model_stops_the_service_from_starting_with_a_clear_error(tmp_path):
    with pytest.raises(ServiceStartError, match="unknown model spec 'gpt:nothing'"):
        EmbeddingService(tmp_path / "store", model="gpt:nothing", export_env=False, start_timeout=60).start()


# -- another protocol version -------------------------------------------------------------------------


def test_a_client_speaking_another_protocol_version_is_told_so(service, monkeypatch):
    # Before the fix the error came back with id 0 and this client waited ten minutes for its
    # own reply: a short timeout makes that a failure, not a hang.
    with monkeypatch.context() as patched:
        patched.setattr(protocol, "VERSION", 2)
        with pytest.raises(ValueError, match="protocol version 2 is not supported; this service speaks 1"):
            SharedEmbeddingManager(service.address, on_failure="error", request_timeout=30)
    with connect_raw(service.address) as sock:
        for version in (0, None, "1", 2, [1]):
            message = {"id": 1, "op": "hello"} | ({"v": version} if version is not None else {})
            reply = exchange(sock, message)
            assert reply["error"]["code"] == "version", (version, reply)
            assert "this service speaks 1" in reply["error"]["message"]
    _still_serving(service.address, "served after other versions")
