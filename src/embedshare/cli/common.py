"""What the commands share: the store, model and registry options, and errors as one line.

Only click and the standard library at import time (see ``cli/__init__.py``); the rest of
embedshare is imported inside the functions, when a command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..env import ENV_MODEL, ENV_STORE

DEFAULT_MODEL = "local"
CREATED_STORE = "embedshare.created_store"  # click context meta: the note open_manager leaves


def store_layout(store: Path | None) -> Any:
    """The ``StoreLayout`` of ``--store``, else of the default store."""
    from ..env import default_store
    from ..store.layout import StoreLayout

    return StoreLayout(store or default_store())


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can get wrong: shown as one line, never as a traceback."""
    from ..errors import (
        CacheError,
        EmbedderError,
        InvalidTextError,
        NoIndexError,
        RegistryError,
        RemoteError,
        ServiceStartError,
        ServiceUnavailable,
        ToolIndexError,
        UnknownModelError,
        UnknownToolError,
    )

    # OSError covers what the machine refuses: a port in use, a read-only or full disk, a
    # permission (PermissionError), a missing file (FileNotFoundError).
    return (
        EmbedderError,
        InvalidTextError,
        UnknownModelError,
        NoIndexError,
        RegistryError,
        RemoteError,
        ServiceStartError,
        ServiceUnavailable,
        CacheError,
        ToolIndexError,
        UnknownToolError,
        OSError,
        ValueError,
    )


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """A user's mistake is one ``error:`` line and exit code 1; ``-v`` adds the traceback.

    A store this command created (``open_manager``) is said once: a ``note:`` line after a
    success, or at the end of the error line.
    """
    try:
        yield
    except user_errors() as exc:
        note = _created_store_note()
        context = click.get_current_context(silent=True)
        if context is not None and context.find_root().params.get("verbose"):
            import traceback

            traceback.print_exc()
            log_tail = getattr(exc, "log_tail", "")  # a ServiceStartError's
            if log_tail:
                click.echo(f"the end of the service's log:\n{log_tail}", err=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(f"error: {message}" + (f" (note: {note})" if note else ""), err=True)
        sys.exit(1)
    note = _created_store_note()
    if note:
        click.echo(f"note: {note}", err=True)


def _created_store_note() -> str | None:
    context = click.get_current_context(silent=True)
    return context.meta.pop(CREATED_STORE, None) if context is not None else None


store_option = click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Store folder (cache, indexes, service socket). Default: ${ENV_STORE} or ~/.cache/embedshare.",
)
model_option = click.option(
    "--model",
    default=lambda: os.environ.get(ENV_MODEL),
    help=f"Embedder spec: local, hash:<dim>, openai:<model>. Default: ${ENV_MODEL}, else the "
    "running service's, else the one the store records, else local.",
)
registry_option = click.option(
    "--registry",
    default="bundled",
    show_default=True,
    help="Tool registry JSON file, or 'bundled' for the example registry shipped with embedshare.",
)
store_registry_option = click.option(
    "--registry",
    default=None,
    help="Tool registry JSON file, or 'bundled'. Default: the one the store's service serves, else "
    "the one the store records. Another one than the service's is an error.",
)


def resolve_model(model: str | None, store: Path | None) -> str:
    """--model, else the model the store records (store/record.py), else local."""
    from ..store.record import recorded_model

    return model or recorded_model(store_layout(store)) or DEFAULT_MODEL


def progress_callback(description: str) -> Callable[[int, int], None]:
    """A tqdm callback for long builds (to stderr, hidden when not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=description, unit="text", file=sys.stderr, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def open_manager(store: Path | None, model: str | None, registry: str | None) -> Any:
    """The store's service if one answers (with the same model), else a local manager.

    With no registry, the service's (or the one the store records); another registry than the
    service's is an error, never silently the service's.
    """
    from ..access import SharedEmbeddingManager
    from ..errors import ServiceUnavailable
    from ..manager import EmbeddingManager

    layout = store_layout(store)
    if layout.socket.exists():
        try:
            return SharedEmbeddingManager(layout.socket, model=model, on_failure="error", registry=registry)
        except ServiceUnavailable:
            pass
    created = not layout.root.exists()
    manager = EmbeddingManager(layout.root, model=resolve_model(model, store))
    if created:  # a mistyped --store would otherwise compute alone, silently, in a new store
        context = click.get_current_context(silent=True)
        if context is not None:  # said by errors_as_messages: a line of its own, or in the error's
            context.meta[CREATED_STORE] = (
                f"no store at {layout.root}: created a new, empty one, and this command computes in-process, "
                f"sharing nothing (check --store or ${ENV_STORE} if you meant an existing store)"
            )
    if registry:
        manager.load_registry(registry, progress=progress_callback("embedding tools"))
    return manager
