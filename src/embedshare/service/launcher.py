"""Start, find and stop the service of a store. (The seed's ``SharedResourceManager``.)

The service always runs in a fresh interpreter started with ``subprocess`` (never forked:
a fork of a process that loaded torch inherits its threads' locks in whatever state they
were). It tells us on a pipe when it answers, so starting waits for a fact, not a timer.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import settings
from ..manager import default_store
from ..settings import SettingError
from ..store import StoreLayout
from ..store.files import open_private, write_atomic
from ..client.connection import ServiceConnection, ServiceUnavailable
from .http.address import http_token, is_loopback, normalise_http_address, parse_http_address
from ..client.state import (
    ENV_ADDRESS,
    ENV_ON_FAILURE,
    ENV_STORE,
    LIMIT_FIELDS,
    ServiceConfig,
    StateFileError,
    apply_limits,
    read_state,
    service_lock_held,
    stopped_on_purpose,
)

log = logging.getLogger(__name__)



class ServiceStartError(RuntimeError):
    """The service process exited or failed before it answered.

    The message is one line (what went wrong, and where the log is); ``log_tail`` holds the
    end of the service's log, traceback included, for ``-v`` and for debugging.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


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
        model: str = "local",
        registry: str | Path | None = None,
        *,
        preload: list[str] | tuple[str, ...] = (),
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        threads: int | None = None,
        detach: bool = False,
        start_timeout: float = 300.0,
        export_env: bool = True,
        verbose: bool | int = False,
        http: str | None = None,
        tcp: str | None = None,
        token_file: str | Path | None = None,
        http_token_file: str | Path | None = None,
        http_no_auth: bool = False,
        limits: dict[str, float] | None = None,
    ) -> None:
        self.layout = StoreLayout(store or default_store())
        registry_arg = None
        if registry is not None:
            registry_arg = str(registry) if str(registry) == "bundled" else str(Path(registry).resolve())
        self.config = ServiceConfig(  # checks every setting (SettingError, a ValueError)
            store=str(self.layout.root), model=model, registry=registry_arg,
            max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads, preload=list(preload),
            http=normalise_http_address(http),
            # The optional token-checked TCP listener (off by default): HOST:PORT or PORT (loopback).
            tcp=tcp, token_file=str(Path(token_file).resolve()) if token_file else None,
        )
        # The HTTP endpoint's bearer token, and the limits at the edge (service/limits.py).
        self.config.http_token_file = str(Path(http_token_file).expanduser().resolve()) if http_token_file else None
        self.config.http_no_auth = http_no_auth
        if self.config.http:  # a missing or unsafe token is one clear error here, not in the log
            http_host = parse_http_address(self.config.http)[0]
            http_token(self.config.http_token_file, http_no_auth, is_loopback(http_host), self.config.http, warn=False)
        apply_limits(self.config, limits or {})
        self.detach = detach
        self.start_timeout = settings.seconds("start_timeout", start_timeout)
        self.export_env = export_env
        self.verbose = verbose
        self.pid: int | None = None
        self.owned = False
        self._process: subprocess.Popen | None = None
        self._saved_env: dict[str, str | None] = {}

    @classmethod
    def from_state(cls, store: str | Path, **overrides: Any) -> "EmbeddingService":
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
                f"one with `embedshare serve --store {layout.root} --detach` (or EmbeddingService)")
        try:
            if not isinstance(config, dict):
                raise SettingError(f"'config' is a {type(config).__name__}, not an object")
            kwargs = {k: config[k] for k in ("model", "registry", "max_batch", "max_wait_ms", "threads", "http")
                      if k in config}
            kwargs.update({k: config[k] for k in ("tcp", "token_file", "http_token_file", "http_no_auth")
                           if config.get(k)})
            kwargs["limits"] = {k: config[k] for k in LIMIT_FIELDS if k in config}
            return cls(layout.root, **{**kwargs, **overrides})
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

    def start(self, *, respect_stop: bool = False) -> "EmbeddingService":
        """Start the service, or join the one already running; return once it answers.

        A service that holds the store's lock is joined without starting an interpreter (25
        workers noticing a crash at once would otherwise start 25). ``respect_stop`` (clients
        under the restart policy): a service stopped by ``embedshare stop`` is not started
        again, :class:`ServiceUnavailable` says so.
        """
        self.layout.make_private_run_dir()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if time.monotonic() > deadline:
                raise ServiceStartError(f"no embedshare service answered on {self.layout.root} within "
                                        f"{self.start_timeout} s (each one started let go of the lock)")
            if service_lock_held(self.layout):
                joined = self._join_running(deadline)
                if joined is not None:
                    self.pid, self.owned = joined
                    break
                continue  # it went away before answering: look again
            why = stopped_on_purpose(self.layout) if respect_stop else None
            if why:
                raise ServiceUnavailable(why)
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
        args = [sys.executable, "-m", "embedshare.service", *self.config.argv()]
        preload_file = None
        if self.config.preload:
            preload_file = self.layout.run / f"preload-{os.getpid()}.txt"
            # whole or not at all: a full disk must not preload half the texts silently
            write_atomic(preload_file, "\n".join(t.replace("\n", " ") for t in self.config.preload))
            args += ["--preload-file", str(preload_file)]
        args += ["-v"] * int(self.verbose)  # -v: info, -vv: debug, in run/service.log
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop(ENV_ADDRESS, None)
        with os.fdopen(open_private(self.layout.log), "ab") as log_file:
            self._process = subprocess.Popen(
                args + ["--ready-fd", str(write_fd)],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal goes to the pool, not here
            )
        os.close(write_fd)
        try:
            line = self._read_ready_line(read_fd)
        finally:
            os.close(read_fd)
            if preload_file is not None:  # read by the service before it says it is ready
                preload_file.unlink(missing_ok=True)
        status, _, detail = line.partition(" ")
        if status == "ready":
            self.pid, self.owned = int(detail), True
            return True
        if status == "already":
            self._process.wait(timeout=30)
            self._process = None
            joined = self._join_running(deadline)
            if joined is not None:
                self.pid, self.owned = joined
            return joined is not None
        self._reap_own_process(timeout=30.0)  # it exits after saying why: no zombie left
        raise ServiceStartError(f"the embedshare service did not start: {detail or 'it exited'} "
                                f"(its log: {self.layout.log})", self.log_tail())

    def _read_ready_line(self, fd: int) -> str:
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill_own_process()
                raise ServiceStartError(f"the embedshare service did not answer within {self.start_timeout} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:  # the process exited without a word
                    self._process.wait(timeout=30)  # type: ignore[union-attr]
                    return f"error exit code {self._process.returncode}"  # type: ignore[union-attr]
                data += chunk
        return data.decode().strip()

    def _join_running(self, deadline: float) -> tuple[int, bool] | None:
        """Another service holds the store: wait until it answers ``hello`` and check its model.

        None when it let go of the lock without answering (it died or was stopped meanwhile).
        """
        while True:
            try:
                conn = ServiceConnection(self.address)
                try:
                    hello = conn.request("hello", timeout=max(1.0, deadline - time.monotonic()))
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
            log.warning("the running embedshare service (pid %s) has no HTTP endpoint; stop it and "
                        "start it again with http=%s to get one", hello["pid"], self.config.http)
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

    def __enter__(self) -> "EmbeddingService":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.detach:
            self.stop()
        elif self.export_env:
            self._restore_env()

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        conn = ServiceConnection(self.address)
        try:
            return conn.request("stats", timeout=30)["stats"]
        finally:
            conn.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.layout.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

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


def restart_service(store: str | Path) -> EmbeddingService:
    """For restart-policy clients: join the store's service or start it as it last ran.

    The store's lock makes sure only one process starts it; a service stopped on purpose
    (``embedshare stop``) is not started again (:class:`ServiceUnavailable` says so).
    """
    return EmbeddingService.from_state(store, export_env=False, detach=True).start(respect_stop=True)


def service_state(store: str | Path) -> dict[str, Any]:
    """What ``run/service.json`` says of the store's (last) service."""
    return read_state(StoreLayout(store))
