"""``embedshare serve``, ``stop`` and ``cache reset``: the store's service and its cache.

``serve``'s options for the service's settings are generated from ``ServiceConfig``'s fields
(``service/config.py``): their defaults, types and help are declared there once, for this
command and for the service process's own command line alike.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..service.config import CommandOption, ServiceConfig, command_options
from .common import errors_as_messages, model_option, resolve_model, store_layout, store_option

F = TypeVar("F", bound=Callable[..., Any])


def _click_option(option: CommandOption) -> Callable[[F], F]:
    """A field of ``ServiceConfig`` as a click option: its flag, type, default and help."""
    if option.kind is bool:
        return click.option(option.flag, option.name, is_flag=True, help=option.help)
    if option.repeat:
        return click.option(option.flag, option.name, multiple=True, metavar=option.metavar, help=option.help)
    kind: Any = click.Path(dir_okay=False, path_type=Path) if option.path else option.kind
    return click.option(
        option.flag,
        option.name,
        type=kind,
        default=option.default,
        metavar=option.metavar,
        show_default=option.default is not None,
        help=option.help,
    )


def config_options(command: F) -> F:
    """``serve``'s options for the service's settings, in the order of ``ServiceConfig``'s fields."""
    for option in reversed([o for o in command_options() if o.serve]):
        command = _click_option(option)(command)
    return command


@click.command()
@store_option
@model_option
@click.option(
    "--registry",
    default=None,
    help="Tool registry to index and serve ('bundled' for the example). Default: the one "
    "the store records (embedshare index build), if any.",
)
@click.option("--detach", is_flag=True, help="Start in the background and return once it answers.")
@config_options
def serve(store: Path | None, model: str | None, registry: str | None, detach: bool, **settings: Any) -> None:
    """Run the store's embedding service (one per store; a second one reports the first)."""
    with errors_as_messages():
        model = resolve_model(model, store)
        if registry and registry != "bundled":
            from ..registry import load_registry

            load_registry(registry)  # a missing or invalid file: one line now, not a failed start
        config = ServiceConfig(store=str(store_layout(store).root), model=model, registry=registry, **settings)
        if detach:
            from ..service.launcher import EmbeddingService

            verbose = click.get_current_context().find_root().params.get("verbose", 0)
            service = EmbeddingService(config=config, detach=True, export_env=False, verbose=verbose).start()
            if config.http and not _is_loopback_http(config.http) and config.http_no_auth:
                # the service says it in its log only
                click.echo(
                    f"warning: the HTTP endpoint on {settings['http']} is reachable beyond loopback, "
                    "without authentication (--http-no-auth)",
                    err=True,
                )
            verb = "started" if service.owned else "already running"
            click.echo(
                f"embedshare service {verb}: pid {service.pid}, socket {service.address}"
                + (f", http {service.http_url}/v1" if service.http_url else "")
            )
            return
        from ..service.process import LOG_FORMAT, run_service

        for handler in logging.getLogger().handlers:  # timestamps, as in service.log
            handler.setFormatter(logging.Formatter(LOG_FORMAT))

        def announce(line: str) -> None:  # only once it answers: a failed start says only why
            status, _, detail = line.partition(" ")
            if status == "ready":
                click.echo(
                    f"embedshare service for {config.store} (model {model}, pid {detail}); Ctrl-C to stop", err=True
                )
            elif status == "already":
                click.echo(f"a service already runs on this store (pid {detail}); not starting another", err=True)

        sys.exit(run_service(config, ready=announce))


def _is_loopback_http(address: str) -> bool:
    from ..service.http.address import is_loopback, parse_http_address

    return is_loopback(parse_http_address(address)[0])


@click.command()
@store_option
def stop(store: Path | None) -> None:
    """Stop the store's service, on purpose: restart-policy clients (pool workers) do not restart it."""
    from ..client.connection import ServiceConnection

    layout = store_layout(store)
    with errors_as_messages():
        conn = ServiceConnection(layout.socket)
        try:
            reply = conn.request("shutdown", timeout=30, by="embedshare stop", pid=os.getpid())
        finally:
            conn.close()
        clients = reply.get("clients") or []
        attached = (
            f"{len(clients)} client process(es) were attached (pids {', '.join(map(str, clients[:10]))}"
            f"{', ...' if len(clients) > 10 else ''}); their calls now fail with ServiceUnavailable, "
            "they do not restart it"
            if clients
            else "no client was attached"
        )
        click.echo(
            f"stopped the embedshare service of {layout.root} (pid {reply.get('pid')}); {attached}. "
            f"Start it again with `embedshare serve --store {layout.root} --detach`."
        )


@click.group()
def cache() -> None:
    """Look after the store's embedding cache."""


@cache.command("reset")
@store_option
def cache_reset(store: Path | None) -> None:
    """Move the cache aside (to cache.broken-<time>) so the store starts with an empty one.

    For a damaged cache file. Nothing is deleted. Refused while a service runs on the store;
    stop it first (embedshare stop). Vectors are recomputed as texts are asked for again.
    """
    from ..client.state import acquire_service_lock
    from ..errors import AlreadyRunning
    from ..store.cache_format import move_aside

    layout = store_layout(store)
    with errors_as_messages():
        if not layout.cache.exists():
            click.echo(f"no cache at {layout.cache}; nothing to do")
            return
        try:
            lock_fd = acquire_service_lock(layout)  # held while we move it: no service starts
        except AlreadyRunning as exc:
            raise ValueError(f"{exc}; stop it first: embedshare stop --store {layout.root}") from None
        try:
            moved = move_aside(layout.cache)
        finally:
            os.close(lock_fd)
        click.echo(f"moved the cache to {moved}; the store starts with an empty cache")
