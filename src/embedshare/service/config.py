"""How a service runs: :class:`ServiceConfig`, and the command lines made from its fields.

Every way of starting a service builds one: the Python API (``EmbeddingService``,
``SharedPool``, ``embedshare.ray.init``), ``embedshare serve``, ``python -m
embedshare.service``, the state file a restart reads back, and each Ray node. Each setting is
declared once, as a field: its default, its check, its help text and its flag. The options of
``embedshare serve`` (``cli/serve.py``), the service process's own argv
(:func:`service_main_args`) and :meth:`ServiceConfig.argv` (its inverse) are generated from
those fields, so a default or a check cannot be restated and drift apart.

Standard library only at import time: the CLI imports this module to build its options, and
importing the CLI must stay cheap. The address checks import their modules when used.
"""

from __future__ import annotations

import argparse
import functools
import os
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..env import ENV_HTTP_TOKEN, default_store
from ..errors import ServiceArgvError, SettingError
from . import setting_checks as checks
from .setting_checks import Check


@dataclass(frozen=True)
class Option:
    """What one field of :class:`ServiceConfig` declares besides its default."""

    help: str
    check: Check  # checks and normalises the value (ServiceConfig.__post_init__)
    metavar: str | None = None
    path: bool = False  # a file, kept as an absolute path; a click.Path for `embedshare serve`
    limit: bool = False  # a limit at the edge (service/limits.py), in ``limits={...}``
    serve: bool = True  # an option of `embedshare serve` generated from this field
    argv: bool = True  # an option of the service process (False: it gets the value another way)
    flag: str | None = None  # the option's name when not the field's (a repeatable option's singular)


def _setting(default: Any, check: Check, help: str, **option: Any) -> Any:
    metadata = {"option": Option(help, check, **option)}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServiceConfig:
    """How to run a service; also written to ``run/service.json`` so a client can restart it.

    Frozen: a changed setting is a new config (``dataclasses.replace``), checked again.
    """

    store: str = _setting(
        MISSING, checks.folder, "Store folder (cache, indexes, service socket).", metavar="DIR", serve=False
    )  # serve: every command's --store
    model: str = _setting(
        "local", checks.model_spec, "Embedder spec: local, hash:<dim>, openai:<model>.", serve=False
    )  # serve: every command's --model, with its defaults
    registry: str | None = _setting(
        None,
        checks.registry,
        "Tool registry to index and serve: a JSON file, or 'bundled'. Default: the one the store records, if any.",
        serve=False,
    )  # serve: its own --registry (its help says more)
    max_batch: int = _setting(64, checks.whole(1, 100_000), "Most texts per model call.")
    max_wait_ms: float = _setting(
        2.0,
        checks.duration(allow_zero=True, unit="milliseconds", maximum=60_000),
        "How long to gather requests into a batch.",
    )
    threads: int | None = _setting(
        None, checks.optional(checks.whole(1, 1024)), "Threads of the local model (ONNX Runtime or torch)."
    )
    max_batch_tokens: int | None = _setting(
        None,
        checks.optional(checks.batch_tokens),
        "Padded tokens per forward of the local ONNX model at most (TEI's --max-batch-tokens; "
        "default: the budget measured in bench/README.md).",
    )
    http: str | None = _setting(
        None,
        checks.optional(checks.http_address),
        "Also serve an OpenAI-compatible /v1/embeddings and /metrics "
        "(off by default; a bare PORT listens on 127.0.0.1).",
        metavar="HOST:PORT",
    )
    served_model_names: tuple[str, ...] = _setting(
        (),
        checks.served_names,
        "Another name HTTP clients may ask for the model by (repeatable), such as their default "
        "text-embedding-ada-002; any other name stays a 404.",
        metavar="NAME",
        flag="--served-model-name",
    )
    http_token_file: str | None = _setting(
        None,
        checks.file,
        f"A file (mode 0600) holding the bearer token HTTP clients must send; or set "
        f"{ENV_HTTP_TOKEN}. Optional on loopback, required on other hosts.",
        path=True,
    )
    http_no_auth: bool = _setting(False, checks.flag, "Serve a non-loopback --http without a token (warned).")
    # Limits at the edge (service/limits.py; docs/reliability.md, "Security", has the reasons).
    max_connections: int = _setting(
        1024, checks.whole(1, 1 << 20), "Connections open at once on the Unix socket.", limit=True
    )
    max_http_connections: int = _setting(
        256,
        checks.whole(1, 1 << 20),
        "Connections open at once on the HTTP port (apart from the socket's).",
        limit=True,
    )
    max_tcp_connections: int = _setting(
        64,
        checks.whole(1, 1 << 20),
        "Connections open at once on the TCP listener (EmbeddingService(tcp=...); not a serve option).",
        limit=True,
    )
    first_frame_timeout: float = _setting(
        10.0,
        checks.duration(maximum=3600),
        "Seconds a new connection has to send its first request (HTTP: its headers).",
        limit=True,
    )
    frame_timeout: float = _setting(
        60.0,
        checks.duration(maximum=3600),
        "Seconds to finish sending a request once begun (HTTP: its body).",
        limit=True,
    )
    idle_timeout: float = _setting(
        0.0,
        checks.duration(allow_zero=True),
        "Close socket/TCP connections idle this long (0: never; clients reconnect).",
        limit=True,
    )
    http_keepalive_timeout: float = _setting(
        5.0, checks.duration(maximum=3600), "Seconds an HTTP connection may wait between requests.", limit=True
    )
    max_buffered_mb: int = _setting(
        256, checks.whole(1, 1 << 20), "Request bytes held at once across socket and TCP connections.", limit=True
    )
    max_http_buffered_mb: int = _setting(
        64, checks.whole(1, 1 << 20), "Request body bytes held at once across HTTP connections.", limit=True
    )
    http_read_timeout: float = _setting(
        5.0,
        checks.duration(maximum=3600),
        "Seconds an HTTP body may go without a byte arriving (then 408).",
        limit=True,
    )
    max_client_batch_size: int = _setting(
        2048,
        checks.whole(1, 100_000),
        "Most texts (or token arrays) in one HTTP request, as TEI's option (over it: 413).",
        limit=True,
    )
    max_concurrent_requests: int = _setting(
        128,
        checks.whole(1, 100_000),
        "HTTP requests in progress at once, as TEI's option (one more: 429 with Retry-After).",
        limit=True,
    )
    log_interval: float = _setting(
        10.0,
        checks.duration(allow_zero=True),
        "Seconds between two warnings or errors of the same kind in the log (0: no limit).",
        limit=True,
    )
    # The optional token-checked TCP listener (docs/reliability.md, "The TCP listener"): started
    # with `python -m embedshare.service` or EmbeddingService, not an option of `embedshare serve`.
    tcp: str | None = _setting(
        None,
        checks.optional(checks.tcp_address),
        "HOST:PORT (or PORT, on loopback) for a token-checked TCP listener (default: off).",
        metavar="HOST:PORT",
        serve=False,
    )
    token_file: str | None = _setting(
        None,
        checks.file,
        "A file (mode 0600) holding the token TCP clients must present; required with --tcp.",
        path=True,
        serve=False,
    )
    # Texts to embed at start: the launcher hands them over in a file (--preload-file), not argv.
    preload: tuple[str, ...] = _setting((), checks.texts, "Texts to embed at start.", serve=False, argv=False)

    def __post_init__(self) -> None:
        """Every way of making a config (the Python API, the CLI, the service's argv, a state
        file read back for a restart) is checked here, once: ``SettingError`` names the field."""
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["option"].check(f.name, getattr(self, f.name)))
        if self.max_batch_tokens is not None:
            from ..embedders import takes_token_budget  # numpy: only when a budget is given

            if not takes_token_budget(self.model):  # warned, not refused: a config that ran before still runs
                warnings.warn(
                    f"max_batch_tokens has no effect with model {self.model!r}: only the local ONNX model "
                    "(local, local@int8) cuts its forwards by tokens",
                    UserWarning,
                    stacklevel=3,
                )

    def argv(self) -> list[str]:
        """The service process's options for this config (:func:`service_main_args` reads them)."""
        args: list[str] = []
        for option in command_options():
            value = getattr(self, option.name)
            if not option.argv or (value == option.default and not option.required):
                continue
            if option.repeat:
                args += [arg for item in value for arg in (option.flag, str(item))]
            else:
                args += [option.flag] if option.kind is bool else [option.flag, str(value)]
        return args


@dataclass(frozen=True)
class CommandOption:
    """One field of :class:`ServiceConfig` as a command-line option (see :func:`command_options`)."""

    name: str
    flag: str  # --max-batch
    kind: type  # int, float, str or bool (a bool is a flag, off by default)
    repeat: bool  # given once per value (a tuple field: --served-model-name A --served-model-name B)
    default: Any  # the field's default (None when required)
    required: bool
    help: str
    metavar: str | None
    path: bool
    serve: bool
    argv: bool


@functools.cache
def command_options() -> tuple[CommandOption, ...]:
    """The fields of :class:`ServiceConfig` as options, in field order; the type is the field's."""
    hints = typing.get_type_hints(ServiceConfig)
    options = []
    for f in fields(ServiceConfig):
        option: Option = f.metadata["option"]
        repeat = typing.get_origin(hints[f.name]) is tuple  # tuple[str, ...]: one flag a value
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
        kind = typing.get_origin(kinds[0]) or kinds[0]
        required = f.default is MISSING
        options.append(
            CommandOption(
                name=f.name,
                flag=option.flag or "--" + f.name.replace("_", "-"),
                kind=str if repeat else kind,
                repeat=repeat,
                default=None if required else f.default,
                required=required,
                help=option.help,
                metavar=option.metavar,
                path=option.path,
                serve=option.serve,
                argv=option.argv,
            )
        )
    return tuple(options)


LIMIT_FIELDS = tuple(f.name for f in fields(ServiceConfig) if f.metadata["option"].limit)


def service_config(
    config: ServiceConfig | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    fallback_store: Callable[[], str | os.PathLike[str]] = default_store,
    limits: Mapping[str, float] | None = None,
    **given: Any,
) -> ServiceConfig:
    """The one config a caller means: ``config``, or one made of keyword settings; not both.

    A keyword left at None is not given: its field keeps its default (the dataclass's, the one
    place defaults live). ``store`` defaults to ``fallback_store()``. ``limits``: settings named
    in :data:`LIMIT_FIELDS`. A config together with any given setting is a ``SettingError``
    naming them, so that each setting is said one way.
    """
    given = {name: value for name, value in given.items() if value is not None}
    if limits:
        unknown = set(limits) - set(LIMIT_FIELDS)
        if unknown:
            raise SettingError(f"unknown limit {sorted(unknown)[0]!r}; the limits are {', '.join(LIMIT_FIELDS)}")
        given.update(limits)
    if config is None:
        return ServiceConfig(store=os.fspath(store if store is not None else fallback_store()), **given)
    if not isinstance(config, ServiceConfig):
        raise SettingError(f"config must be a ServiceConfig, got {type(config).__name__}")
    both = sorted(given) + (["store"] if store is not None else [])
    if both:
        raise SettingError(
            f"give the service's settings in config= or as keywords, not both: got config= and {', '.join(both)}"
        )
    return config


# -- the service process's command line ---------------------------------------------------------------


def service_parser() -> argparse.ArgumentParser:
    """``python -m embedshare.service``: an option per field, and what only a launcher passes."""
    parser = argparse.ArgumentParser(prog="python -m embedshare.service")
    for option in command_options():
        if not option.argv:
            continue
        if option.kind is bool or option.repeat:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="append" if option.repeat else "store_true",
                default=argparse.SUPPRESS,
                help=option.help,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                type=option.kind,
                required=option.required,
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=option.help,
            )
    parser.add_argument("--preload-file", help="a file of texts, one per line, to embed at start")
    parser.add_argument(
        "--ready-fd", type=int, help="a pipe to write one line on: ready PID, already PID or error MESSAGE"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def service_main_args(argv: list[str] | None = None) -> tuple[ServiceConfig, int | None, int]:
    """The service process's argv as ``(config, ready_fd, verbose)``.

    A bad setting is said on the ready pipe (``error MESSAGE``, where the launcher looks) and
    raised as :class:`ServiceArgvError`; ``main()`` prints it.
    """
    args = vars(service_parser().parse_args(argv))
    ready_fd: int | None = args.pop("ready_fd")
    verbose: int = args.pop("verbose")
    preload_file: str | None = args.pop("preload_file")
    try:
        if preload_file:
            args["preload"] = [line for line in Path(preload_file).read_text().splitlines() if line.strip()]
        config = ServiceConfig(**args)
    except (OSError, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        if ready_fd is not None:
            os.write(ready_fd, f"error {message}\n".encode())
        raise ServiceArgvError(message) from None
    return config, ready_fd, verbose
