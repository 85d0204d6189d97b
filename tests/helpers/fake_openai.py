"""``FakeOpenAIServer``: the bench's local OpenAI server plus scripted faults, for the tests.

The server itself (HTTP, routes, keys, vectors, recorded requests) is the bench's simulated API,
:class:`embedshare.bench.fake_openai.LocalOpenAIServer`, the one copy; what only tests need,
making the next requests misbehave, is here.

    with FakeOpenAIServer(dim=64, api_key="sk-test") as server:
        embedder = OpenAIEmbedder("m", base_url=server.base_url, dim=64)
        server.fail_next(429, retry_after=0.1)      # the next request is rate limited
        embedder.embed(["hello"])
        server.requests                              # everything it received, in order
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedshare.bench.fake_openai import Answer, LocalOpenAIServer
from embedshare.bench.fake_openai_answers import error_body

# Scripted misbehaviours besides plain HTTP status codes (see FakeOpenAIServer.fail_next).
FAULTS = frozenset(
    {
        "malformed_json",  # 200 with a truncated JSON body
        "no_data",  # 200 with a JSON object lacking "data"
        "wrong_count",  # one embedding fewer than inputs
        "wrong_dim",  # every vector one element short
        "nan",  # a NaN in the first vector
        "inf",  # an infinity in the last vector
        "non_numeric",  # a string in the first vector
        "missing_index",  # the first item has no "index"
        "duplicate_index",  # every item claims index 0
        "disconnect",  # close the connection without answering
        "delay",  # sleep `delay` seconds, then answer normally (for client timeouts)
    }
)


@dataclass
class _Fault:
    kind: int | str
    retry_after: float | str | None = None
    message: str | None = None
    delay: float = 0.0


class FakeOpenAIServer(LocalOpenAIServer):
    """:class:`LocalOpenAIServer` whose next answers can be scripted to fail (``fail_next``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults: deque[_Fault] = deque()
        self._faults_lock = threading.Lock()

    def fail_next(
        self,
        kind: int | str,
        times: int = 1,
        *,
        retry_after: float | str | None = None,
        message: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Misbehave on the next ``times`` requests (queued after any earlier faults).

        ``kind`` is an HTTP status (answered with an OpenAI-shaped error, plus a
        ``Retry-After`` header when ``retry_after`` is given, as seconds or an HTTP date) or
        one of :data:`FAULTS`. ``message`` overrides the error message; ``delay`` is for
        ``"delay"``. Faults are consumed only by requests the server would otherwise answer
        with 200, so a request rejected for a bad key or path leaves the queue alone.
        """
        if isinstance(kind, str) and kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected a status code or one of {sorted(FAULTS)}")
        with self._faults_lock:
            for _ in range(times):
                self._faults.append(_Fault(kind, retry_after, message, delay))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        super().reset()
        self.clear_faults()

    def _script(self, good: Answer) -> Answer | None:
        with self._faults_lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is None:
            return good
        status, payload, extra = good
        if fault.kind == "disconnect":
            return None
        if fault.kind == "delay":
            time.sleep(fault.delay)  # the scripted fault itself: a slow server, for client timeouts
            return good
        if isinstance(fault.kind, int):
            status = fault.kind
            retry = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else extra
            return status, error_body(status, fault.message or f"Scripted HTTP {status}"), retry
        return status, corrupt(fault.kind, payload), extra


def corrupt(kind: str, payload: Any) -> Any:
    """Apply a body-level fault (one of :data:`FAULTS`) to a good payload."""
    if kind == "malformed_json":
        return json.dumps(payload).encode("utf-8")[:40]
    if kind == "no_data":
        return {"object": "list", "model": payload.get("model")}
    data = payload["data"]
    packed = bool(data) and isinstance(data[0]["embedding"], str)
    if packed:  # base64: corrupt the floats it holds, then pack them again
        for item in data:
            item["embedding"] = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4").tolist()
    if kind == "wrong_count":
        payload["data"] = data[:-1]
    elif kind == "wrong_dim":
        for item in data:
            item["embedding"] = item["embedding"][:-1]
    elif kind == "nan":
        data[0]["embedding"][0] = float("nan")
    elif kind == "inf":
        data[-1]["embedding"][3] = float("inf")
    elif kind == "non_numeric":
        data[0]["embedding"][0] = "0.5"
    elif kind == "missing_index":
        del data[0]["index"]
    elif kind == "duplicate_index":
        for item in data:
            item["index"] = 0
    if packed:
        for item in payload["data"]:
            item["embedding"] = base64.b64encode(np.asarray(item["embedding"], dtype="<f4").tobytes()).decode()
        if kind == "non_numeric":
            payload["data"][0]["embedding"] = "not base64!"
    return payload
