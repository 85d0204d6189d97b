"""OpenAIEmbedder against a real local HTTP server (helpers.fake_openai); nothing is mocked."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from helpers.extras import requires
from helpers.fake_openai import FakeOpenAIServer

from embedshare.embedders import EmbedderError, InvalidTextError, create_embedder
from embedshare.embedders.openai import OpenAIEmbedder

pytestmark = requires("openai")  # every embedder here is the SDK's client

KEY = "sk-test-SECRET-0123456789abcdef"
DIM = 32
TEXTS = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta", "iota", "kappa lambda"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dim=DIM, api_key=KEY) as srv:
        yield srv


@pytest.fixture
def make(server: FakeOpenAIServer) -> Iterator[Callable[..., OpenAIEmbedder]]:
    """Build embedders pointed at the server; closes them afterwards."""
    made: list[OpenAIEmbedder] = []

    def factory(model: str = "test-model", **options: object) -> OpenAIEmbedder:
        options.setdefault("base_url", server.base_url)
        options.setdefault("dim", DIM)
        options.setdefault("timeout", 5.0)
        embedder = OpenAIEmbedder(model=model, **options)  # type: ignore[arg-type]
        made.append(embedder)
        return embedder

    yield factory
    for embedder in made:
        embedder.close()


def expected(server: FakeOpenAIServer, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    return np.stack([server.vector(t, dimensions) for t in texts]).astype(np.float32)


# ------------------------------------------------------------------ success paths


def test_embed_returns_server_vectors_with_bearer_auth(server, make):
    embedder = make()
    out = embedder.embed(TEXTS[:3])

    assert out.dtype == np.float32 and out.shape == (3, DIM)
    np.testing.assert_allclose(out, expected(server, TEXTS[:3]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    (req,) = server.requests
    assert req.path == "/v1/embeddings"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in req.headers
    assert req.body == {"model": "test-model", "input": TEXTS[:3], "encoding_format": "base64"}
    assert embedder.model_id == "openai:test-model"


def test_batching_splits_at_batch_size(server, make):
    embedder = make(batch_size=3)
    out = embedder.embed(TEXTS)

    assert [r.inputs for r in server.requests] == [TEXTS[0:3], TEXTS[3:6], TEXTS[6:7]]
    np.testing.assert_allclose(out, expected(server, TEXTS), atol=1e-6)
    assert embedder.stats()["requests"] == 3
    assert embedder.stats()["texts"] == len(TEXTS)


def test_order_restored_by_index(server, make):
    server.reverse_order = True
    out = make().embed(TEXTS)

    np.testing.assert_allclose(out, expected(server, TEXTS), atol=1e-6)
    assert len(server.requests) == 1


def test_empty_input_sends_nothing_and_bad_text_is_rejected_locally(server, make):
    embedder = make()
    assert embedder.embed([]).shape == (0, DIM)
    with pytest.raises(InvalidTextError):
        embedder.embed(["ok", ""])
    assert server.requests == []


def test_concurrent_callers_get_their_own_vectors(server, make, run_threads):
    embedder = make(batch_size=2)
    groups = [[f"thread {i} text {j}" for j in range(5)] for i in range(6)]
    results = run_threads(len(groups), lambda i: embedder.embed(groups[i]))
    for i, group in enumerate(groups):
        np.testing.assert_allclose(results[i], expected(server, group), atol=1e-6)
    assert len(server.requests) == 6 * 3


# ------------------------------------------------------------------ retries


def test_429_with_retry_after_is_honoured(server, make):
    server.fail_next(429, retry_after=1.5)
    out = make().embed(TEXTS[:2])

    np.testing.assert_allclose(out, expected(server, TEXTS[:2]), atol=1e-6)
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.4  # the SDK's own first backoff is at most 0.5 s


def test_429_without_retry_after_uses_backoff(server, make):
    server.fail_next(429, times=2)
    embedder = make()
    embedder.embed(["x"])

    assert [r.status for r in server.requests] == [429, 429, 200]
    assert embedder.stats()["retries"] == 2


def test_retry_after_http_date_is_parsed(server, make):
    future = email.utils.formatdate(time.time() + 3, usegmt=True)  # whole seconds: 2-3 s from now
    server.fail_next(429, retry_after=future)
    make().embed(["x"])

    first, second = server.requests
    assert second.time - first.time >= 1.5  # the date was understood (not the SDK's <= 0.5 s)


def test_a_retry_after_past_two_minutes_fails_at_once(server, make):
    """The SDK obeys Retry-After up to 120 s; past that it does not retry: the service's
    model thread is not held for the ten minutes a server asks for."""
    server.fail_next(429, retry_after=600, message="slow down")
    with pytest.raises(EmbedderError, match="HTTP 429: slow down") as info:
        make().embed(["x"])
    assert "attempts" not in str(info.value)
    assert [r.status for r in server.requests] == [429]


def test_500_then_success(server, make):
    server.fail_next(500)
    server.fail_next(503)
    out = make().embed(["x", "y"])

    assert [r.status for r in server.requests] == [500, 503, 200]
    np.testing.assert_allclose(out, expected(server, ["x", "y"]), atol=1e-6)


def test_dropped_connection_is_retried(server, make):
    server.fail_next("disconnect")
    out = make().embed(["x"])

    assert [r.status for r in server.requests] == [0, 200]
    np.testing.assert_allclose(out, expected(server, ["x"]), atol=1e-6)


def test_timeout_is_retried(server, make, wait_for):
    server.fail_next("delay", delay=0.6)
    embedder = make(timeout=0.2)
    out = embedder.embed(["x"])

    np.testing.assert_allclose(out, expected(server, ["x"]), atol=1e-6)
    assert embedder.stats() == {"requests": 2, "retries": 1, "texts": 1, "failures": 0}
    # the timed-out request is recorded once the server's delay ends
    wait_for(lambda: len(server.requests) >= 2, 3, "the timed-out request to be recorded")
    assert len(server.requests) == 2


def test_gives_up_after_max_retries(server, make, caplog):
    server.fail_next(500, times=10, message="the engine is on fire")
    embedder = make(max_retries=2)
    with caplog.at_level(logging.DEBUG, logger="embedshare.embedders.openai"), pytest.raises(EmbedderError) as info:
        embedder.embed(["x"])

    message = str(info.value)
    assert "after 3 attempts" in message
    assert "HTTP 500" in message and "the engine is on fire" in message
    assert len(server.requests) == 3
    ours = [r for r in caplog.records if r.name == "embedshare.embedders.openai"]
    assert len(ours) == 1 and ours[0].levelno == logging.WARNING and "giving up" in ours[0].getMessage()


# ------------------------------------------------------------------ bad responses


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("malformed_json", "not valid JSON"),
        ("no_data", "no 'data' list"),
        ("wrong_count", "1 embeddings for 2 inputs"),
        ("wrong_dim", f"dimension {DIM - 1}, expected {DIM}"),
        ("nan", "NaN or infinite"),
        ("non_numeric", "not valid base64"),
        ("missing_index", "missing or non-integer 'index'"),
        ("duplicate_index", "duplicate index 0"),
    ],
)
def test_bad_response_is_rejected_without_retry(server, make, fault, problem):
    server.fail_next(fault)
    embedder = make()
    with pytest.raises(EmbedderError, match=problem):
        embedder.embed(["one", "two"])
    assert len(server.requests) == 1
    assert embedder.stats()["failures"] == 1
    # the embedder is still usable afterwards
    np.testing.assert_allclose(embedder.embed(["one"]), expected(server, ["one"]), atol=1e-6)


def test_a_server_that_answers_floats_is_understood_and_checked(make):
    with FakeOpenAIServer(dim=DIM, api_key=KEY, floats_only=True) as floats:
        embedder = make(base_url=floats.base_url)
        np.testing.assert_allclose(embedder.embed(["one", "two"]), expected(floats, ["one", "two"]), atol=1e-6)
        floats.fail_next("non_numeric")
        with pytest.raises(EmbedderError, match="non-numeric"):
            embedder.embed(["one", "two"])


# ------------------------------------------------------------------ client errors and the key


def test_401_fails_at_once_and_hides_the_key(server, make):
    server.fail_next(401, message=f"Incorrect API key provided: {KEY}.")
    with pytest.raises(EmbedderError) as info:
        make().embed(["x"])

    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message
    assert "invalid_request_error" in message
    assert KEY not in message
    assert len(server.requests) == 1


def test_wrong_key_is_rejected_by_the_server(server, make, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-987")
    with pytest.raises(EmbedderError, match="HTTP 401") as info:
        make().embed(["x"])
    assert "sk-wrong-key-987" not in str(info.value)
    assert len(server.requests) == 1


def test_missing_key_sends_no_auth_and_says_which_variable(server, make, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(EmbedderError, match="OPENAI_API_KEY is not set"):
        make().embed(["x"])
    (req,) = server.requests
    assert "authorization" not in req.headers


def test_custom_key_variable(server, make, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_EMBED_KEY", KEY)
    make(api_key_env="MY_EMBED_KEY").embed(["x"])
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_400_is_not_retried(server, make):
    server.fail_next(400, message="This model's maximum context length is 8192 tokens")
    with pytest.raises(EmbedderError, match="HTTP 400: This model's maximum context length"):
        make().embed(["x"])
    assert len(server.requests) == 1


def test_key_never_in_repr_model_id_errors_or_logs(server, make, caplog):
    embedder = make(deployment=None)
    server.fail_next(429, retry_after=0.01)
    server.fail_next("disconnect")
    server.fail_next(500, message=f"upstream said {KEY}")
    with caplog.at_level(logging.DEBUG):
        embedder.embed(["a", "b"])
        server.fail_next(500, times=10, message=f"bad key {KEY}")
        with pytest.raises(EmbedderError) as retried:
            make(max_retries=1).embed(["c"])
        server.clear_faults()
        server.fail_next(401, message=f"Incorrect API key provided: {KEY}")
        with pytest.raises(EmbedderError) as rejected:
            embedder.embed(["d"])

    assert len(caplog.records) > 3  # retries and the give-up were logged
    assert KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    for text in (
        repr(embedder),
        str(embedder),
        embedder.model_id,
        str(embedder.stats()),
        str(retried.value),
        str(rejected.value),
        repr(rejected.value),
    ):
        assert KEY not in text
    assert not any(KEY in str(v) for v in vars(embedder).values())


# ------------------------------------------------------------------ dimensions and dim


def test_dimensions_is_sent_and_honoured(server, make):
    embedder = make(dimensions=8, dim=None)
    out = embedder.embed(["x", "y"])

    assert embedder.dim == 8 and out.shape == (2, 8)
    assert server.requests[0].body["dimensions"] == 8
    np.testing.assert_allclose(out, expected(server, ["x", "y"], dimensions=8), atol=1e-6)
    assert embedder.model_id == "openai:test-model@dimensions=8"


def test_known_model_dims_need_no_request(server, make):
    assert make("text-embedding-3-large", dim=None).dim == 3072
    assert make("text-embedding-ada-002", dim=None).dim == 1536
    assert server.requests == []


def test_unknown_dim_is_discovered_by_one_probe(server, make):
    embedder = make("my-local-model", dim=None)
    assert embedder.dim == DIM
    assert [r.inputs for r in server.requests] == [["dimension probe"]]
    embedder.embed(["x"])
    assert len(server.requests) == 2


def test_unknown_dim_is_learned_from_first_embed(server, make):
    embedder = make("my-local-model", dim=None)
    out = embedder.embed(["x", "y"])
    assert out.shape == (2, DIM) and embedder.dim == DIM
    assert len(server.requests) == 1


def test_conflicting_dim_and_dimensions_rejected():
    with pytest.raises(ValueError, match="contradicts"):
        OpenAIEmbedder(model="m", dim=10, dimensions=20, base_url="http://127.0.0.1:9")


# ------------------------------------------------------------------ Azure, env, factory


def test_azure_url_and_api_key_header(server, make):
    embedder = make(base_url=server.root_url, deployment="my-embed", api_version="2024-06-01")
    out = embedder.embed(["x"])

    (req,) = server.requests
    assert req.path == "/openai/deployments/my-embed/embeddings"
    assert req.query == {"api-version": "2024-06-01"}
    assert req.headers["api-key"] == KEY
    assert "authorization" not in req.headers
    np.testing.assert_allclose(out, expected(server, ["x"]), atol=1e-6)
    assert embedder.model_id == "openai:test-model@deployment=my-embed"


def test_azure_endpoint_from_environment(server, make, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.root_url)
    make(base_url=None, deployment="dep").embed(["x"])
    assert server.requests[0].path == "/openai/deployments/dep/embeddings"
    assert "api-version" in server.requests[0].query


def test_base_url_from_environment(server, make, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    make(base_url=None).embed(["x"])
    assert len(server.requests) == 1


def test_create_embedder_spec(monkeypatch):
    with FakeOpenAIServer(dim=1536, api_key=KEY) as server:
        embedder = create_embedder("openai:text-embedding-3-small", base_url=server.base_url)
        try:
            assert isinstance(embedder, OpenAIEmbedder)
            assert embedder.model_id == "openai:text-embedding-3-small"
            assert embedder.dim == 1536
            assert server.requests == []  # known model: no probe
            out = embedder.embed(["hello world"])
            assert out.shape == (1, 1536)
            np.testing.assert_allclose(out, expected(server, ["hello world"]), atol=1e-6)
            assert server.requests[0].body["model"] == "text-embedding-3-small"
        finally:
            embedder.close()
