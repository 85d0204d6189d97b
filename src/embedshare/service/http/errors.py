"""Every error of the HTTP endpoint in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Clients written for OpenAI read errors this way; Starlette's own (404, 405, 413, 500) are
answered in the same shape through :data:`EXCEPTION_HANDLERS`, and embedshare's own errors with
the status and code of ``errors.WIRE_ERRORS`` (the socket's codes) by :func:`wire_api_error`.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...errors import EmbedshareError, WireError


class ApiError(EmbedshareError):
    """An error reply of the HTTP endpoint, raised by a handler (``app.py``) and answered by
    its wrapper: the status, and OpenAI's ``type``, ``param`` and ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers  # Retry-After on a 429; Connection: close when the body was not all read

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, type=self.type, param=self.param, code=self.code, headers=self.headers
        )


def wire_api_error(exc: BaseException, wire: WireError) -> ApiError:
    """``exc``, an error of ``errors.WIRE_ERRORS``, as the HTTP reply the table gives it."""
    kind = "invalid_request_error" if wire.status < 500 else "server_error"
    return ApiError(wire.status, str(exc), type=kind, param=wire.param, code=wire.code)


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {
        404: f"no route {request.method} {request.url.path}",
        405: f"method {request.method} is not allowed on {request.url.path}",
    }.get(status, str(exc.detail))
    kind = "invalid_request_error" if status < 500 else "server_error"
    return error_response(status, message, type=kind, code=_STATUS_CODES.get(status), headers=dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error", type="server_error", code="internal_error")


# Starlette's ``exception_handlers``: its own errors, in OpenAI's shape too.
EXCEPTION_HANDLERS = {HTTPException: _http_exception, 500: _server_error}
