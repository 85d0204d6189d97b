"""The service's process entry point: ``python -m embedshare.service`` and ``embedshare serve``.

``run_service`` takes the store's lock (a second service reports the first and stops), sets up
the service's log filter, runs the server (``server.py``) until it is stopped, and says on the
launcher's pipe whether it started. ``main`` turns the service's command line into a config.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
from collections.abc import Callable

from ..client.state import acquire_service_lock
from ..errors import AlreadyRunning, ServiceArgvError
from ..store import StoreLayout
from . import ratelog
from .config import ServiceConfig, service_main_args
from .server import EmbeddingServer

log = logging.getLogger("embedshare.service")

# The service's log lines, in service.log and on the terminal of a foreground `serve` alike.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def run_service(config: ServiceConfig, ready_fd: int | None = None, ready: Callable[[str], None] | None = None) -> int:
    """Run a service in this process until SIGTERM, SIGINT or a shutdown request.

    ``ready_fd``: a pipe on which one line is written once the service answers
    (``ready PID``), or why it did not start (``already PID`` or ``error MESSAGE``).
    ``ready``: called with the same line (``embedshare serve`` announces the service only then).
    """

    def tell(line: str) -> None:
        if ready is not None:
            ready(line)
        if ready_fd is not None:
            try:
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass

    layout = StoreLayout(config.store)
    limiter = ratelog.install(config.log_interval)
    try:
        lock_fd = acquire_service_lock(layout)
    except AlreadyRunning as exc:
        tell(f"already {exc.pid}")
        if ready_fd is None and ready is None:  # run by hand: say so where the user looks
            log.warning("%s; not starting another", exc)
        ratelog.uninstall(limiter)
        return 0
    except BaseException:
        ratelog.uninstall(limiter)
        raise
    try:
        server = EmbeddingServer(config)
        asyncio.run(server.serve(ready=tell))
    except Exception as exc:
        tell(f"error {type(exc).__name__}: {exc}")
        raise
    finally:
        os.close(lock_fd)
        ratelog.uninstall(limiter)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config, ready_fd, verbose = service_main_args(argv)
    except ServiceArgvError as exc:  # a bad setting: one line (the launcher has it on its pipe)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
    )
    faulthandler.enable()  # a SIGBUS (data.mdb cut short under us) leaves its stack in the log
    try:
        return run_service(config, ready_fd=ready_fd)
    except (OSError, ValueError, RecursionError) as exc:  # what a user can fix: one line (-v: all)
        if verbose:
            raise
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
