"""What an ``/v1/embeddings`` request brings: its JSON body, and its ``input`` as checked texts.

The body is read within the endpoint's limits (a size, a deadline, and the byte budget every
HTTP body shares, ``limits.py``) and every way it can be wrong is a 4xx in OpenAI's shape
(``errors.py``), never a 500. ``input`` is a string, a list of strings, or token arrays
(decoded with ``cl100k_base``, see ``tokens.py``); each text is checked and cut to 8,192
characters as everywhere.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request

from ...embedders import InvalidTextError, validate_text
from ..limits import ByteBudget
from .errors import ApiError
from .tokens import TokenInputError, decode_token_input, is_token_input

MAX_BODY_BYTES = 32 << 20  # 2,048 inputs of 8,192 characters fit, with JSON escapes to spare
MAX_INPUTS = 2048  # OpenAI's own limit per request


async def read_json(request: Request, budget: ByteBudget, timeout: float) -> dict[str, Any]:
    """The request body as a JSON object, read up to MAX_BODY_BYTES within ``timeout`` seconds.

    Its bytes are taken from ``budget`` (the endpoint's share of buffered bytes) until it is
    parsed: a declared length all at once, a chunked body chunk by chunk (h11 holds a body to
    its Content-Length).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(
            415, "send the body as JSON with 'Content-Type: application/json'", code="unsupported_media_type"
        )
    limit = min(MAX_BODY_BYTES, budget.largest())
    declared = request.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else 0
    if length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes", code="request_too_large")
    held = 0  # bytes taken from the budget so far
    try:
        async with asyncio.timeout(timeout):
            await budget.acquire(length)
            held = length
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the body is larger than {limit} bytes", code="request_too_large")
                if not declared:
                    await budget.acquire(len(chunk))
                    held += len(chunk)
                chunks.append(chunk)
        raw = b"".join(chunks)
        del chunks
        return await asyncio.to_thread(_parse_json, raw) if size > (1 << 20) else _parse_json(raw)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {timeout:g} s", code="request_timeout") from None
    finally:
        budget.release(held)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: it nests too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


async def input_texts(value: Any) -> list[str]:
    """``input`` as checked texts: token arrays are decoded first (in a thread: the first
    request loads the tokenizer, ~0.4 s)."""
    if not is_token_input(value):
        return _inputs(value)
    if len(value) > MAX_INPUTS and isinstance(value[0], list):
        return _inputs(value)  # too many items: say so before decoding any
    try:
        decoded = await asyncio.to_thread(decode_token_input, value)
    except TokenInputError as exc:
        raise ApiError(400, str(exc), param="input", code="invalid_value") from None
    return _inputs(decoded if isinstance(value[0], list) else decoded[0])  # one array: one text


def _inputs(value: Any) -> list[str]:
    """``input`` as a list of checked texts (each cut to 8,192 characters, as everywhere)."""
    if value is None:
        raise ApiError(
            400,
            "you must give 'input': a string or a list of strings",
            param="input",
            code="missing_required_parameter",
        )
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(
            400,
            f"'input' must be a string or a list of strings, got {type(value).__name__}",
            param="input",
            code="invalid_type",
        )
    if not items:
        raise ApiError(400, "'input' must not be an empty list", param="input", code="invalid_value")
    if len(items) > MAX_INPUTS:
        raise ApiError(
            400,
            f"'input' has {len(items)} items; the limit is {MAX_INPUTS} per request",
            param="input",
            code="invalid_value",
        )
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise ApiError(
                400,
                f"input[{i}] is a token id or array in a list of texts: send all texts or all token arrays",
                param="input",
                code="invalid_type",
            )
        where = "input" if isinstance(value, str) else f"input[{i}]"
        try:
            texts.append(validate_text(item, where))
        except InvalidTextError as exc:
            raise ApiError(400, str(exc), param="input", code="invalid_value") from None
    return texts
