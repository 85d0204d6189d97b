"""What lives in the store's ``run/`` folder: the service lock, its state file, its config.

Kept apart from ``server.py`` so that clients (every worker) can read it without importing
the server's asyncio machinery (~4 MB in every worker).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..store.layout import StoreLayout

ENV_ADDRESS = "EMBEDSHARE_ADDRESS"  # the socket of the service; inherited by child processes
ENV_STORE = "EMBEDSHARE_STORE"
ENV_ON_FAILURE = "EMBEDSHARE_ON_FAILURE"  # restart | local | error: what a client does if it dies

@dataclass
class ServiceConfig:
    """How to run a service; also written to ``run/service.json`` so a client can restart it."""

    store: str
    model: str = "local"
    registry: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 2.0
    threads: int | None = None
    preload: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = ["--store", self.store, "--model", self.model,
                "--max-batch", str(self.max_batch), "--max-wait-ms", str(self.max_wait_ms)]
        if self.registry:
            args += ["--registry", self.registry]
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args


class AlreadyRunning(RuntimeError):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"a service already runs on this store (pid {pid})")
        self.pid = pid


def acquire_service_lock(layout: StoreLayout) -> int:
    """Take the store's service lock or raise :class:`AlreadyRunning`; returns the fd."""
    layout.make_private_run_dir()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(read_state(layout).get("pid")) from None
    return fd


def read_state(layout: StoreLayout) -> dict[str, Any]:
    try:
        return json.loads(layout.state.read_text())
    except (OSError, ValueError):
        return {}


