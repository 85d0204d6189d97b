"""A real local HTTP server speaking the OpenAI embeddings protocol: the bench's simulated API.

In the package so that ``embedshare bench`` runs from an installed copy (:func:`serve_in_process`
runs it in a process of its own, with added latency). It is the one copy: the tests' double
(``tests/helpers/fake_openai.py``, ``FakeOpenAIServer``) is this server plus scripted faults,
which the bench never needs.

Why a real server rather than mocking httpx: the embedder's retries, timeouts, headers, URL
building and JSON handling all go through the genuine network stack this way.

    with LocalOpenAIServer(dim=64, api_key="sk-test", latency=0.15) as server:
        embedder = OpenAIEmbedder("m", base_url=server.base_url, dim=64)
        embedder.embed(["hello"])
        server.requests                              # everything it received, in order

Vectors are deterministic: :meth:`LocalOpenAIServer.vector` (a seeded hash of the text, cut to
``dimensions`` and renormalised, as OpenAI's v3 models do). The server binds to loopback only,
caps request bodies, and runs in a daemon thread. Paths served: ``{anything}/embeddings``
(OpenAI style, e.g. ``/v1/embeddings``) and ``/openai/deployments/{name}/embeddings`` with an
``api-version`` query (Azure style). What it answers to a request is ``fake_openai_answers``;
this module speaks HTTP and records what it received.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .fake_openai_answers import answer, error_body, fake_vector, request_inputs

__all__ = ["LocalOpenAIServer", "RecordedRequest", "ServerProcess", "serve_in_process"]

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. ``time`` is ``time.monotonic()`` on arrival."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any  # decoded JSON, or None if it was not JSON
    inputs: list[str]
    status: int  # what the server answered (0 for a dropped connection)


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# What the server answers: status, a JSON payload (or raw bytes), extra headers.
Answer = tuple[int, Any, dict[str, str]]


class LocalOpenAIServer:
    """OpenAI-compatible embeddings server on ``127.0.0.1`` with an ephemeral port.

    ``dim`` is the native output size (``dimensions`` in a request may shrink it);
    ``api_key``, when set, is required as ``Authorization: Bearer`` or ``api-key``;
    ``latency`` adds a fixed delay to every request; ``reverse_order`` returns ``data`` items
    in reverse (with correct ``index`` values) to test that clients sort by index;
    ``floats_only`` answers JSON floats whatever ``encoding_format`` asks, as some
    OpenAI-compatible servers do.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        api_key: str | None = None,
        latency: float = 0.0,
        reverse_order: bool = False,
        floats_only: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{type(self).__name__} only serves loopback, not {host!r}")
        self.dim = dim
        self.api_key = api_key
        self.latency = latency
        self.reverse_order = reverse_order
        self.floats_only = floats_only
        self._host = host
        self._state = _State()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer((self._host, 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # idle keep-alive connections must not block stop()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-openai-server",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` — the Azure ``base_url`` (endpoint)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` — the OpenAI-style ``base_url``."""
        return f"{self.root_url}/v1"

    # ---------------------------------------------------------------- what it received

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request answered so far, sorted by arrival time.

        A request is recorded when its answer is sent, so one held up by ``latency`` or a
        scripted delay appears only once that wait is over.
        """
        with self._state.lock:
            return sorted(self._state.requests, key=lambda r: r.time)

    def reset(self) -> None:
        """Forget recorded requests."""
        with self._state.lock:
            self._state.requests.clear()

    # ---------------------------------------------------------------- vectors

    def vector(self, text: str, dimensions: int | None = None) -> np.ndarray:
        """The unit-length float64 vector this server returns for ``text``."""
        return fake_vector(text, self.dim, dimensions)

    # ---------------------------------------------------------------- internals

    def _script(self, good: Answer) -> Answer | None:
        """What to send instead of a good (200) answer; None drops the connection unanswered.
        The bench's server sends it as it is; the tests' double scripts faults here."""
        return good

    def _record(self, request: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    fake: LocalOpenAIServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    timeout = 10  # idle keep-alive connections end on their own
    disable_nagle_algorithm = True  # headers and body go out in two writes; avoid 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib signature
        pass  # quiet: tests inspect .requests instead

    def do_GET(self) -> None:  # the stdlib naming
        self._answer_error(405, "Only POST is supported")

    def do_POST(self) -> None:  # the stdlib naming
        arrived = time.monotonic()
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._finish(arrived, split.path, query, headers, None, [], 413, error_body(413, "Request body too large"))
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        inputs = request_inputs(body)
        fake = self.fake
        if fake.latency:
            time.sleep(fake.latency)

        status, payload, extra = answer(
            split.path,
            query,
            headers,
            body,
            inputs,
            dim=fake.dim,
            api_key=fake.api_key,
            floats_only=fake.floats_only,
            reverse_order=fake.reverse_order,
        )
        if status == 200:
            scripted = fake._script((status, payload, extra))
            if scripted is None:
                fake._record(RecordedRequest(arrived, "POST", split.path, query, headers, body, inputs, 0))
                self.close_connection = True
                return
            status, payload, extra = scripted
        self._finish(arrived, split.path, query, headers, body, inputs, status, payload, extra)

    def _answer_error(self, status: int, message: str) -> None:
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        payload = error_body(status, message)
        self._finish(time.monotonic(), split.path, {}, headers, None, [], status, payload)

    def _finish(
        self,
        arrived: float,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        inputs: list[str],
        status: int,
        payload: Any,
        extra: dict[str, str] | None = None,
    ) -> None:
        # Record before answering, so a client that has its answer always finds it recorded.
        self.fake._record(RecordedRequest(arrived, self.command, path, query, headers, body, inputs, status))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out)


# ---------------------------------------------------------------- a server in its own process


def _usage(requests: list[RecordedRequest]) -> dict[str, int]:
    """What the API served: requests answered with 200, the inputs they held, distinct ones."""
    ok = [r for r in requests if r.status == 200]
    distinct = {
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for r in ok for t in r.inputs
    }
    return {"requests": len(ok), "inputs": sum(len(r.inputs) for r in ok), "distinct_inputs": len(distinct)}


def _server_process(conn: Any, dim: int, api_key: str | None, latency: float) -> None:
    """Body of :class:`ServerProcess`: serve until told to stop; answer usage questions."""
    with LocalOpenAIServer(dim=dim, api_key=api_key, latency=latency) as server:
        conn.send(server.base_url)
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command == "usage":
                conn.send(_usage(server.requests))
            elif command == "stop":
                conn.send("stopped")
                return


class ServerProcess:
    """A :class:`LocalOpenAIServer` in a process of its own (spawned), so that its threads do
    not compete with the GIL of the process that measures. ``usage()`` asks what it served."""

    def __init__(self, dim: int, api_key: str | None = None, latency: float = 0.0) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_server_process, args=(child, dim, api_key, latency), daemon=True, name="fake-openai-server"
        )
        self.process.start()
        child.close()
        self.base_url: str = self._conn.recv()

    def usage(self) -> dict[str, int]:
        self._conn.send("usage")
        return self._conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send("stop")
                self._conn.recv()
            except (EOFError, OSError):
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_process(dim: int, api_key: str | None = None, latency: float = 0.0) -> ServerProcess:
    """Start a fake OpenAI server in its own process; use as a context manager."""
    return ServerProcess(dim, api_key=api_key, latency=latency)
