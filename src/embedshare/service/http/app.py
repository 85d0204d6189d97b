"""The service's optional OpenAI-compatible HTTP endpoint, and its Prometheus ``/metrics``.

Off by default; ``embedshare serve --http 127.0.0.1:8080`` (or ``EmbeddingService(http=...)``)
turns it on. It is a Starlette app served by uvicorn *inside the service's own asyncio loop*
(``uvicorn.Server.serve()`` runs as one more task), so an HTTP request takes exactly the path a
socket request takes, through the service's engine (``engine.py``): the LMDB cache, then the
one ``Batcher`` shared by every client (batching across clients, single-flight). An HTTP client and
25 socket clients asking for the same new text cause one model call.

Routes:

- ``POST /v1/embeddings``: OpenAI's request and response. ``input`` is a string, a list of
  strings, or token arrays (decoded with ``cl100k_base``, see ``tokens.py``). ``encoding_format``
  is ``float`` (default) or ``base64`` (little-endian float32, as OpenAI sends it).
  ``dimensions`` is accepted only when it equals the model's own dimension: our models cannot
  shorten their vectors, and a silently different size is worse than a clear 400.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one model this service embeds with. Its
  id is the model id of the cache (``hash:64:v1``, ``local:all-MiniLM-L6-v2:v1``); requests
  may also name the service's model spec (``hash:64``, ``local``) or one of its
  ``served_model_names`` (``--served-model-name``: clients' own defaults, listed here too).
  Any other model is a 404 ``model_not_found`` naming the names served and that flag:
  vectors are never returned under a name nobody gave the model.
- ``POST /embeddings``, ``GET /models`` and ``GET /models/{id}``: the same, without ``/v1``
  (TEI and Infinity serve them there). ``GET /info`` and ``POST /tokenize``: TEI's (see
  ``tokenize.py``); docs/http.md compares the routes.
- ``GET /health``, ``GET /ready`` and ``GET /metrics`` (Prometheus, OpenMetrics): answered
  from the first second, while the model loads (see ``probes.py``).

Every error has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` (``errors.py``).
The body and its ``input`` are read and checked in ``inputs.py``.

Usage counts (``prompt_tokens``, ``total_tokens``) are an estimate: one token per word and per
punctuation mark (the regex ``\\w+|[^\\w\\s]``), counted on the text as embedded (after the
8,192-character cut). embedshare bills nothing; the numbers are there for clients that read
them and to show volumes. Our hashing model has no tokenizer at all, and the local model's
word-piece tokenizer is not thread-safe to call beside the model thread, so one rule serves
both; for English it is close to what BPE tokenizers count.

Security: the endpoint binds to loopback unless given another host explicitly, and while it
is on loopback it answers only requests whose ``Host`` is a loopback name (which defeats DNS
rebinding from a web page). ``POST`` bodies must be JSON (``Content-Type: application/json``),
so a page cannot send one as a "simple" cross-site request. A bearer token
(``guard.py``) is optional on loopback and required on any other host unless
``--http-no-auth`` is given. Connections are capped and timed by the endpoint's own listener,
apart from the Unix socket's, and request bodies share a byte budget (``limits.py``). Every
malformed request gets a 4xx in OpenAI's shape, never a 500: bad JSON, nesting too deep for the
parser, bad encoding, too large, too slow, wrong types or content type, bad HTTP framing.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...client.protocol import StatsReply
from ...embedders.base import MAX_TEXT_CHARS
from ...errors import wire_error
from .errors import EXCEPTION_HANDLERS, ApiError, error_response, wire_api_error
from .inputs import input_texts
from .probes import probe_routes
from .tokenize import ModelTokenizer, max_input_length, tokenize_request

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..metrics import ServiceMetrics
    from .admission import RequestAdmission

log = logging.getLogger("embedshare.service.http")

OFFLOAD_VALUES = 200_000  # encode replies with more floats than this in a thread, off the loop
_TOKEN = re.compile(r"\w+|[^\w\s]")


# -- the app ------------------------------------------------------------------------------------


def count_tokens(texts: list[str]) -> int:
    """The usage estimate: words and punctuation marks (see the module docstring)."""
    return sum(sum(1 for _ in _TOKEN.finditer(text)) for text in texts)


def create_app(engine: Engine, admission: RequestAdmission, stats: Callable[[], StatsReply]) -> Any:
    """The ASGI app over a service's ``engine`` (and its config and metrics); requests are
    admitted by ``admission`` (its budget and limits), and ``/metrics`` reads ``stats``."""
    api = OpenAIRoutes(engine, admission)
    return Starlette(
        routes=[
            # Each OpenAI route also without /v1, as TEI and Infinity serve them: a client whose
            # base URL is the bare host (Infinity's default) finds them too.
            *(
                route
                for prefix in ("/v1", "")
                for route in (
                    Route(f"{prefix}/embeddings", api.counted(api.embeddings), methods=["POST"]),
                    Route(f"{prefix}/models", api.counted(api.list_models), methods=["GET"]),
                    Route(f"{prefix}/models/{{model:path}}", api.counted(api.get_model), methods=["GET"]),
                )
            ),
            Route("/info", api.counted(api.info), methods=["GET"]),
            Route("/tokenize", api.counted(api.tokenize), methods=["POST"]),
            *probe_routes(engine, stats),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )


class OpenAIRoutes:
    """The handlers of the API routes, over one service's ``engine``; each is wrapped by
    :meth:`counted`, which counts it and turns what it raises into an error reply."""

    def __init__(self, engine: Engine, admission: RequestAdmission) -> None:
        self.engine, self.admission = engine, admission
        self.config, self.metrics = engine.config, engine.metrics
        self.tokenizer = ModelTokenizer()

    def counted(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` counted like a socket request (requests, errors, latency); what it
        raises is an error reply: an embedshare error by its code (``errors.WIRE_ERRORS``)."""
        metrics = self.metrics

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            metrics.add(requests=1, http_requests=1)
            try:
                return await handler(request)
            except ApiError as exc:
                metrics.add(errors=1)
                return exc.response()
            except ClientDisconnect:  # it left mid-body: nobody to answer
                metrics.add(errors=1)
                return Response(status_code=400)
            except Exception as exc:  # a failing model or cache must not take the endpoint down
                metrics.add(errors=1)
                return failure_response(exc, request)
            finally:
                log_request(request, time.perf_counter() - started, metrics)

        return endpoint

    async def ready(self) -> None:
        await self.engine.ready()  # like a socket request: wait while the model loads

    def model_names(self) -> tuple[str, ...]:
        """The names a request may give: the model id, its spec, then ``--served-model-name``'s."""
        config = self.config
        return tuple(dict.fromkeys((self.engine.model_id, config.model, *config.served_model_names)))

    def checked_model(self, model: str) -> str:
        """``model`` if the service answers to it; else a 404 naming the fix (never another model)."""
        if model in self.model_names():
            return model
        raise unknown_model(model, self.engine.model_id, self.model_names())

    def model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": int(self.metrics.started), "owned_by": "embedshare"}

    async def embeddings(self, request: Request) -> Response:
        body = await self.admission.admit(request)
        await self.ready()
        engine = self.engine
        self.checked_model(requested_model(body))
        texts = await input_texts(body.get("input"), self.config.max_client_batch_size)
        encoding = requested_encoding(body)
        check_dimensions(body.get("dimensions"), engine.model_id, engine.dim)
        peer = request.client  # an HTTP client is its connection, for the batcher's fairness
        engine.serve_client(None, f"http {peer.host}:{peer.port}" if peer else None)
        vectors, _ = await engine.embed_checked(texts)  # input_texts checked them
        if vectors.size > OFFLOAD_VALUES:
            payload = await asyncio.to_thread(_reply, vectors, texts, encoding, engine.model_id)
        else:
            payload = _reply(vectors, texts, encoding, engine.model_id)
        return Response(payload, media_type="application/json")

    async def list_models(self, request: Request) -> Response:
        await self.ready()
        names = (self.engine.model_id, *self.config.served_model_names)  # the spec is the id's other spelling
        return JSONResponse({"object": "list", "data": [self.model_object(name) for name in dict.fromkeys(names)]})

    async def get_model(self, request: Request) -> Response:
        await self.ready()
        wanted = self.checked_model(request.path_params["model"])
        return JSONResponse(self.model_object(self.engine.model_id if wanted == self.config.model else wanted))

    async def tokenize(self, request: Request) -> Response:
        body = await self.admission.admit(request)
        await self.ready()
        texts, special = tokenize_request(body, self.engine.model_id, self.config.max_client_batch_size)
        return JSONResponse(await asyncio.to_thread(self.tokenizer.tokenize, texts, special))

    async def info(self, request: Request) -> Response:
        await self.ready()
        return JSONResponse(service_info(self.engine))


def failure_response(exc: Exception, request: Request) -> Response:
    """The reply to a request that raised ``exc``: its status and code in ``errors.WIRE_ERRORS``
    (a damaged cache is a 503 ``cache_damaged``, a model failure a 502), else a 500."""
    wire = wire_error(exc)
    if wire is None:
        log.exception("HTTP request %s %s failed", request.method, request.url.path)
        return error_response(500, "internal error; see the service log", type="server_error", code="internal_error")
    if wire.status >= 500:
        log.error("HTTP request %s %s failed (%s): %s", request.method, request.url.path, wire.code, exc)
    return wire_api_error(exc, wire).response()


def log_request(request: Request, seconds: float, metrics: ServiceMetrics) -> None:
    """Observe an API request's latency, and at -vv log one line for it (never its texts)."""
    metrics.observe_request(seconds)
    if log.isEnabledFor(logging.DEBUG):
        peer = request.client
        log.debug(
            "request http %s %s %.2f ms from %s",
            request.method,
            request.url.path,
            seconds * 1000,
            f"{peer.host}:{peer.port}" if peer else "?",
        )


def requested_model(body: dict[str, Any]) -> str:
    """The body's ``model``, which OpenAI's API requires."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400,
            "you must give 'model', a string; GET /v1/models lists it",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_type",
        )
    return model


def requested_encoding(body: dict[str, Any]) -> str:
    """The body's ``encoding_format``: ``float`` (also when null or left out) or ``base64``."""
    encoding = body.get("encoding_format", "float")
    if encoding is None:
        return "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
            param="encoding_format",
            code="invalid_value",
        )
    return str(encoding)


def check_dimensions(dimensions: Any, model_id: str, dim: int) -> None:
    """``dimensions`` may only be left out or name the model's own size: ours cannot shorten."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ApiError(
            400, f"'dimensions' must be an integer, got {dimensions!r}", param="dimensions", code="invalid_type"
        )
    if dimensions != dim:
        raise ApiError(
            400,
            f"model '{model_id}' cannot change its output size: 'dimensions' "
            f"must be {dim} (its own) or left out, got {dimensions}",
            param="dimensions",
            code="invalid_value",
        )


def unknown_model(model: str, canonical: str, names: tuple[str, ...]) -> ApiError:
    """The 404 of a name the service does not answer to: what it serves, and how to add a name."""
    return ApiError(
        404,
        f"The model '{model}' does not exist: this service embeds with '{canonical}' and answers to "
        f"{', '.join(repr(n) for n in names)}. If '{model}' is only your client's default name, start the "
        f"service with --served-model-name '{model}' (ServiceConfig(served_model_names=...)) to accept it "
        f"for '{canonical}'s vectors, or send one of those names",
        param="model",
        code="model_not_found",
    )


@functools.cache
def _installed_version() -> str:
    """embedshare's version, read from its metadata once (not on every ``/info``)."""
    from importlib.metadata import version

    return version("embedshare")


def service_info(engine: Engine) -> dict[str, Any]:
    """``GET /info``, after TEI's: what a client needs to know before sending texts."""
    config = engine.config
    return {
        "model_id": engine.model_id,
        "model": config.model,
        "served_model_names": list(config.served_model_names),
        "dim": engine.dim,
        "model_dtype": "float32",
        "max_input_chars": MAX_TEXT_CHARS,  # longer texts are cut to this before they are embedded
        "max_input_length": max_input_length(engine.model_id),  # tokens the model reads (None: no window)
        "max_client_batch_size": config.max_client_batch_size,
        "encoding_formats": ["float", "base64"],
        "token_inputs": "cl100k_base",
        "version": _installed_version(),
    }


def _reply(vectors: np.ndarray, texts: list[str], encoding: str, model: str) -> bytes:
    if encoding == "base64":
        little = vectors.astype("<f4", copy=False)
        items = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        items = vectors.tolist()  # exact: every float32 is a float64, and JSON keeps its digits
    tokens = count_tokens(texts)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": item} for i, item in enumerate(items)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()
