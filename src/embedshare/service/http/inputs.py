"""What an ``/v1/embeddings`` request brings: its JSON body, and its ``input`` as checked texts.

The body is read within the endpoint's limits (:class:`BodyLimits`: a size, a deadline for the
whole body and one for each read, and the byte budget every HTTP body shares, taken as bytes
arrive, ``admission.py``), and every way it can be wrong is a 4xx in OpenAI's shape
(``errors.py``), never a 500. ``input`` is a string, a list of strings, or token arrays
(decoded with ``cl100k_base``, see ``tokens.py``); each text is checked and cut to 8,192
characters as everywhere.

What parsing builds is bounded before it is built: a body of 30 MiB of token ids is 5 million
Python ints (about 180 MB), and six of them took the service to 1.2 GB. So the body's JSON
values are counted first, by a regular expression that skips strings and stops counting past
the limit (cheap, and no copy of the body), and each is charged ``VALUE_BYTES`` to the budget
before ``json.loads`` runs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ...embedders import validate_text
from ...errors import TokenInputError
from .errors import ApiError
from .tokens import MAX_TOKENS_PER_REQUEST, decode_token_input, is_token_input

MAX_BODY_BYTES = 32 << 20  # 2,048 inputs of 8,192 characters fit, with JSON escapes to spare
VALUE_BYTES = 64  # what one parsed JSON value costs, at most about (an int and its list slot: 36)
# A string (its closing quote optional: an unclosed one is consumed once, to the end, instead of
# being scanned again from each quote inside it, which took time in the square of the body), or
# what precedes a value.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[,:\[{]')

# take(n, size): n more bytes for a body of size bytes so far, or raise the 429
Take = Callable[[int, int], None]


@dataclass(frozen=True)
class BodyLimits:
    """How a body must arrive: ``max_bytes`` at most, all of it within ``timeout`` seconds and
    never ``read_timeout`` seconds without a byte, holding at most ``max_values`` JSON values
    (so ``max_inputs`` texts or ``MAX_TOKENS_PER_REQUEST`` token ids, and their keys)."""

    max_bytes: int
    timeout: float
    read_timeout: float
    max_inputs: int

    @property
    def max_values(self) -> int:
        return MAX_TOKENS_PER_REQUEST + self.max_inputs + 64


async def read_json(request: Request, take: Take, limits: BodyLimits) -> dict[str, Any]:
    """The request body as a JSON object, its bytes taken with ``take`` as they arrive."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(
            415, "send the body as JSON with 'Content-Type: application/json'", code="unsupported_media_type"
        )
    limit = limits.max_bytes
    too_large = ApiError(413, f"the body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # a declared length is checked, never reserved: only arrived bytes count
    raw = bytearray()
    loop = asyncio.get_running_loop()
    whole = loop.time() + limits.timeout
    try:
        async with asyncio.timeout(min(whole, loop.time() + limits.read_timeout)) as deadline:
            async for chunk in request.stream():
                if len(raw) + len(chunk) > limit:
                    raise too_large
                take(len(chunk), len(raw) + len(chunk))
                raw += chunk
                deadline.reschedule(min(whole, loop.time() + limits.read_timeout))
    except TimeoutError:
        late = loop.time() >= whole
        raise ApiError(
            408,
            f"the body did not arrive within {limits.timeout:g} s"
            if late
            else f"no byte of the body arrived for {limits.read_timeout:g} s",
            code="request_timeout",
            headers={"connection": "close"},
        ) from None
    big = len(raw) > (1 << 20)  # off the loop: counting and parsing a large body takes a while
    if big:
        values = await asyncio.to_thread(count_values, raw, limits.max_values)
    else:
        values = count_values(raw, limits.max_values)
    if values is None:
        raise ApiError(
            413,
            f"the body holds more than {limits.max_values} JSON values: a request takes at most "
            f"{limits.max_inputs} texts (--max-client-batch-size) or {MAX_TOKENS_PER_REQUEST} token ids",
            code="request_too_large",
        )
    take(values * VALUE_BYTES, len(raw) + values * VALUE_BYTES)  # before they are built
    return await asyncio.to_thread(_parse_json, raw) if big else _parse_json(raw)


def count_values(raw: bytes | bytearray, limit: int) -> int | None:
    """How many values the JSON text ``raw`` holds, at most (each follows a ``,``, ``:``, ``[``
    or ``{``, or is the first); None past ``limit``. Strings are skipped whole, so the work is
    one pass of the regular expression and at most ``2 * limit`` steps of this loop."""
    values = 1
    for steps, match in enumerate(_JSON_TOKEN.finditer(raw), 1):
        if match.end() - match.start() == 1:
            values += 1
        if values > limit or steps > 2 * limit + 2:
            return None
    return values


def _parse_json(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: it nests too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


async def input_texts(value: Any, max_inputs: int) -> list[str]:
    """``input`` as checked texts, at most ``max_inputs`` (``--max-client-batch-size``): token
    arrays are decoded first (in a thread: the first request loads the tokenizer, ~0.4 s)."""
    if not is_token_input(value):
        return _inputs(value, max_inputs)
    if len(value) > max_inputs and isinstance(value[0], list):
        return _inputs(value, max_inputs)  # too many items: say so before decoding any
    try:
        decoded = await asyncio.to_thread(decode_token_input, value)
    except TokenInputError as exc:
        raise ApiError(400, str(exc), param="input", code="invalid_value") from None
    return _inputs(decoded if isinstance(value[0], list) else decoded[0], max_inputs)  # one array: one text


def _inputs(value: Any, max_inputs: int) -> list[str]:
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
    check_input_count(len(items), max_inputs, "input")
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
        texts.append(validate_text(item, where))  # InvalidTextError: a 400 invalid_text (errors.WIRE_ERRORS)
    return texts


def check_input_count(count: int, max_inputs: int, param: str) -> None:
    """413 ``too_many_inputs`` past ``--max-client-batch-size`` (TEI's name), naming the option."""
    if count > max_inputs:
        raise ApiError(
            413,
            f"'{param}' has {count} items; the limit is {max_inputs} per request (--max-client-batch-size)",
            param=param,
            code="too_many_inputs",
        )
