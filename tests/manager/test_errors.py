"""One home for errors (issue 23): every exception under ``EmbedshareError``, importable from
``embedshare``, and one code table, so a failure raises the same class in-process and through
the service, and HTTP answers it with the table's status (a cache failure is not a 500)."""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import multiprocessing
import pickle
import pkgutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers.extras import requires

import embedshare
from embedshare import errors
from embedshare.access import SharedEmbeddingManager
from embedshare.errors import WIRE_ERRORS, EmbedshareError, RemoteError, from_code, wire_error
from embedshare.manager import EmbeddingManager

# Raised and caught inside the service; a user never meets them, so `embedshare` does not export them.
INTERNAL = {"HandshakeError", "TokenInputError", "ServiceArgvError", "ApiError"}


def _package_modules() -> Iterator[str]:
    yield "embedshare"
    for module in pkgutil.walk_packages(embedshare.__path__, "embedshare."):
        if not module.name.endswith(".__main__"):  # runs a command when imported
            yield module.name


def test_every_exception_class_of_the_package_is_an_embedshare_error():
    found, outside = set(), []
    for name in _package_modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # needs an extra this machine does not have
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, BaseException) or issubclass(cls, Warning):
                continue
            if not cls.__module__.startswith("embedshare"):
                continue  # imported from a library
            found.add(cls)
            if not issubclass(cls, EmbedshareError):
                outside.append(f"{cls.__module__}.{cls.__qualname__}")
    assert not outside, outside
    assert len(found) >= 35  # the walk saw them all, not a part of the tree


def test_every_public_exception_is_importable_from_embedshare():
    from embedshare import CacheFullError, EmbedderError, SettingError, TaskFailed  # the three, and more

    assert (CacheFullError, TaskFailed, SettingError, EmbedderError) == (
        errors.CacheFullError,
        errors.TaskFailed,
        errors.SettingError,
        errors.EmbedderError,
    )
    defined = {
        name
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, EmbedshareError) and cls.__module__ == "embedshare.errors"
    }
    assert defined - INTERNAL <= set(embedshare.__all__), sorted(defined - INTERNAL - set(embedshare.__all__))
    for name in defined - INTERNAL:
        assert getattr(embedshare, name) is getattr(errors, name)


@pytest.mark.parametrize(
    ("name", "bases"),
    [
        ("InvalidTextError", (ValueError,)),
        ("SettingError", (ValueError,)),
        ("ModelMismatchError", (ValueError,)),
        ("EmbedderError", (RuntimeError,)),
        ("CacheFullError", (RuntimeError,)),
        ("TaskFailed", (RuntimeError,)),
        ("ServiceUnavailable", (ConnectionError,)),
        ("ServiceAuthenticationError", (ConnectionError, PermissionError)),
        ("UnsafeStoreError", (PermissionError,)),
        ("UnknownToolError", (KeyError,)),
        ("ArgumentError", (TypeError, ValueError)),
    ],
)
def test_each_exception_keeps_the_stdlib_base_users_catch(name, bases):
    cls = getattr(embedshare, name)
    assert issubclass(cls, EmbedshareError)
    for base in bases:
        assert issubclass(cls, base), base


def test_the_table_maps_each_code_to_one_class_and_back():
    assert len({e.code for e in WIRE_ERRORS}) == len({e.exception for e in WIRE_ERRORS}) == len(WIRE_ERRORS)
    for entry in WIRE_ERRORS:
        exc = from_code(entry.code, "what went wrong")
        assert type(exc) is entry.exception and str(exc) == "what went wrong"
        assert wire_error(exc) is entry
    other = from_code("bad_request", "texts[0] must be a str")  # a protocol's own code: no class of its own
    assert type(other) is RemoteError and other.code == "bad_request"

    class SomeCacheError(errors.CacheError):
        pass

    assert wire_error(SomeCacheError("x")).code == "cache_error"  # the nearest base in the table
    assert wire_error(errors.CacheFullError("x")).code == "cache_full"
    assert wire_error(ValueError("x")) is None


# -- the same failure, three ways -----------------------------------------------------------------


class _RefusingUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible API that refuses every request with a 400 (not retried)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": {"message": "upstream refuses this text", "type": "invalid_request_error"}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_upstream(monkeypatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        yield "openai:text-embedding-3-small"  # a known size: no probe request at start
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@requires("openai")
@requires("http")
def test_a_model_failure_is_an_embedder_error_in_process_and_through_the_service(
    refusing_upstream, make_service, tmp_path
):
    import httpx

    model = refusing_upstream
    local = EmbeddingManager(tmp_path / "local", model=model, registry=None)
    try:
        with pytest.raises(errors.EmbedderError, match="upstream refuses this text"):
            local.get_embedding("a text the model refuses")
    finally:
        local.close()

    service = make_service(model=model, registry=None, http="127.0.0.1:0", export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    try:
        with pytest.raises(errors.EmbedderError, match="upstream refuses this text"):
            client.get_embedding("a text the model refuses")
    finally:
        client.close()
    reply = httpx.post(f"{service.http_url}/v1/embeddings", json={"model": model, "input": "refused"}, timeout=60)
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "model_error"
    assert "upstream refuses this text" in reply.json()["error"]["message"]


@requires("http")
def test_a_text_the_model_cannot_take_is_invalid_text_error_through_the_socket_and_http(make_service):
    import httpx

    from embedshare.client.connection import ServiceConnection

    service = make_service(registry=None, http="127.0.0.1:0", export_env=False)
    conn = ServiceConnection(service.address)
    try:
        with pytest.raises(errors.InvalidTextError, match="empty"):  # as EmbeddingManager raises it
            conn.request("embed", timeout=60, texts=[""])
    finally:
        conn.close()
    reply = httpx.post(
        f"{service.http_url}/v1/embeddings", json={"model": "hash:64", "input": ["a text", ""]}, timeout=60
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("invalid_text", "input", "invalid_request_error")
    assert "empty" in error["message"]


def _samples() -> list[EmbedshareError]:
    """One instance of every public exception class, built as embedshare builds it."""
    special: dict[str, EmbedshareError] = {
        "AlreadyRunning": errors.AlreadyRunning(4242),
        "RemoteError": RemoteError("internal", "the model thread died"),
        "ProtocolError": errors.ProtocolError("bad_frame", "a frame of 3 bytes"),
        "ServiceStartError": errors.ServiceStartError("exited with 1", log_tail="Traceback ..."),
        "TaskFailed": errors.TaskFailed("2 of 5 tasks failed", ["task 1: ValueError", "task 3: KeyError"]),
    }
    samples = []
    for name, cls in sorted(vars(errors).items()):
        if inspect.isclass(cls) and issubclass(cls, EmbedshareError) and cls.__module__ == errors.__name__:
            samples.append(special.get(name) or cls(f"what went wrong in {name}"))
    return samples


def _raise(exc: BaseException) -> None:
    raise exc


def _same(got: BaseException, sent: BaseException) -> None:
    assert type(got) is type(sent)
    assert str(got) == str(sent)
    assert got.args == sent.args
    assert vars(got) == vars(sent)


@pytest.mark.parametrize("exc", _samples(), ids=lambda exc: type(exc).__name__)
def test_every_exception_pickles_back_to_itself(exc):
    """multiprocessing and concurrent.futures pickle a worker's exception to the parent."""
    _same(pickle.loads(pickle.dumps(exc)), exc)


def test_an_exception_raised_in_a_process_pool_worker_reaches_the_caller():
    """Before, a RemoteError raised in a ProcessPoolExecutor worker could not be rebuilt in
    the parent (its __init__ takes a code and a message): the caller got a TypeError."""
    sent = [
        RemoteError("internal", "the model thread died"),
        errors.AlreadyRunning(7),
        errors.TaskFailed("1 of 3 tasks failed", ["task 2: ValueError"]),
    ]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        for exc in sent:
            with pytest.raises(type(exc)) as caught:
                pool.submit(_raise, exc).result(timeout=120)
            _same(caught.value, exc)
