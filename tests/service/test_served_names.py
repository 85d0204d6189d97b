"""Names the HTTP endpoint answers to (``--served-model-name``, ``ServiceConfig.served_model_names``)
and the routes TEI and Infinity users expect besides OpenAI's: ``/embeddings`` and ``/models``
without ``/v1``, and ``/info``. A name not served stays a 404 that says how to add it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers.extras import requires, skip_module_unless
from helpers.services import START_TIMEOUT

from embedshare.service.config import ServiceConfig, service_main_args
from embedshare.service.launcher import EmbeddingService
from embedshare.settings import SettingError

skip_module_unless("http")  # the endpoint
skip_module_unless("dev", "httpx")  # its client here

import httpx

pytestmark = pytest.mark.timeout(120)

MODEL = "hash:64:v1"
NAMES = ("text-embedding-ada-002", "text-embedding-3-small")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    store = tmp_path_factory.mktemp("names") / "store"
    config = ServiceConfig(store=str(store), model="hash:64", http="127.0.0.1:0", served_model_names=NAMES)
    service = EmbeddingService(config=config, export_env=False, start_timeout=START_TIMEOUT).start()
    try:
        yield service.http_url
    finally:
        service.stop()


def vectors(url: str, model: str, path: str = "/v1/embeddings") -> np.ndarray:
    reply = httpx.post(f"{url}{path}", json={"model": model, "input": ["read a csv file", "b"]}, timeout=30)
    assert reply.status_code == 200, reply.text
    return np.asarray([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)


def test_served_names_are_listed_and_give_the_model_s_own_vectors(url):
    listed = httpx.get(f"{url}/v1/models", timeout=30).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [MODEL, *NAMES]
    assert all(m["object"] == "model" and m["owned_by"] == "embedshare" for m in listed["data"])
    for name in NAMES:
        assert httpx.get(f"{url}/v1/models/{name}", timeout=30).json()["id"] == name
        assert vectors(url, name).tobytes() == vectors(url, MODEL).tobytes()


def test_a_name_not_served_is_a_404_listing_the_names_and_the_flag(url):
    for refused in (
        httpx.post(f"{url}/v1/embeddings", json={"model": "text-embedding-3-large", "input": "a"}, timeout=30),
        httpx.get(f"{url}/v1/models/text-embedding-3-large", timeout=30),
    ):
        assert refused.status_code == 404
        error = refused.json()["error"]
        assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
        assert all(f"'{name}'" in error["message"] for name in (MODEL, *NAMES))
        assert "--served-model-name 'text-embedding-3-large'" in error["message"]


def test_routes_without_v1_as_tei_and_infinity_serve_them(url):
    assert vectors(url, "text-embedding-3-small", "/embeddings").tobytes() == vectors(url, MODEL).tobytes()
    assert httpx.get(f"{url}/models", timeout=30).json() == httpx.get(f"{url}/v1/models", timeout=30).json()
    assert httpx.get(f"{url}/models/{NAMES[0]}", timeout=30).json()["id"] == NAMES[0]


def test_info_says_what_a_client_needs_before_sending(url):
    info = httpx.get(f"{url}/info", timeout=30).json()
    assert info["model_id"] == MODEL and info["model"] == "hash:64" and info["dim"] == 64
    assert info["served_model_names"] == list(NAMES)
    assert info["max_input_chars"] == 8192 and info["max_client_batch_size"] == 2048
    assert info["encoding_formats"] == ["float", "base64"]


def test_served_names_travel_to_the_service_process_and_back(tmp_path):
    config = ServiceConfig(store=str(tmp_path), model="hash:64", served_model_names=NAMES)
    argv = config.argv()
    assert argv[argv.index("--served-model-name") :][:4] == [
        "--served-model-name",
        NAMES[0],
        "--served-model-name",
        NAMES[1],
    ]
    assert service_main_args(argv)[0] == config


@pytest.mark.parametrize("name", ["hash:128", "local", "openai:text-embedding-3-small", "", " padded", "a\nb"])
def test_a_served_name_that_is_another_model_s_spec_or_not_a_name_is_refused(tmp_path, name):
    with pytest.raises(SettingError, match="served_model_names"):
        ServiceConfig(store=str(tmp_path), model="hash:64", served_model_names=[name])


def test_serve_help_names_the_flag_and_no_option_serve_lacks():
    shown = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--served-model-name NAME" in shown
    assert "--tcp " not in shown and "--tcp\n" not in shown  # serve has no --tcp option


def test_tokenize_without_a_tokenizer_says_so(url):
    refused = httpx.post(f"{url}/tokenize", json={"inputs": "read a csv file"}, timeout=30)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "no_tokenizer"
    assert "hash:64:v1" in refused.json()["error"]["message"]


@pytest.mark.model
@requires("local")
def test_tokenize_shows_the_local_model_s_word_pieces_and_its_window(tmp_path):
    """TEI's shape; the count beyond /info's max_input_length is what the model never reads."""
    config = ServiceConfig(store=str(tmp_path / "store"), model="local", http="127.0.0.1:0")
    service = EmbeddingService(config=config, export_env=False, start_timeout=START_TIMEOUT).start()
    try:
        url = service.http_url
        assert httpx.get(f"{url}/info", timeout=30).json()["max_input_length"] == 256
        one = httpx.post(f"{url}/tokenize", json={"inputs": "Read CSV files"}, timeout=30).json()
        assert [[t["text"] for t in tokens] for tokens in one] == [["[CLS]", "Read", "CS", "V", "files", "[SEP]"]]
        assert one[0][1] == {"id": one[0][1]["id"], "text": "Read", "special": False, "start": 0, "stop": 4}
        assert one[0][0]["special"] and one[0][0]["start"] is None
        long_text = "word " * 300
        two = httpx.post(
            f"{url}/tokenize", json={"inputs": ["a b", long_text], "add_special_tokens": False}, timeout=30
        ).json()
        assert [len(tokens) for tokens in two] == [2, 300]  # every token: the model reads 256 of them
        bad = httpx.post(f"{url}/tokenize", json={"inputs": [1]}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "inputs"
    finally:
        service.stop()
