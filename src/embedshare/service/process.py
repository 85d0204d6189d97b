"""The service's process entry point: ``python -m embedshare.service`` and ``embedshare serve``.

``run_service`` takes the store's lock (a second service reports the first and stops), sets up
the service's log filter, runs the server (``server.py``) until it is stopped, and says on the
launcher's pipe whether it started. ``main`` turns the service's command line into a config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..client.state import (
    LIMIT_FIELDS,
    AlreadyRunning,
    ServiceConfig,
    acquire_service_lock,
    apply_limits,
)
from ..store import StoreLayout
from . import ratelog
from .server import EmbeddingServer

log = logging.getLogger("embedshare.service")

# The service's log lines, in service.log and on the terminal of a foreground `serve` alike.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def run_service(config: ServiceConfig, ready_fd: int | None = None,
                ready: Callable[[str], None] | None = None) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m embedshare.service")
    parser.add_argument("--store", required=True)
    parser.add_argument("--model", default="local")
    parser.add_argument("--registry")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--preload-file", help="a file of texts, one per line, to embed at start")
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--http", help="HOST:PORT for the OpenAI-compatible endpoint (default: off)")
    parser.add_argument("--tcp", help="HOST:PORT (or PORT, on loopback) for a token-checked TCP listener (default: off)")
    parser.add_argument("--token-file", help="file holding the token TCP clients must present (mode 0600)")
    parser.add_argument("--http-token-file", help="file holding the bearer token HTTP clients must send (0600)")
    parser.add_argument("--http-no-auth", action="store_true", help="allow a non-loopback --http without a token")
    for name in LIMIT_FIELDS:
        kind = type(getattr(ServiceConfig, name))  # int caps, float durations
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format=LOG_FORMAT,
    )
    try:
        preload = []
        if args.preload_file:
            preload = [line for line in Path(args.preload_file).read_text().splitlines() if line.strip()]
        config = ServiceConfig(
            store=args.store, model=args.model, registry=args.registry, max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms, threads=args.threads, preload=preload, http=args.http,
            tcp=args.tcp, token_file=args.token_file,
            http_token_file=args.http_token_file, http_no_auth=args.http_no_auth,
        )
        apply_limits(config, {name: getattr(args, name) for name in LIMIT_FIELDS if getattr(args, name) is not None})
    except (OSError, ValueError) as exc:  # a bad setting: one line, where the launcher looks
        message = f"{type(exc).__name__}: {exc}"
        if args.ready_fd is not None:
            os.write(args.ready_fd, f"error {message}\n".encode())
        print(f"error: {message}", file=sys.stderr)
        return 1
    return run_service(config, ready_fd=args.ready_fd)


