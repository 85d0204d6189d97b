"""Start, find and stop the service of a store. (The seed's ``SharedResourceManager``.)

The service always runs in a fresh interpreter started with ``subprocess`` (never forked:
a fork of a process that loaded torch inherits its threads' locks in whatever state they
were). It tells us on a pipe when it answers, so starting waits for a fact, not a timer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Self

from .. import settings
from ..client.connection import ServiceConnection
from ..client.protocol import StatsReply
from ..client.state import ServiceState, read_state, service_lock_held, stopped_on_purpose
from ..env import ENV_ADDRESS, ENV_ON_FAILURE, ENV_STORE
from ..errors import ServiceStartError, ServiceStopped, ServiceUnavailable, SettingError, StateFileError
from ..store import StoreLayout
from .config import ServiceConfig, service_config
from .http.address import http_token, is_loopback, parse_http_address
from .spawn import read_log_tail, spawn_service

__all__ = ["EmbeddingService", "ServiceStartError", "restart_service", "service_state"]

log = logging.getLogger(__name__)


class EmbeddingService:
    """A handle on the store's service: starts it (or joins the running one) and stops it.

    ::

        with EmbeddingService(store, model="local", registry="bundled", preload=common) as svc:
            ... # every process started here inherits EMBEDSHARE_ADDRESS and finds it

    Exiting stops the service only if this handle started it and ``detach`` is false.
    """

    def __init__(
        self,
        store: str | Path | None = None,
        model: str | None = None,
        registry: str | Path | None = None,
        *,
        config: ServiceConfig | None = None,
        preload: Sequence[str] | None = None,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        threads: int | None = None,
        http: str | None = None,
        tcp: str | None = None,
        token_file: str | Path | None = None,
        http_token_file: str | Path | None = None,
        http_no_auth: bool | None = None,
        limits: dict[str, float] | None = None,
        detach: bool = False,
        start_timeout: float = 300.0,
        export_env: bool = True,
        verbose: bool | int = False,
    ) -> None:
        """The service's settings are ``config`` (a :class:`ServiceConfig`) or the keywords from
        ``store`` to ``limits``, not both (a ``SettingError`` names them). A keyword left at None
        takes ``ServiceConfig``'s default; ``store`` defaults to ``$EMBEDSHARE_STORE``, else
        ``~/.cache/embedshare``; ``limits`` sets the limits at the edge by name
        (``{"max_connections": 64}``). Every setting is checked here, before anything starts.
        """
        self.config = service_config(  # SettingError (a ValueError) for a bad setting
            config,
            store=store,
            model=model,
            registry=registry,
            preload=preload or None,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            threads=threads,
            http=http,
            tcp=tcp,
            token_file=token_file,
            http_token_file=http_token_file,
            http_no_auth=http_no_auth,
            limits=limits,
        )
        self.layout = StoreLayout(self.config.store)
        if self.config.http:  # a missing or unsafe token is one clear error here, not in the log
            http_host = parse_http_address(self.config.http)[0]
            http_token(
                self.config.http_token_file,
                self.config.http_no_auth,
                is_loopback(http_host),
                self.config.http,
                warn=False,
            )
        self.detach = detach
        self.start_timeout = settings.seconds("start_timeout", start_timeout)
        self.export_env = export_env
        self.verbose = verbose
        self.pid: int | None = None
        self.owned = False
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    @classmethod
    def from_state(cls, store: str | Path, **overrides: Any) -> EmbeddingService:
        """A handle configured as the store's last service was (to restart it)."""
        layout = StoreLayout(store)
        try:
            state = read_state(layout, strict=True)
        except StateFileError as exc:
            raise ServiceStartError(f"cannot restart the embedshare service: {exc}") from None
        config = state.get("config")
        if not config:
            raise ServiceUnavailable(
                f"no embedshare service has run on {layout.root}, so there is none to restart: start "
                f"one with `embedshare serve --store {layout.root} --detach` (or EmbeddingService)"
            )
        try:
            if not isinstance(config, dict):
                raise SettingError(f"'config' is a {type(config).__name__}, not an object")
            names = {f.name for f in fields(ServiceConfig)} - {"store", "preload"}  # this store; preloaded
            recorded = {name: value for name, value in config.items() if name in names}
            return cls(config=ServiceConfig(store=str(layout.root), **recorded), **overrides)
        except (ValueError, TypeError) as exc:  # SettingError, a bad address
            raise ServiceStartError(
                f"cannot restart the embedshare service: {layout.state} holds an invalid config ({exc}); "
                f"start it by hand: embedshare serve --store {layout.root} --model MODEL [--registry R]"
            ) from None

    @property
    def address(self) -> str:
        return str(self.layout.socket)

    @property
    def http_url(self) -> str | None:
        """``http://HOST:PORT`` of the running service's HTTP endpoint (None when it has none)."""
        return read_state(self.layout).get("http")

    @property
    def tcp_address(self) -> str | None:
        """``tcp://HOST:PORT`` of the running service's TCP listener (None when it has none)."""
        bound = read_state(self.layout).get("tcp")
        return f"tcp://{bound}" if bound else None

    # -- start and stop -------------------------------------------------------------------

    def start(self, *, respect_stop: bool = False) -> Self:
        """Start the service, or join the one already running; return once it answers.

        A service that holds the store's lock is joined without starting an interpreter (25
        workers noticing a crash at once would otherwise start 25). ``respect_stop`` (clients
        under the restart policy): a service stopped by ``embedshare stop`` is not started
        again, :class:`ServiceStopped` says so.
        """
        self.layout.make_private_run_dir()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"no embedshare service answered on {self.layout.root} within "
                    f"{self.start_timeout} s (each one started let go of the lock)"
                )
            if service_lock_held(self.layout):
                joined = self._join_running(deadline)
                if joined is not None:
                    self.pid, self.owned = joined
                    break
                continue  # it went away before answering: look again
            why = stopped_on_purpose(self.layout) if respect_stop else None
            if why:
                raise ServiceStopped(why)
            if self._spawn(deadline):
                break
        if self.export_env:
            values = {ENV_ADDRESS: self.address, ENV_STORE: str(self.layout.root)}
            if self.owned and ENV_ON_FAILURE not in os.environ:
                values[ENV_ON_FAILURE] = "restart"  # we own it: bring it back if it dies
            self._export(values)
        return self

    def _spawn(self, deadline: float) -> bool:
        """Start a service process; True once it (or one it found holding the lock) answers."""
        self._process, line = spawn_service(self.config, self.start_timeout, verbose=int(self.verbose))
        status, _, detail = line.partition(" ")
        if status == "ready":
            self.pid, self.owned = int(detail), True
            _reap_when_it_exits(self._process)
            return True
        if status == "already":
            self._process.wait(timeout=30)
            self._process = None
            joined = self._join_running(deadline)
            if joined is not None:
                self.pid, self.owned = joined
            return joined is not None
        self._reap_own_process(timeout=30.0)  # it exits after saying why: no zombie left
        raise ServiceStartError(
            f"the embedshare service did not start: {detail or 'it exited'} (its log: {self.layout.log})",
            self.log_tail(),
        )

    def _join_running(self, deadline: float) -> tuple[int, bool] | None:
        """Another service holds the store: wait until it answers ``hello`` and check its model.

        None when it let go of the lock without answering (it died or was stopped meanwhile).
        """
        while True:
            try:
                conn = ServiceConnection(self.address)
                try:
                    hello = conn.hello(timeout=max(1.0, deadline - time.monotonic()))
                finally:
                    conn.close()
                break
            except ServiceUnavailable:
                # It holds the lock but has not bound its socket yet (a few ms at start).
                if time.monotonic() > deadline:
                    raise ServiceStartError(f"a service holds {self.layout.lock} but never answered") from None
                if not service_lock_held(self.layout):
                    return None
                time.sleep(0.02)
        from ..embedders import create_embedder

        wanted = create_embedder(self.config.model).model_id
        if hello["model_id"] != wanted:
            raise ServiceStartError(
                f"the service running on {self.layout.root} embeds with {hello['model_id']!r}, "
                f"not {wanted!r}; stop it (embedshare stop --store ...) or use its model"
            )
        log.info("joined the running embedshare service (pid %s)", hello["pid"])
        if self.config.http and not read_state(self.layout).get("http"):
            log.warning(
                "the running embedshare service (pid %s) has no HTTP endpoint; stop it and "
                "start it again with http=%s to get one",
                hello["pid"],
                self.config.http,
            )
        return int(hello["pid"]), False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the service if this handle started it (a restarted successor included)."""
        if self.export_env:
            self._restore_env()
        if not self.owned:
            return
        try:
            conn = ServiceConnection(self.address, connect_timeout=2.0)
            try:
                conn.request("shutdown", timeout=timeout)
            finally:
                conn.close()
        except (ServiceUnavailable, OSError):
            pass
        self._reap_own_process(timeout)
        self.owned = False

    def _reap_own_process(self, timeout: float) -> None:
        """Wait for the process this handle started to exit (killing it after ``timeout``)."""
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_own_process()

    def _kill_own_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.detach:
            self.stop()
        elif self.export_env:
            self._restore_env()

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> StatsReply:
        conn = ServiceConnection(self.address)
        try:
            return conn.stats(timeout=30)
        finally:
            conn.close()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` of this store's service log."""
        return read_log_tail(self.layout, lines)

    # -- environment ----------------------------------------------------------------------

    def _export(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()


def _reap_when_it_exits(process: subprocess.Popen[bytes]) -> None:
    """Wait for the service process in a thread, so that one killed (or stopped by another
    process) does not stay a zombie for as long as this process lives: a pool's parent and
    its workers (which restart the service) live as long as the pool. ``Popen.wait`` may run in
    two threads at once: ``stop`` still waits for it, and sees its exit code."""
    threading.Thread(target=process.wait, name=f"embedshare-reap-{process.pid}", daemon=True).start()


def restart_service(store: str | Path) -> EmbeddingService:
    """For restart-policy clients: join the store's service or start it as it last ran.

    The store's lock makes sure only one process starts it; a service stopped on purpose
    (``embedshare stop``) is not started again (:class:`ServiceStopped` says so).
    """
    return EmbeddingService.from_state(store, export_env=False, detach=True).start(respect_stop=True)


def service_state(store: str | Path) -> ServiceState:
    """What ``run/service.json`` says of the store's (last) service."""
    return read_state(StoreLayout(store))
