"""What the local OpenAI server answers: routes, keys, vectors, error bodies.

Plain functions of a request's parts, so :mod:`embedshare.bench.fake_openai`'s HTTP handler
only reads requests and writes answers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import numpy as np

AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/embeddings$")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def fake_vector(text: str, dim: int, dimensions: int | None = None) -> np.ndarray:
    """The unit-length float64 vector the server returns for ``text``: a seeded hash of the
    text, cut to ``dimensions`` and renormalised, as OpenAI's v3 models do."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    full = rng.standard_normal(dim)
    cut = full[: dimensions or dim]
    return cut / np.linalg.norm(cut)


def answer(
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    body: Any,
    inputs: list[str],
    *,
    dim: int,
    api_key: str | None,
    floats_only: bool,
    reverse_order: bool,
) -> tuple[int, Any, dict[str, str]]:
    """The well-behaved answer: (status, JSON payload or raw bytes, extra headers)."""
    azure = AZURE_PATH.match(path)
    if azure:
        if "api-version" not in query:
            return 404, error_body(404, "Resource not found (missing api-version)"), {}
        given = headers.get("api-key")
    elif path.endswith("/embeddings"):
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else None
    else:
        return 404, error_body(404, f"Unknown path {path}"), {}
    if api_key is not None and given != api_key:
        return 401, error_body(401, "Incorrect API key provided."), {}
    if not isinstance(body, dict) or not inputs:
        return 400, error_body(400, "'input' must be a non-empty string or list of strings"), {}
    if not azure and not isinstance(body.get("model"), str):
        return 400, error_body(400, "you must provide a model parameter"), {}
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or not 1 <= dimensions <= dim):
        return 400, error_body(400, f"dimensions must be between 1 and {dim}"), {}
    fmt = body.get("encoding_format", "float")
    items = []
    for i, text in enumerate(inputs):
        vec = fake_vector(text, dim, dimensions)
        emb: Any
        if fmt == "base64" and not floats_only:
            emb = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
        else:
            emb = vec.tolist()
        items.append({"object": "embedding", "index": i, "embedding": emb})
    if reverse_order:
        items.reverse()
    payload = {
        "object": "list",
        "data": items,
        "model": body.get("model", azure.group(1) if azure else ""),
        "usage": {
            "prompt_tokens": sum(len(t.split()) for t in inputs),
            "total_tokens": sum(len(t.split()) for t in inputs),
        },
    }
    return 200, payload, {}


def request_inputs(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": None,
            "code": None,
        }
    }
