"""What lives in the store's ``run/`` folder: the service lock, its state file, its config.

Kept apart from ``server.py`` so that clients (every worker) can read it without importing
the server's asyncio machinery (~4 MB in every worker).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .. import settings
from ..store.files import open_private
from ..store.layout import StoreLayout

ENV_ADDRESS = "EMBEDSHARE_ADDRESS"  # the socket of the service; inherited by child processes
ENV_STORE = "EMBEDSHARE_STORE"
ENV_ON_FAILURE = "EMBEDSHARE_ON_FAILURE"  # restart | local | error: what a client does if it dies
ENV_TOKEN = "EMBEDSHARE_TOKEN"  # the token a client presents on a tcp:// address
TCP_SCHEME = "tcp://"
MIN_TOKEN_CHARS = 16

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
    tcp: str | None = None  # HOST:PORT (or PORT, on loopback) of the optional token-checked TCP listener
    token_file: str | None = None  # the token TCP clients must present; required with tcp
    http: str | None = None  # HOST:PORT of the OpenAI-compatible endpoint (service/http.py); off if None
    http_token_file: str | None = None  # a bearer token HTTP clients must send (service/http_guard.py)
    http_no_auth: bool = False  # a non-loopback --http without a token: allowed only if asked for
    # Limits at the edge (service/limits.py; docs/reliability.md, "Security", has the reasons).
    max_connections: int = 1024  # on the Unix socket
    max_tcp_connections: int = 64
    max_http_connections: int = 256
    first_frame_timeout: float = 10.0  # s from connecting to a complete first frame (HTTP: headers)
    frame_timeout: float = 60.0  # s to finish a frame (HTTP: a body) once begun
    idle_timeout: float = 0.0  # s with nothing received and nothing in flight (socket, TCP); 0: never
    http_keepalive_timeout: float = 5.0  # s an HTTP connection may wait between requests
    max_buffered_mb: int = 256  # request bytes read or being answered, socket and TCP together
    max_http_buffered_mb: int = 64  # the same for HTTP bodies
    log_interval: float = 10.0  # s between two warnings (or errors) of the same kind; 0: no limit

    def __post_init__(self) -> None:
        """Every way of making a config (the Python API, the CLI, the service's argv, a state
        file read back for a restart) is checked here, once: ``SettingError`` names the field."""
        if not isinstance(self.store, str) or not self.store:
            raise settings.SettingError(f"store must be a folder path, got {self.store!r}")
        if not isinstance(self.model, str) or not self.model:
            raise settings.SettingError(f"model must be a model spec such as 'local', got {self.model!r}")
        self.max_batch = settings.whole_number("max_batch", self.max_batch, 1)
        self.max_wait_ms = settings.seconds("max_wait_ms", self.max_wait_ms, allow_zero=True, unit="milliseconds")
        if self.threads is not None:
            self.threads = settings.whole_number("threads", self.threads, 1)
        if not isinstance(self.preload, list) or not all(isinstance(t, str) for t in self.preload):
            raise settings.SettingError("preload must be a list of texts")
        if self.tcp is not None:
            parse_tcp_address(self.tcp)
        if self.http is not None:
            from ..service.http.address import parse_http_address  # not at import: workers read this module

            parse_http_address(self.http)
        for name in LIMIT_FIELDS:
            setattr(self, name, _checked_limit(name, getattr(self, name)))

    def argv(self) -> list[str]:
        args = ["--store", self.store, "--model", self.model,
                "--max-batch", str(self.max_batch), "--max-wait-ms", str(self.max_wait_ms)]
        if self.registry:
            args += ["--registry", self.registry]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.tcp:
            args += ["--tcp", self.tcp]
        if self.token_file:
            args += ["--token-file", self.token_file]
        if self.http:
            args += ["--http", self.http]
        if self.http_token_file:
            args += ["--http-token-file", self.http_token_file]
        if self.http_no_auth:
            args += ["--http-no-auth"]
        for name in LIMIT_FIELDS:
            if getattr(self, name) != getattr(ServiceConfig, name):
                args += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        return args


LIMIT_FIELDS = ("max_connections", "max_tcp_connections", "max_http_connections", "first_frame_timeout",
                "frame_timeout", "idle_timeout", "http_keepalive_timeout", "max_buffered_mb",
                "max_http_buffered_mb", "log_interval")


def _checked_limit(name: str, value: Any) -> Any:
    """One limit of LIMIT_FIELDS, checked like every other setting (``settings``)."""
    if isinstance(getattr(ServiceConfig, name), int):
        return settings.whole_number(name, value, 1)
    return settings.seconds(name, value, allow_zero=name in ("idle_timeout", "log_interval"))


def apply_limits(config: ServiceConfig, limits: dict[str, float]) -> None:
    """Set ``limits`` (names of LIMIT_FIELDS) on ``config``, each checked: a clear error if not."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise settings.SettingError(
            f"unknown limit {sorted(unknown)[0]!r}; the limits are {', '.join(LIMIT_FIELDS)}")
    for name, value in limits.items():
        setattr(config, name, _checked_limit(name, value))


class AlreadyRunning(RuntimeError):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"a service already runs on this store (pid {pid})")
        self.pid = pid


def acquire_service_lock(layout: StoreLayout) -> int:
    """Take the store's service lock or raise :class:`AlreadyRunning`; returns the fd."""
    layout.make_private_run_dir()
    fd = open_private(layout.lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(read_state(layout).get("pid")) from None
    return fd


def service_lock_held(layout: StoreLayout) -> bool:
    """True while a service holds the store's lock (running, starting, or stopping).

    Probed by taking the lock for an instant: a service starting in that instant says
    ``already``, and its launcher looks again (see ``EmbeddingService.start``).
    """
    try:
        fd = os.open(layout.lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class StateFileError(ValueError):
    """``run/service.json`` exists but cannot be read back (garbled, cut short, not an object)."""


def read_state(layout: StoreLayout, *, strict: bool = False) -> dict[str, Any]:
    """What the store's (last) service wrote about itself; ``{}`` if no service has written it.

    A damaged file reads as ``{}`` too, unless ``strict``: then it is a :class:`StateFileError`
    that says so (a restart must not report "no service has run" when one has).
    """
    try:
        text = layout.state.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if strict:
            raise StateFileError(f"cannot read {layout.state}: {exc.strerror or exc}") from None
        return {}
    try:
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
    except ValueError as exc:
        if strict:
            raise StateFileError(
                f"{layout.state} is damaged ({exc}); the next service started on this store "
                f"rewrites it: embedshare serve --store {layout.root} --model MODEL [--registry R]"
            ) from None
        return {}
    return state


def mark_stopped(layout: StoreLayout, by: str, clients: list[int]) -> None:
    """Record in the state file that the service was stopped on purpose (``embedshare stop``).

    Restart-policy clients read it and do not bring the service back; the next service to
    start writes a fresh state file, which clears it.
    """
    from ..store.files import write_atomic

    state = read_state(layout)
    state["stopped"] = {"by": by, "at": time.time(), "pid": state.get("pid"), "clients": clients}
    write_atomic(layout.state, json.dumps(state, indent=2))


def stopped_on_purpose(layout: StoreLayout) -> str | None:
    """Why the store's service must not be restarted (a deliberate stop), or None."""
    stopped = read_state(layout).get("stopped")
    if not isinstance(stopped, dict):
        return None
    when = time.strftime("%H:%M:%S", time.localtime(float(stopped.get("at") or 0)))
    return (f"the embedshare service of {layout.root} (pid {stopped.get('pid')}) was stopped by "
            f"`{stopped.get('by')}` at {when}, so it is not restarted; start it again with "
            f"`embedshare serve --store {layout.root} --detach` (or start your pool again)")


def parse_tcp_address(spec: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT``, ``[V6]:PORT`` or ``tcp://HOST:PORT`` -> ``(host, port)``.

    A bare port means loopback (127.0.0.1): listening on another interface must be asked for.
    """
    spec = str(spec)
    text = spec[len(TCP_SCHEME):] if spec.startswith(TCP_SCHEME) else spec
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise settings.SettingError(f"bad TCP address {spec!r}: expected HOST:PORT or PORT") from None
    if not 0 <= number <= 65535:
        raise settings.SettingError(f"bad TCP address {spec!r}: port {number} is not in 0..65535")
    return host, number


def read_token_file(path: str | os.PathLike) -> bytes:
    """The token in ``path``, checked: private to its owner (no group or other bits), long enough.

    The token itself never appears in an error message, a log line or ``stats``.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise ValueError(
            f"the token file {path} is readable by other users (mode {st.st_mode & 0o777:04o}); "
            "chmod 600 it"
        )
    token = data.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token in {path} is too short: use at least {MIN_TOKEN_CHARS} characters")
    return token
