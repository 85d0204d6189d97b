"""Embeddings from any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint, Azure included.

The transport is the official ``openai`` SDK (``OpenAI``, or ``AzureOpenAI`` with
``deployment=``): it builds the URLs (Azure's deployment path and ``api-version``), sends the
key, retries 408, 409, 429, 5xx, dropped connections and timeouts ``max_retries`` times with
exponential backoff and jitter (0.5 s doubling up to 8 s, less up to 25%), obeys
``Retry-After`` / ``retry-after-ms`` up to 120 s and does not retry past that (the error comes
at once instead of a stalled model thread), and turns error bodies into exceptions. Other 4xx answers fail
at once. Vectors travel as base64 (a quarter of the bytes of JSON floats, and no float parsing).

What the SDK does not do, and this module does:

* Remote output is untrusted: every response is checked (count, indices, dimension, valid
  base64 or numbers, finite) and then passed through
  :func:`~embedshare.embedders.base.check_vectors`, so nothing malformed reaches the cache. The
  raw body is read (``with_raw_response``) so vectors go from base64 to numpy directly.
* The key is read from the environment (``api_key_env`` names the variable) by the SDK at each
  request, through a function, and is never an attribute of this object; errors are built here
  from the server's message with the key scrubbed out (some servers echo it), so it appears in
  no ``repr``, ``model_id``, stats, exception or log record of ours. With the variable unset no
  auth header is sent (local OpenAI-compatible servers often need none; a hosted API's 401
  then says the variable is unset).

``dim`` resolution, in order: the ``dim`` argument; ``dimensions`` when set; the published
default of a known OpenAI model (see ``KNOWN_DIMS``); otherwise it is discovered lazily: the
first ``embed`` call takes it from the response, and reading ``.dim`` before any ``embed``
sends one small probe request (the text ``"dimension probe"``). Note that on Python 3.11
``isinstance(obj, Embedder)`` reads ``obj.dim`` and so may trigger that probe; pass ``dim=``
to avoid any network I/O before the first real request.

The SDK is an optional dependency (``pip install -e '.[openai]'`` from a checkout); it is imported when an
``OpenAIEmbedder`` is constructed, not when this module is imported.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from typing import Any, NoReturn, Self

import numpy as np

from ..errors import EmbedderError
from ..util.install import pip_install
from .base import EmbedderDefaults, check_vectors, validate_texts

__all__ = ["DEFAULT_BASE_URL", "KNOWN_DIMS", "OpenAIEmbedder"]

logger = logging.getLogger("embedshare.embedders.openai")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2024-02-01"

# Published output sizes of OpenAI's embedding models, used when neither ``dim`` nor
# ``dimensions`` is given so that no probe request is needed.
KNOWN_DIMS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}

_PROBE_TEXT = "dimension probe"
_MAX_ERROR_CHARS = 500  # server error text quoted in exceptions is cut to this length


class OpenAIEmbedder(EmbedderDefaults):
    """An :class:`~embedshare.embedders.base.Embedder` backed by an OpenAI-style HTTP API.

    Thread-safe: one instance (and its SDK client's connection pool) serves many threads.
    Call :meth:`close` (or use it as a context manager) to release its connections.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        dimensions: int | None = None,
        dim: int | None = None,
        batch_size: int = 256,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout: float = 60.0,
        api_version: str | None = None,
        deployment: str | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"the 'openai' embedder needs the openai SDK: {pip_install('openai')}") from exc

        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a non-empty string")
        for name, value in (
            ("dimensions", dimensions),
            ("dim", dim),
            ("batch_size", batch_size),
            ("concurrency", concurrency),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if dim is not None and dimensions is not None and dim != dimensions:
            raise ValueError(f"dim={dim} contradicts dimensions={dimensions}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError("api_key_env must name an environment variable")

        self.model = model.strip()
        self.dimensions = dimensions
        self.batch_size = batch_size
        # How many embed() calls the service runs at once: a request mostly waits on the
        # network, so overlapping a few multiplies throughput (the local model gets 1).
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.api_key_env = api_key_env
        self.deployment = deployment or None
        self._openai = openai
        self._lock = threading.Lock()  # guards _dim discovery and the counters
        self._stats = {"requests": 0, "retries": 0, "texts": 0, "failures": 0}
        # Counts every HTTP attempt, the SDK's retries included (it numbers them in a header).
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count_attempt]})
        common: dict[str, Any] = {
            "api_key": self._key,
            "max_retries": max_retries,
            "timeout": self.timeout,
            "http_client": http_client,
        }
        if self.deployment is not None:
            # Azure: the endpoint is per resource; OPENAI_BASE_URL (usually api.openai.com)
            # would be the wrong default, so only AZURE_OPENAI_ENDPOINT is consulted.
            root = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
            if not root:
                raise ValueError("Azure (deployment=...) needs base_url or AZURE_OPENAI_ENDPOINT")
            self.api_version: str | None = api_version or DEFAULT_AZURE_API_VERSION
            self.base_url = root.rstrip("/")
            self._auth_header = "api-key"
            self._client: Any = openai.AzureOpenAI(
                azure_endpoint=self.base_url, azure_deployment=self.deployment, api_version=self.api_version, **common
            )
        else:
            self.api_version = api_version
            self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
            self._auth_header = "Authorization"
            query = {"api-version": api_version} if api_version else None
            self._client = openai.OpenAI(base_url=self.base_url, default_query=query, **common)
        self.model_id = self._make_model_id()
        self._dim: int | None = dim or dimensions or KNOWN_DIMS.get(self.model)

    # ----------------------------------------------------------------- identity

    def _make_model_id(self) -> str:
        """Name the model and every setting that changes its vectors (never the key)."""
        parts = [f"openai:{self.model}"]
        if self.deployment is not None:
            parts.append(f"deployment={self.deployment}")
        if self.dimensions is not None:
            parts.append(f"dimensions={self.dimensions}")
        return "@".join(parts)

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model_id={self.model_id!r}, base_url={self.base_url!r}, "
            f"api_key_env={self.api_key_env!r}, batch_size={self.batch_size})"
        )

    @property
    def dim(self) -> int:
        """Output dimension; may cost one probe request if it is not known yet (see module doc)."""
        if self._dim is None:
            self._embed_batch([_PROBE_TEXT])
        assert self._dim is not None
        return self._dim

    def stats(self) -> dict[str, int]:
        """Counters for monitoring: HTTP requests sent, retries, texts embedded, failed calls."""
        with self._lock:
            return dict(self._stats)

    # ----------------------------------------------------------------- the key

    def _key(self) -> str:
        """The SDK calls this at each request: the key lives in the environment, not here."""
        return os.environ.get(self.api_key_env, "")

    def _redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _count_attempt(self, request: Any) -> None:
        with self._lock:
            self._stats["requests"] += 1
            if request.headers.get("x-stainless-retry-count", "0") != "0":
                self._stats["retries"] += 1

    # ----------------------------------------------------------------- embedding

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in requests of at most ``batch_size`` inputs; rows are unit length."""
        clean = validate_texts(texts)
        if not clean:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._embed_batch(clean[start : start + self.batch_size]) for start in range(0, len(clean), self.batch_size)
        ]
        with self._lock:
            self._stats["texts"] += len(clean)
        result = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        try:
            return check_vectors(result, len(clean), self.dim, f"OpenAI model {self.model_id}")
        except EmbedderError:
            with self._lock:
                self._stats["failures"] += 1
            raise

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        """One request (the SDK retries it) for one batch; checked vectors in input order."""
        openai = self._openai
        options: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "base64"}
        if self.dimensions is not None:
            options["dimensions"] = self.dimensions
        if not self._key():
            options["extra_headers"] = {self._auth_header: openai.Omit()}  # no key: no auth header
        try:
            raw = self._client.embeddings.with_raw_response.create(**options)
        except openai.APIStatusError as exc:
            self._fail(f"HTTP {exc.status_code}: {self._server_message(exc)}", _attempts(exc))
        except openai.APIConnectionError as exc:  # timeouts included
            cause = exc.__cause__ or exc
            self._fail(f"{type(exc).__name__}: {type(cause).__name__}: {cause}", _attempts(exc))
        try:
            payload = raw.http_response.json()
        except ValueError as exc:
            self._fail(f"response is not valid JSON ({exc})")
        return self._parse(payload, len(batch))

    def _fail(self, problem: str, attempts: int = 1) -> NoReturn:
        """Raise an EmbedderError naming the endpoint and model (never the key)."""
        with self._lock:
            self._stats["failures"] += 1
        if attempts > 1:
            problem = f"failed after {attempts} attempts; last error: {problem}"
            logger.warning("giving up on embeddings request to %s: %s", self.base_url, self._redact(problem))
        raise EmbedderError(self._redact(f"OpenAI embeddings ({self.model_id} at {self.base_url}): {problem}"))

    def _server_message(self, exc: Any) -> str:
        """The server's explanation: OpenAI's ``{"error": {"message", "type"}}`` or raw text."""
        body, message = exc.body, ""
        error = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            kind = error.get("type") or error.get("code")
            if kind:
                message = f"{message} ({kind})" if message else str(kind)
        elif isinstance(error, str):
            message = error
        if not message:
            message = exc.response.text.strip() or exc.response.reason_phrase or "no details"
        if len(message) > _MAX_ERROR_CHARS:
            message = message[:_MAX_ERROR_CHARS] + "..."
        if exc.status_code in (401, 403) and not self._key():
            message += f" (environment variable {self.api_key_env} is not set)"
        return message

    def _parse(self, payload: Any, count: int) -> np.ndarray:
        """Check a decoded response and return its vectors in input order."""
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            self._fail("response has no 'data' list")
        data: list[Any] = payload["data"]
        if len(data) != count:
            self._fail(f"response has {len(data)} embeddings for {count} inputs")
        rows: list[np.ndarray | None] = [None] * count
        for position, item in enumerate(data):
            if not isinstance(item, dict):
                self._fail(f"data[{position}] is not an object")
            index = item.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                self._fail(f"data[{position}] has a missing or non-integer 'index'")
            if not 0 <= index < count:
                self._fail(f"data[{position}] has index {index} outside 0..{count - 1}")
            if rows[index] is not None:
                self._fail(f"response has duplicate index {index}")
            rows[index] = self._vector(item.get("embedding"), index)
        # the count matches and no index repeats, so every slot is filled
        self._require_dim(rows)
        return np.stack(rows)  # type: ignore[arg-type]

    def _vector(self, embedding: Any, index: int) -> np.ndarray:
        """One embedding: base64 little-endian float32 (as asked), or a list of numbers (servers
        that ignore ``encoding_format``); finite either way."""
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                self._fail(f"embedding {index} is not valid base64")
            if not raw or len(raw) % 4:
                self._fail(f"embedding {index} is {len(raw)} bytes, not a float32 vector")
            vector = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        else:
            if not isinstance(embedding, list) or not embedding:
                self._fail(f"embedding {index} is missing or not a non-empty list")
            if not all(type(x) in (float, int) for x in embedding):
                self._fail(f"embedding {index} contains non-numeric values")
            try:
                vector = np.asarray(embedding, dtype=np.float64)
            except OverflowError:  # an integer too large for a float
                self._fail(f"embedding {index} contains out-of-range values")
        if not np.isfinite(vector).all():
            self._fail(f"embedding {index} contains NaN or infinite values")
        return vector

    def _require_dim(self, rows: list[np.ndarray | None]) -> int:
        """Check every row has the expected dimension, learning it on first use if unknown."""
        lengths = {row.shape[0] for row in rows if row is not None}
        if len(lengths) != 1:
            self._fail(f"embeddings have differing dimensions {sorted(lengths)}")
        (length,) = lengths
        with self._lock:
            if self._dim is None:
                self._dim = length
                logger.debug("discovered dimension %d for %s", length, self.model_id)
            expected = self._dim
        if length != expected:
            self._fail(f"embeddings have dimension {length}, expected {expected}")
        return expected

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release pooled connections."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _attempts(exc: Any) -> int:
    """How many times the SDK sent the request that failed (it numbers its retries)."""
    try:
        return int(exc.request.headers.get("x-stainless-retry-count", "0")) + 1
    except (AttributeError, ValueError):
        return 1
