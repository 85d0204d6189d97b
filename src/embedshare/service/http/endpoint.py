"""The endpoint of one service: its bound socket and uvicorn, run inside the service's own loop.

uvicorn's ``Server.serve()`` runs as one more task of the service's asyncio loop, so an HTTP
request takes the path a socket request takes (the engine: the cache, then the batcher). The
socket is bound before the service says it is ready: a port in use fails the start at once,
and port 0's choice is known.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...util.install import pip_install

try:  # the first import of the `http` extra on the service's path: say which extra is missing
    import prometheus_client  # noqa: F401 - probes.py serves /metrics with it
    import starlette  # noqa: F401 - app.py, guard.py and probes.py build on it
    import uvicorn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the HTTP endpoint needs starlette, uvicorn and prometheus-client: {pip_install('http')}"
    ) from exc

from ...client.protocol import StatsReply
from .address import http_token, is_loopback, parse_http_address
from .admission import RequestAdmission
from .app import create_app
from .guard import MAX_HEADER_BYTES, BearerAuth, LoopbackHostOnly, guarded_protocol
from .inputs import MAX_BODY_BYTES, BodyLimits

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine
    from ..limits import ByteBudget, Listener

log = logging.getLogger("embedshare.service.http")

# Connections the kernel queues before accept. asyncio accepts up to this many in one go, so
# a flood's queue is drained in bursts that keep the loop (and the Unix socket) for ~30 ms at
# most, not the 0.6 s that uvicorn's default of 2,048 took.
BACKLOG = 128


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, so the port is known (port 0) and taken before we say ready."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve HTTP host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the service owns SIGTERM and SIGINT."""

    def capture_signals(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class HttpEndpoint:
    """The endpoint of one service: a bound socket and a uvicorn task in the service's loop."""

    def __init__(self, url: str, server: _EmbeddedServer, task: asyncio.Task[None]) -> None:
        self.url = url
        self._server = server
        self._task = task

    @classmethod
    async def start(
        cls,
        engine: Engine,
        *,
        listener: Listener,
        budget: ByteBudget,
        stats: Callable[[], StatsReply],
    ) -> HttpEndpoint:
        """Bind the engine's ``config.http`` address (raising OSError at once if it is taken) and
        start serving ``engine``.

        ``listener`` caps and times the endpoint's connections, ``budget`` its request bodies.
        """
        config, metrics = engine.config, engine.metrics
        address = config.http
        assert address, "the service starts its endpoint only when config.http is set"
        host, port = parse_http_address(address)
        token = http_token(config.http_token_file, config.http_no_auth, is_loopback(host), address)
        sock = _bind(host, port)
        limits = BodyLimits(
            max_bytes=min(MAX_BODY_BYTES, budget.largest()),
            timeout=config.frame_timeout,
            read_timeout=config.http_read_timeout,
            max_inputs=config.max_client_batch_size,
        )
        admission = RequestAdmission(budget, config.max_concurrent_requests, limits)
        app: Any = admission.middleware(create_app(engine, admission, stats))
        if token is not None:
            app = BearerAuth(app, token, on_refused=lambda: metrics.add(auth_failures=1))
        if is_loopback(host):
            app = LoopbackHostOnly(app)
        uvicorn_config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            ws="none",
            timeout_graceful_shutdown=5,
            server_header=False,
            http=guarded_protocol(listener, config.first_frame_timeout),
            # uvicorn annotates it int, but hands it to call_later: fractions of a second hold
            timeout_keep_alive=config.http_keepalive_timeout,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            backlog=BACKLOG,
        )
        server = _EmbeddedServer(uvicorn_config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="embedshare-http")
        task.add_done_callback(_report_crash)
        endpoint = cls(_url(sock), server, task)
        log.info(
            "OpenAI-compatible HTTP endpoint on %s/v1 (metrics on %s/metrics; %s)",
            endpoint.url,
            endpoint.url,
            "bearer token required" if token is not None else "no token",
        )
        return endpoint

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish (up to 5 s), then return. Idempotent."""
        if self._task.done():
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (TimeoutError, Exception):
            self._task.cancel()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the HTTP endpoint stopped: %r", task.exception())
