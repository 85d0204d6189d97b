"""What stands in front of the HTTP endpoint: its bearer token and its connection limits.

- **The token** (``http_address.http_token``, :class:`BearerAuth`): OpenAI clients send
  ``Authorization: Bearer <key>``. Off by default on loopback (the socket of the same machine
  is the usual client); on any other host a token is required, from ``--http-token-file``
  (0600, checked like the TCP token) or ``EMBEDSHARE_HTTP_TOKEN``, unless ``--http-no-auth``
  asks for none, which is logged as a warning. It is compared with ``hmac.compare_digest``
  and never logged.
- **The limits** (:func:`guarded_protocol`): uvicorn's h11 protocol, with each connection
  admitted by the endpoint's :class:`~embedshare.service.limits.Listener` (its own cap, so an
  HTTP flood leaves the Unix socket alone), a deadline for the request's headers, and the
  plain-text 400 that uvicorn sends for a malformed request replaced by OpenAI's error shape.
  A connection that waits for its client (headers not all sent, a body not all sent, or
  between requests) may be evicted at the cap, the one that has waited longest first: 300
  connections that send headers and no body no longer lock new clients out. This is done
  here, in the protocol, because only the protocol sees a connection that sends nothing (the
  ASGI app is not called until headers are in, and uvicorn has no read timeout of its own).
  The body's own deadlines (one per read, one for the whole) are ``inputs.py``'s, which can
  answer 408. uvicorn's options do the rest: ``timeout_keep_alive`` closes idle keep-alive
  connections, ``h11_max_incomplete_event_size`` caps the headers.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..limits import Listener, Slot
from .address import is_loopback
from .errors import error_response

log = logging.getLogger("embedshare.service.http")

MAX_HEADER_BYTES = 16 << 10  # h11's default, stated: the request line and headers together


# Liveness and readiness probes answer without the token: they tell only "up" and "ready",
# and a probe (a load balancer, Kubernetes) should not need a secret. /metrics needs it.
OPEN_PATHS = frozenset({"/health", "/ready"})


class BearerAuth:
    """ASGI middleware: every HTTP request but the probes must carry ``Authorization: Bearer``."""

    def __init__(self, app: Any, token: bytes, on_refused: Any = None) -> None:
        self.app = app
        self._expected = b"Bearer " + token
        self._on_refused = on_refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            given = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self._expected):
                if self._on_refused is not None:
                    self._on_refused()
                client = scope.get("client") or ("?", 0)
                log.warning(
                    "refused an HTTP request from %s: %s",
                    client[0],
                    "no Authorization header" if not given else "wrong bearer token",
                )
                response = error_response(
                    401,
                    "a valid bearer token is required: send "
                    "'Authorization: Bearer <token>' (the openai client's api_key)",
                    code="invalid_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def guarded_protocol(listener: Listener, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, admitted by ``listener`` and held to its deadlines."""

    class GuardedH11Protocol(H11Protocol):
        _slot: Slot | None = None
        _cycle_seen: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._slot = listener.admit(transport.abort)
            if self._slot is None:
                transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._slot is not None:
                listener.release(self._slot)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            slot = self._slot
            if slot is None or self.cycle is None:
                return
            if self.cycle is not self._cycle_seen:
                self._cycle_seen = self.cycle  # a request's headers are in: the app has it now
                slot.frame_done()
                slot.request_started()
            if self.cycle.response_complete:
                return
            if self.conn.their_state is h11.SEND_BODY:
                slot.waiting_for_client()  # the rest of the body: evictable, last in line again
            else:
                slot.serving()

        def on_response_complete(self) -> None:
            if self._slot is not None:  # the next request's headers must come in time
                self._slot.waiting_for_next(header_timeout)
                self._slot.waiting_for_client()
            super().on_response_complete()  # last: it starts a pipelined request, if one waits

        def send_400_response(self, msg: str) -> None:
            """A malformed request (bad request line or headers, too large): OpenAI's error shape."""
            # the transport's own write, not an ASGI response: only the body is borrowed
            body = error_response(400, f"malformed HTTP request: {msg}", code="bad_request").body
            head = (
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            self.transport.write(head + body)
            self.transport.close()

    return GuardedH11Protocol


class LoopbackHostOnly:
    """ASGI middleware: refuse a request whose ``Host`` header is not a loopback name.

    A page on a rebinding DNS name can make a browser talk to 127.0.0.1, but the browser still
    sends that name as ``Host``; checking it keeps such pages out.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = ""
            for name, value in scope.get("headers", []):
                if name == b"host":
                    host = value.decode("latin-1")
                    break
            if host and not is_loopback(_host_name(host)):
                response = error_response(
                    421, f"this endpoint answers loopback names only, not {host!r}", code="misdirected_request"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
