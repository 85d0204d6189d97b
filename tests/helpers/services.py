"""Starting services the way the tests do: the hashing model, the bundled registry, and a start
deadline that allows for a whole suite sharing two cores.

``make_service`` (the conftest fixture, a ``ServiceFactory``) is for a service that lives as long
as its test; ``running_service`` for a fixture of a wider scope. A test that is *about* the
constructor (a refused setting, a start that must fail, joining a running service) builds its
``EmbeddingService`` itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from embedshare.service.launcher import EmbeddingService

START_TIMEOUT = 120.0  # seconds a service may take to say ready: generous, the suite shares 2 cores


def start_service(
    store: str | Path, model: str = "hash:64", registry: str | Path | None = "bundled", **options: Any
) -> EmbeddingService:
    """Start (or join) ``store``'s service with the suite's defaults; the caller stops it.

    ``options`` are EmbeddingService's (``export_env``, ``http``, ``limits``...).
    """
    options.setdefault("start_timeout", START_TIMEOUT)
    return EmbeddingService(store, model=model, registry=registry, **options).start()


@contextmanager
def running_service(
    store: str | Path, model: str = "hash:64", registry: str | Path | None = "bundled", **options: Any
) -> Iterator[EmbeddingService]:
    """``start_service`` for a with-block: the service is stopped when the block ends."""
    service = start_service(store, model, registry, **options)
    try:
        yield service
    finally:
        service.stop()


class ServiceFactory:
    """What ``make_service`` gives a test: it starts services and, at the end, stops them all."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self._started = ExitStack()

    def __call__(
        self,
        model: str = "hash:64",
        registry: str | Path | None = "bundled",
        *,
        store: str | Path | None = None,
        **options: Any,
    ) -> EmbeddingService:
        """A started service on the test's store (or ``store``); see ``start_service``."""
        return self._started.enter_context(running_service(store or self.store, model, registry, **options))

    def stop_all(self) -> None:
        """Stop every service started here, the last first; one that fails to stop does not
        keep the others running."""
        self._started.close()


def kill_service(service: EmbeddingService) -> None:
    """SIGKILL the service this handle started and reap it: none of its own clean-up runs."""
    assert service.pid is not None and service._process is not None, "this handle did not start a service"
    os.kill(service.pid, signal.SIGKILL)
    service._process.wait(timeout=30)
