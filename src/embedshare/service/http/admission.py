"""Admission of ``/v1/embeddings`` requests: their bytes in the body budget, and how many run.

- **Bytes that have arrived**, not declared ones: a body's chunks are taken from the
  endpoint's :class:`~embedshare.service.limits.ByteBudget` as they come (a ``Content-Length``
  of 64 MiB reserves nothing), and so is an estimate of what parsing it will build, before it
  is parsed (``inputs.py``). All of it is held until the request is answered. When the budget
  cannot take more, the answer is 429 with ``Retry-After`` at once, never a wait: a wait for
  bytes held by stalled bodies was what made other clients wait a minute. The rest of that
  body is read and dropped by uvicorn (nothing is kept), so the client, still sending, can
  read its answer; the listener's deadlines bound how long that may take.
- **Requests in progress** (their body read, waiting for the model or being answered) are at
  most ``--max-concurrent-requests``, TEI's option of the same name; one more is answered
  429 with ``Retry-After`` at once instead of joining an unbounded queue. A request counts
  from when its body is in, so connections that only send headers take no place here (the
  listener evicts them, ``guard.py``).

The openai client, langchain-openai and most HTTP clients retry a 429 after ``Retry-After``.
The model time each client gets once admitted is the batcher's business, not this module's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..limits import ByteBudget
from .errors import ApiError
from .inputs import BodyLimits, read_json

RETRY_AFTER_SECONDS = 1
_SCOPE_KEY = "embedshare.ticket"


class Ticket:
    """One request's bytes in the budget and its place among the requests in progress."""

    __slots__ = ("_admission", "admitted", "held")

    def __init__(self, admission: RequestAdmission) -> None:
        self._admission = admission
        self.held = 0
        self.admitted = False

    def take(self, n: int, size: int) -> None:
        """Take ``n`` more bytes for a request of ``size`` so far, or raise the 429."""
        if not self._admission.budget.try_acquire(n, size):
            raise self._admission.busy(
                f"the service holds as many request bytes as it may (--max-http-buffered-mb "
                f"{self._admission.budget.capacity >> 20})"
            )
        self.held += n

    def enter(self) -> None:
        """Take a place among the requests in progress, or raise the 429."""
        admission = self._admission
        if admission.in_progress >= admission.max_concurrent:
            raise admission.busy(
                f"{admission.in_progress} requests are in progress, the limit (--max-concurrent-requests "
                f"{admission.max_concurrent})"
            )
        admission.in_progress += 1
        self.admitted = True

    def release(self) -> None:
        admission = self._admission
        admission.budget.release(self.held)
        self.held = 0
        if self.admitted:
            admission.in_progress -= 1
            self.admitted = False


class RequestAdmission:
    """The endpoint's admission: its body budget, its limit of requests in progress, and the
    deadlines of a body (see the module docstring)."""

    def __init__(self, budget: ByteBudget, max_concurrent: int, limits: BodyLimits) -> None:
        self.budget = budget
        self.max_concurrent = max_concurrent
        self.limits = limits
        self.in_progress = 0

    def busy(self, why: str) -> ApiError:
        """The 429 a client gets when it must come back later."""
        return ApiError(
            429,
            f"the service is busy: {why}; retry after {RETRY_AFTER_SECONDS} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"retry-after": str(RETRY_AFTER_SECONDS)},
        )

    async def admit(self, request: Request) -> dict[str, Any]:
        """``request``'s JSON body, read within the budget, once it has a place among the
        requests in progress; both are held until the response is sent (:meth:`middleware`)."""
        ticket = request.scope.get(_SCOPE_KEY)
        assert isinstance(ticket, Ticket), "the app runs behind RequestAdmission.middleware"
        body = await read_json(request, ticket.take, self.limits)
        ticket.enter()
        return body

    def middleware(self, app: Any) -> Any:
        """``app`` with each request's :class:`Ticket`, released once the app has answered."""

        async def admitted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            ticket = scope[_SCOPE_KEY] = Ticket(self)
            try:
                await app(scope, receive, send)
            finally:
                ticket.release()

        return admitted
