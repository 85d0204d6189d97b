"""The HTTP endpoint under hostile input, and its bearer token (issue 11, findings 3-5).

- Every malformed request gets a 4xx in OpenAI's error shape, never a 500 and never a
  traceback in the log: JSON nested too deep for the parser, bad encodings, bodies too large,
  too slow or cut off, wrong types and content types, and bad HTTP framing (which uvicorn
  answered in plain text).
- The token: off by default on loopback; when set, every request needs ``Authorization: Bearer``
  (the openai client's ``api_key``); a non-loopback host needs one unless ``http_no_auth``.
  The token is in no log, stats or state file.
- A flood of malformed requests leaves one log line per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time

import pytest
from helpers.extras import requires, skip_module_unless
from helpers.figures import record
from helpers.services import running_service

from embedshare.service.launcher import EmbeddingService

skip_module_unless("http")  # the endpoint
skip_module_unless("dev", "httpx")  # its client here

import httpx

MODEL = "hash:64"


@pytest.fixture(scope="module")
def slow_body_service(tmp_path_factory):
    """Deadlines short enough to test: 1 s for headers and for a body."""
    store = tmp_path_factory.mktemp("hardening") / "store"
    with running_service(
        store,
        MODEL,
        registry=None,
        http="127.0.0.1:0",
        export_env=False,
        limits={"first_frame_timeout": 1.0, "frame_timeout": 1.0},
    ) as service:
        yield service


def _raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the endpoint; everything it answers until it closes."""
    host, port = url[len("http://") :].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def _openai_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def _post(url: str, content: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/embeddings", content=content, timeout=30, headers={"content-type": content_type, **headers}
    )


MALFORMED = {
    "nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "nested objects": b'{"input": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    "nested input": b'{"model": "hash:64", "input": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "not utf-8": b'{"model": "hash:64", "input": "\xff\xfe"}',
    "utf-16 garbage": '{"input": "\ud800"}'.encode("utf-16", "surrogatepass"),
    "lone surrogate escape": b'{"model": "hash:64", "input": "\\ud800"}',
    "huge integer": b'{"model": "hash:64", "input": ' + b"9" * 5000 + b"}",
    "NaN input": b'{"model": "hash:64", "input": NaN}',
    "input of objects": b'{"model": "hash:64", "input": [{"a": 1}]}',
    "model a list": b'{"model": ["hash:64"], "input": "x"}',
    "encoding a dict": b'{"model": "hash:64", "input": "x", "encoding_format": {"a": 1}}',
    "dimensions a string": b'{"model": "hash:64", "input": "x", "dimensions": "64"}',
    "body a string": b'"just a string"',
    "empty body": b"",
    "truncated": b'{"model": "hash:64", "input": ["a", ',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_body_gets_an_openai_4xx_never_a_500(slow_body_service, name):
    response = _post(slow_body_service.http_url, MALFORMED[name])
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert "Traceback" not in slow_body_service.log_tail(2000)


def test_deep_nesting_is_named_in_the_error(slow_body_service):
    response = _post(slow_body_service.http_url, MALFORMED["nested arrays"])
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "the body is not valid JSON: it nests too deeply",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }


def test_wrong_content_type_and_too_large_bodies(slow_body_service):
    url = slow_body_service.http_url
    assert _post(url, b'{"model": "hash:64", "input": "x"}', content_type="text/plain").status_code == 415
    raw = _raw(
        url,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999999\r\n\r\n",
    )
    assert _openai_error(raw)[0] == 413


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("headers too large", b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n"),
        ("bad content-length", b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"),
        (
            "bad chunk size",
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
    ],
)
def test_bad_http_framing_gets_an_openai_shaped_400(slow_body_service, name, request_bytes):
    status, error = _openai_error(_raw(slow_body_service.http_url, request_bytes))
    assert status == 400, name
    assert error["code"] == "bad_request" and error["message"].startswith("malformed HTTP request")


def test_a_body_that_trickles_gets_a_408_and_a_silent_connection_is_closed(slow_body_service):
    url = slow_body_service.http_url
    started = time.monotonic()
    raw = _raw(
        url,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":',
        timeout=30,
    )
    assert _openai_error(raw) == (
        408,
        {
            "message": "the body did not arrive within 1 s",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        },
    )
    # headers that never finish: closed by the header deadline (1 s here), with no reply
    assert _raw(url, b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0", timeout=30) == b""
    assert _raw(url, b"", timeout=30) == b""  # nothing at all
    seconds = time.monotonic() - started
    assert slow_body_service.stats()["limits"]["http"]["timed_out"] >= 2
    assert seconds < 25
    # a client that leaves mid-body is no error of the service's
    host, port = url[len("http://") :].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
    assert _post(url, b'{"model": "hash:64", "input": "still fine"}').status_code == 200
    assert "Traceback" not in slow_body_service.log_tail(2000)


def test_malformed_requests_in_a_flood_are_logged_once_per_interval(slow_body_service):
    url = slow_body_service.http_url
    for _ in range(300):
        assert _openai_error(_raw(url, b"GARBAGE\r\n\r\n"))[0] == 400
    log = slow_body_service.log_tail(100_000)
    assert log.count("Invalid HTTP request received") <= 2, log[-2000:]
    record("http_malformed_flood", requests=300, log_lines=log.count("Invalid HTTP request received"))


# -- the bearer token ----------------------------------------------------------------------------------


def test_loopback_needs_no_token_by_default(slow_body_service):
    assert _post(slow_body_service.http_url, b'{"model": "hash:64", "input": "x"}').status_code == 200


@requires("openai")
def test_with_a_token_every_request_must_carry_it(make_service, token_file):
    import openai

    token = token_file.read_text().strip()
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", http_token_file=token_file, export_env=False)
    url = service.http_url
    body = b'{"model": "hash:64", "input": "x"}'
    refused = [
        _post(url, body),
        _post(url, body, authorization="Bearer " + "0" * len(token)),
        _post(url, body, authorization=token),
        httpx.get(f"{url}/v1/models"),
        httpx.get(f"{url}/metrics"),
    ]
    for response in refused:
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert _post(url, body, authorization=f"Bearer {token}").status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no secret
    assert httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}).status_code == 200
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=token)
    assert len(client.embeddings.create(model="hash:64", input=["a", "b"]).data) == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key").embeddings.create(model="hash:64", input="a")
    stats = service.stats()
    assert stats["auth_failures"] >= len(refused)
    texts = {"stats": json.dumps(stats), "state": service.layout.state.read_text(), "log": service.log_tail(5000)}
    for where, text in texts.items():
        assert token not in text, f"the HTTP token leaked into the {where}"
    assert "refused an HTTP request" in texts["log"]


def test_a_token_from_the_environment(make_service, monkeypatch):
    token = secrets.token_hex(20)
    monkeypatch.setenv("EMBEDSHARE_HTTP_TOKEN", token)
    service = make_service(MODEL, registry=None, http="127.0.0.1:0", export_env=False)
    assert _post(service.http_url, b'{"model": "hash:64", "input": "x"}').status_code == 401
    assert (
        _post(service.http_url, b'{"model": "hash:64", "input": "x"}', authorization=f"Bearer {token}").status_code
        == 200
    )


def test_beyond_loopback_a_token_is_required_unless_refused_explicitly(tmp_path):
    with pytest.raises(ValueError, match="needs a bearer token.*--http-no-auth"):  # before anything starts
        EmbeddingService(tmp_path / "a", model=MODEL, http="0.0.0.0:0", export_env=False, start_timeout=60).start()
    # the service checks it itself too (started by hand, or by an older launcher)
    from embedshare.service.config import ServiceConfig
    from embedshare.service.server import EmbeddingServer

    server = EmbeddingServer(ServiceConfig(store=str(tmp_path / "c"), model=MODEL, http="0.0.0.0:0"))
    with pytest.raises(ValueError, match="needs a bearer token"):
        asyncio.run(server._start_http())
    with EmbeddingService(
        tmp_path / "b", model=MODEL, http="0.0.0.0:0", http_no_auth=True, export_env=False, start_timeout=60
    ) as service:
        assert "serves anyone who can reach it: no token (--http-no-auth)" in service.log_tail(50)
