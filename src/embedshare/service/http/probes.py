"""What monitors ask the HTTP endpoint: ``/health``, ``/ready`` and ``/metrics``.

These answer from the service's first second, while the model and index still load (the
local model takes ~15 s, more than Prometheus's default 10 s scrape timeout), because the
endpoint listens before the model loads and none of them waits for it:

- ``GET /health``: liveness. 200 whenever the service's event loop answers.
- ``GET /ready``: readiness. 200 once the model and index are loaded and requests are served
  without waiting; 503 while they load. Kubernetes-style probes and load balancers read it.
- ``GET /metrics``: prometheus-client's own ASGI app, so content negotiation (the classic text
  format or OpenMetrics, from ``Accept``), gzip (from ``Accept-Encoding``) and ``name[]``
  filtering are the library's, not ours. A scrape builds a registry over one ``stats()``
  snapshot taken in the loop (consistent numbers); PSS is read in a thread first (~1 ms a
  process, 25 clients would hold the loop 25 ms). Scrapes are not API requests: they move no
  counter they read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import make_asgi_app
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ...client.protocol import StatsReply
from ..observe import metrics_registry, with_memory

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Engine


class MetricsApp:
    """The ``/metrics`` ASGI app of one service (a class: Starlette routes an instance as ASGI)."""

    def __init__(self, stats: Callable[[], StatsReply]) -> None:
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        stats = await asyncio.to_thread(with_memory, self.stats())
        await make_asgi_app(metrics_registry(stats))(scope, receive, send)


def probe_routes(engine: Engine, stats: Callable[[], StatsReply]) -> list[Route]:
    """The three monitoring routes over a service's ``engine``; ``/metrics`` reads ``stats``."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    async def ready(request: Request) -> JSONResponse:
        if engine.is_ready:
            return JSONResponse({"status": "ready", "model_id": engine.model_id})
        return JSONResponse({"status": "loading", "model": engine.config.model}, status_code=503)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", MetricsApp(stats), methods=["GET"]),
    ]
