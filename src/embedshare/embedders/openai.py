"""Embeddings from any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint, Azure included.

Why this module looks the way it does:

* The API key is read from the environment *per request* (``api_key_env`` names the variable)
  and never stored on the object, so it cannot leak through ``repr``, ``vars()``, pickling,
  ``model_id``, log records, statistics or exception text. Server error messages are also
  scrubbed of the key before they are raised or logged, because some servers echo it.
* Remote output is untrusted: every response is checked (count, indices, dimension, numeric,
  finite) and then passed through :func:`~embedshare.embedders.base.check_vectors`, so nothing
  malformed ever reaches the cache.
* Rate limits and transient failures are normal for hosted APIs: HTTP 429, 5xx, connection
  errors and timeouts are retried with capped exponential backoff and jitter, honouring
  ``Retry-After``. Other 4xx answers are the caller's mistake and fail at once.

``dim`` resolution, in order: the ``dim`` argument; ``dimensions`` when set; the published
default of a known OpenAI model (see ``KNOWN_DIMS``); otherwise it is discovered lazily: the
first ``embed`` call takes it from the response, and reading ``.dim`` before any ``embed``
sends one small probe request (the text ``"dimension probe"``). Note that on Python 3.11
``isinstance(obj, Embedder)`` reads ``obj.dim`` and so may trigger that probe; pass ``dim=``
to avoid any network I/O before the first real request.

httpx is an optional dependency (``pip install 'embedshare[openai]'``); it is imported when an
``OpenAIEmbedder`` is constructed, not when this module is imported.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import numpy as np

from .base import EmbedderError, check_vectors, validate_texts

if TYPE_CHECKING:  # pragma: no cover - typing only
    import httpx

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


class OpenAIEmbedder:
    """An :class:`~embedshare.embedders.base.Embedder` backed by an OpenAI-style HTTP API.

    Thread-safe: one instance (and its pooled ``httpx.Client``) can serve many threads.
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
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 60.0,
        api_version: str | None = None,
        deployment: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the 'openai' embedder needs httpx: pip install 'embedshare[openai]'"
            ) from exc

        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a non-empty string")
        for name, value in (("dimensions", dimensions), ("dim", dim)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if dim is not None and dimensions is not None and dim != dimensions:
            raise ValueError(f"dim={dim} contradicts dimensions={dimensions}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must not be negative")
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
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.timeout = float(timeout)
        self.api_key_env = api_key_env
        self.deployment = deployment or None

        if self.deployment is not None:
            # Azure: the endpoint is per resource; OPENAI_BASE_URL (usually api.openai.com)
            # would be the wrong default, so only AZURE_OPENAI_ENDPOINT is consulted.
            root = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
            if not root:
                raise ValueError(
                    "Azure (deployment=...) needs base_url or AZURE_OPENAI_ENDPOINT"
                )
            self.api_version: str | None = api_version or DEFAULT_AZURE_API_VERSION
            self.base_url = root.rstrip("/")
            deployment_path = quote(self.deployment, safe="")
            self._url = f"{self.base_url}/openai/deployments/{deployment_path}/embeddings"
            self._params: dict[str, str] = {"api-version": self.api_version}
        else:
            self.api_version = api_version
            root = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
            self.base_url = root.rstrip("/")
            self._url = f"{self.base_url}/embeddings"
            self._params = {"api-version": api_version} if api_version else {}

        self.model_id = self._make_model_id()
        self._dim: int | None = dim or dimensions or KNOWN_DIMS.get(self.model)

        self._httpx = httpx
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), transport=transport)
        self._lock = threading.Lock()  # guards _dim discovery and the counters
        self._stats = {"requests": 0, "retries": 0, "texts": 0, "failures": 0}

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

    # ----------------------------------------------------------------- embedding

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in requests of at most ``batch_size`` inputs; rows are unit length."""
        clean = validate_texts(texts)
        if not clean:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._embed_batch(clean[start : start + self.batch_size])
            for start in range(0, len(clean), self.batch_size)
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
        """One request (with retries) for one batch; returns checked vectors in input order."""
        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        payload = self._post_with_retries(body)
        return self._parse(payload, len(batch))

    def _headers(self) -> dict[str, str]:
        """Auth headers, built per request so the key never lives on this object."""
        key = os.environ.get(self.api_key_env)
        if not key:
            # Local OpenAI-compatible servers often need no key; a hosted API will answer 401
            # and the error then says the variable is unset.
            return {}
        if self.deployment is not None:
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}

    def _redact(self, text: str) -> str:
        """Remove the key (if the server echoed it) from text bound for logs or exceptions."""
        key = os.environ.get(self.api_key_env)
        if key and key in text:
            text = text.replace(key, "***")
        return text

    def _post_with_retries(self, body: dict[str, Any]) -> Any:
        """POST ``body``; retry 429/5xx/transport errors; return the decoded JSON body."""
        httpx = self._httpx
        attempts = self.max_retries + 1
        last_problem = "no attempt made"
        for attempt in range(attempts):
            with self._lock:
                self._stats["requests"] += 1
            retry_after: float | None = None
            try:
                response = self._client.post(
                    self._url, json=body, params=self._params, headers=self._headers()
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                last_problem = self._redact(f"{type(exc).__name__}: {exc}")
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._decode(response)
                message = self._error_message(response)
                if status != 429 and not 500 <= status < 600:
                    self._fail(f"HTTP {status}: {message}")
                last_problem = f"HTTP {status}: {message}"
                retry_after = _retry_after_seconds(response.headers)
            if attempt + 1 >= attempts:
                break
            delay = self._backoff(attempt, retry_after)
            with self._lock:
                self._stats["retries"] += 1
            logger.debug(
                "embeddings request to %s failed (%s); retry %d/%d in %.2fs",
                self._url, last_problem, attempt + 1, self.max_retries, delay,
            )
            time.sleep(delay)
        logger.warning(
            "giving up on embeddings request to %s after %d attempts: %s",
            self._url, attempts, last_problem,
        )
        self._fail(f"failed after {attempts} attempts; last error: {last_problem}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``; a server's Retry-After wins, capped."""
        if retry_after is not None:
            return min(self.backoff_max, max(0.0, retry_after))
        exponential = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        return exponential * random.uniform(0.5, 1.0)  # jitter spreads out synchronized clients

    def _fail(self, problem: str) -> NoReturn:
        """Raise an EmbedderError naming the endpoint and model (never the key)."""
        with self._lock:
            self._stats["failures"] += 1
        raise EmbedderError(
            self._redact(f"OpenAI embeddings ({self.model_id} at {self._url}): {problem}")
        )

    def _error_message(self, response: httpx.Response) -> str:
        """The server's explanation: OpenAI's ``{"error": {"message", "type"}}`` or raw text."""
        message = ""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            err = data["error"]
            message = str(err.get("message") or "")
            kind = err.get("type") or err.get("code")
            if kind:
                message = f"{message} ({kind})" if message else str(kind)
        elif isinstance(data, dict) and isinstance(data.get("error"), str):
            message = data["error"]
        if not message:
            message = response.text.strip() or response.reason_phrase or "no details"
        if len(message) > _MAX_ERROR_CHARS:
            message = message[:_MAX_ERROR_CHARS] + "..."
        if response.status_code in (401, 403) and not os.environ.get(self.api_key_env):
            message += f" (environment variable {self.api_key_env} is not set)"
        return self._redact(message)

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            self._fail(f"response is not valid JSON ({exc})")

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
        """One embedding as float64: a flat list of finite numbers."""
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

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Parse ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
