"""Every numeric setting is checked where it is given (issue 10, part 3): the Python API, the
CLI, the service's own argv, the environment and a state file read back for a restart. A bad
value is one line naming the setting and the value; nothing is started with it.

The case that made this necessary: ``embedshare serve --max-batch 0`` was accepted, and after
the first request the batcher spun forever, deaf to ``stop`` and SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers.extras import requires

from embedshare.access import SharedEmbeddingManager
from embedshare.client.connection import ServiceConnection
from embedshare.manager import EmbeddingManager
from embedshare.pool.shared import SharedPool
from embedshare.pool.workers import WorkerPool
from embedshare.service.batcher import Batcher
from embedshare.service.config import LIMIT_FIELDS, ServiceConfig, command_options
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.service.metrics import ServiceMetrics
from embedshare.settings import SettingError
from embedshare.store import StoreLayout

BAD_MAX_BATCH = [0, -1, 2.5, True, "8", None]
BAD_MAX_WAIT_MS = [-1, -0.001, math.nan, math.inf, "2", None]
BAD_THREADS = [0, -3, 1.5]
BAD_TIMEOUTS = [0, -1, math.nan, math.inf, "5", None]


def _cases(**bad: list) -> list:
    return [pytest.param(name, value, id=f"{name}={value!r}") for name, values in bad.items() for value in values]


# -- the Python API --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value", _cases(max_batch=BAD_MAX_BATCH, max_wait_ms=BAD_MAX_WAIT_MS, threads=BAD_THREADS)
)
def test_service_config_refuses_a_bad_setting_naming_it(store, name, value):
    with pytest.raises(
        SettingError, match=rf"^{name} must be .*got {value!r}" if not isinstance(value, str) else rf"^{name} must be"
    ):
        ServiceConfig(store=str(store), model="hash:64", **{name: value})


def _numeric_fields() -> list[str]:
    return [o.name for o in command_options() if o.kind in (int, float)]


@pytest.mark.parametrize("name", _numeric_fields())
@pytest.mark.parametrize("value", [1e308, 2**70], ids=["1e308", "2**70"])
def test_every_number_of_a_service_config_has_an_upper_bound_named_in_its_error(store, name, value):
    """Issue 21: `--max-wait-ms 1e308` was accepted and a miss then waited for ever; every time
    and size setting (new ones included: this reads the fields) refuses a value past its bound,
    naming the setting, the value and the range."""
    with pytest.raises(SettingError, match=rf"^{name} must be .*(\.\.|up to )\d+.*, got {re.escape(repr(value))}"):
        ServiceConfig(store=str(store), model="hash:64", **{name: value})


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda store: SharedEmbeddingManager(store / "no.sock", request_timeout=1e308), "request_timeout"),
        (lambda store: SharedEmbeddingManager(store / "no.sock", connect_timeout=1e308), "connect_timeout"),
        (lambda store: ServiceConnection(store / "no.sock", connect_timeout=1e308), "connect_timeout"),
        (lambda store: EmbeddingService(store, model="hash:64", start_timeout=1e308), "start_timeout"),
        (lambda store: WorkerPool(1, task_timeout=1e308), "task_timeout"),
        (lambda store: WorkerPool(100_000), "workers"),
        (lambda store: EmbeddingManager(store, model="hash:64", search_cache_size=2**70), "search_cache_size"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_pool_s_and_the_client_s_timeouts_and_sizes_have_an_upper_bound(store, make, name):
    with pytest.raises(SettingError, match=rf"^{name} must be .*(\.\.|up to )\d+"):
        make(store)


def test_service_config_accepts_the_edges(store):
    config = ServiceConfig(store=str(store), model="hash:64", max_batch=1, max_wait_ms=0, threads=1)
    assert (config.max_batch, config.max_wait_ms, config.threads) == (1, 0.0, 1)


@pytest.mark.parametrize(
    "name, value",
    _cases(
        max_batch=BAD_MAX_BATCH[:3],
        max_wait_ms=BAD_MAX_WAIT_MS[:3],
        threads=BAD_THREADS[:1],
        start_timeout=BAD_TIMEOUTS[:3],
    ),
)
def test_embedding_service_refuses_a_bad_setting_before_starting_anything(store, name, value):
    with pytest.raises(SettingError, match=rf"^{name} must be"):
        EmbeddingService(store, model="hash:64", **{name: value})
    assert not StoreLayout(store).run.exists()  # nothing was started


@pytest.mark.parametrize("spec", ["127.0.0.1:65536", "127.0.0.1:-1", "99999"])
def test_ports_out_of_range_are_refused(store, spec):
    with pytest.raises(ValueError, match="not in 0..65535"):
        EmbeddingService(store, model="hash:64", http=spec)
    with pytest.raises(ValueError, match="not in 0..65535"):
        ServiceConfig(store=str(store), model="hash:64", tcp=spec, token_file="/nonexistent")


@pytest.mark.parametrize(
    "name, value",
    _cases(
        workers=[0, -1, 2.5, True, 100_000],
        max_retries=[-1, 0.5, 10_000],
        task_timeout=[0, -1, math.nan, "10", 1e308],
        max_batch=[0, -1],
        max_wait_ms=[-1, math.nan],
    ),
)
def test_shared_pool_refuses_a_bad_setting_before_starting_a_service(store, name, value):
    with pytest.raises(SettingError, match=rf"^{name} must be"):
        SharedPool(store=store, model="hash:64", registry=None, progress=False, **{name: value})
    assert not StoreLayout(store).run.exists()


@pytest.mark.parametrize(
    "name, value", _cases(workers=[0, -2, 1.5, True], max_retries=[-1], task_timeout=[0, -5, math.inf])
)
def test_worker_pool_refuses_a_bad_setting(name, value):
    kwargs = {"workers": 1, name: value}
    with pytest.raises(SettingError, match=rf"^{name} must be"):
        WorkerPool(**kwargs)


@pytest.mark.parametrize(
    "name, value", _cases(request_timeout=BAD_TIMEOUTS, connect_timeout=BAD_TIMEOUTS[:4], search_cache_size=[-1, 1.5])
)
def test_client_settings_are_refused_before_connecting(store, name, value):
    # The address does not exist: a bad setting must be reported, not "no service".
    with pytest.raises(SettingError, match=rf"^{name} must be"):
        SharedEmbeddingManager(store / "no.sock", **{name: value})


def test_a_connection_timeout_must_be_positive(store):
    with pytest.raises(SettingError, match="^connect_timeout must be"):
        ServiceConnection(store / "no.sock", connect_timeout=0)


def test_local_manager_search_cache_size(store):
    with pytest.raises(SettingError, match="^search_cache_size must be in 0..2147483647, got -1"):
        EmbeddingManager(store, model="hash:64", search_cache_size=-1)


@pytest.mark.parametrize("value", ["restrat", "LOCAL", "yes"])
def test_a_bad_failure_policy_in_the_environment_names_the_variable(store, monkeypatch, value):
    monkeypatch.setenv("EMBEDSHARE_ON_FAILURE", value)
    with pytest.raises(
        SettingError, match=f"EMBEDSHARE_ON_FAILURE must be one of restart, local, error, got '{value}'"
    ):
        SharedEmbeddingManager(store / "no.sock")


@pytest.mark.parametrize("value", ["restrat", "never"])
def test_get_embedding_manager_checks_the_policy_even_without_a_service(monkeypatch, value):
    from embedshare.access import get_embedding_manager

    monkeypatch.setenv("EMBEDSHARE_ON_FAILURE", value)
    with pytest.raises(SettingError, match="EMBEDSHARE_ON_FAILURE must be one of"):
        get_embedding_manager(model="hash:64")
    monkeypatch.delenv("EMBEDSHARE_ON_FAILURE")
    with pytest.raises(SettingError, match="^on_failure must be one of"):
        get_embedding_manager(model="hash:64", on_failure=value)


def test_a_bad_failure_policy_argument(store):
    with pytest.raises(SettingError, match="^on_failure must be one of"):
        SharedEmbeddingManager(store / "no.sock", on_failure="retry")


@pytest.mark.parametrize("name, value", _cases(max_batch=[0, -1, 0.5], max_wait_ms=[-1, math.nan]))
def test_the_batcher_itself_cannot_be_made_to_spin(store, name, value):
    """Defence in depth: a Batcher built around ServiceConfig (a test, the Ray actor) refuses
    what makes its loop take no text per turn."""
    manager = EmbeddingManager(store, model="hash:64")
    kwargs = {"max_batch": 64, "max_wait_ms": 2.0, name: value}
    try:
        with pytest.raises(SettingError, match=rf"^{name} must be"):
            Batcher(manager, ServiceMetrics(), **kwargs)
    finally:
        manager.close()


def test_a_restart_from_a_state_file_with_a_bad_setting_names_the_file_and_the_setting(store):
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    layout.state.write_text(json.dumps({"pid": 1, "config": {"model": "hash:64", "max_batch": 0}}))
    with pytest.raises(
        ServiceStartError, match=r"service\.json holds an invalid config \(max_batch must be in 1..100000, got 0\)"
    ):
        EmbeddingService.from_state(store)


@requires("ray")
def test_ray_settings_are_checked():
    pytest.importorskip("ray")
    from embedshare.ray import api
    from embedshare.ray.coordinator import make_settings

    for name, value in (("max_batch", 0), ("max_wait_ms", -1), ("threads", 0)):
        with pytest.raises(SettingError, match=rf"^{name} must be"):  # before anything of Ray is asked
            api.init("hash:64", store_root="/tmp/x", nodes=["node"], **{name: value})
    with pytest.raises(SettingError, match="^start_timeout must be"):
        make_settings(ServiceConfig(store="/tmp/x", model="hash:64"), namespace="n", ring=["node"], start_timeout=0)


def test_serve_s_limit_options_have_the_service_s_own_defaults_and_types():
    """``embedshare serve``'s options are generated from ``ServiceConfig``'s fields: the two
    cannot drift apart."""
    import click

    from embedshare.cli import serve

    options = {p.name: p for p in serve.params}
    for name in (*LIMIT_FIELDS, "max_batch", "max_wait_ms"):
        default = getattr(ServiceConfig, name)
        assert options[name].default == default, name
        assert options[name].type is {int: click.INT, float: click.FLOAT}[type(default)], name


def test_a_service_config_is_frozen_and_its_argv_reads_back_as_the_same_config(tmp_path):
    """``ServiceConfig.argv()`` and the service's argv parser are generated from the same
    fields: every setting a launcher passes arrives, whatever its kind (a flag, a path, a limit)."""
    from embedshare.service.config import command_options, service_main_args

    limits = {o.name: o.default + (1 if o.kind is int else 1.5) for o in command_options() if o.name in LIMIT_FIELDS}
    config = ServiceConfig(
        store=str(tmp_path / "s"),
        model="local@int8",
        registry="bundled",
        max_batch=8,
        max_wait_ms=0.5,
        threads=2,
        max_batch_tokens=4096,
        http="127.0.0.1:0",
        http_token_file=str(tmp_path / "h"),
        http_no_auth=True,
        served_model_names=("text-embedding-ada-002", "text-embedding-3-small"),
        tcp="127.0.0.1:0",
        token_file=str(tmp_path / "t"),
        **limits,
    )
    assert all(getattr(config, o.name) != o.default for o in command_options() if o.argv and not o.required)
    parsed, ready_fd, verbose = service_main_args([*config.argv(), "--ready-fd", "7", "-vv"])
    assert (parsed, ready_fd, verbose) == (config, 7, 2)
    assert service_main_args(["--store", str(tmp_path / "s")])[0] == ServiceConfig(store=str(tmp_path / "s"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch = 1  # type: ignore[misc]


def test_a_config_and_keyword_settings_together_are_refused(store):
    config = ServiceConfig(store=str(store), model="hash:64")
    with pytest.raises(SettingError, match="not both: got config= and max_batch"):
        EmbeddingService(config=config, max_batch=8)
    with pytest.raises(SettingError, match="not both: got config= and model, store"):
        SharedPool(store=store, model="local", config=config, progress=False)
    assert EmbeddingService(config=config).config is config
    assert SharedPool(workers=1, config=config, progress=False).service.config is config  # no registry
    assert not StoreLayout(store).run.exists()


def test_a_token_file_in_the_home_folder_is_found(store, monkeypatch, tmp_path):
    """``token_file="~/.embedshare-token"`` (docs/reliability.md) named a folder ``~`` under the
    working directory: the launcher resolved the path without expanding the ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    service = EmbeddingService(store, model="hash:64", tcp="127.0.0.1:0", token_file="~/.embedshare-token")
    assert service.config.token_file == str(tmp_path / ".embedshare-token")


def test_a_tcp_port_given_as_a_number_starts_the_listener(make_service, tmp_path):
    """``tcp=0`` (any free port, as a number) was falsy in the spawn code: no listener, no error."""
    token_file = tmp_path / "token"
    token_file.write_text("a" * 32)
    token_file.chmod(0o600)
    service = make_service(tcp=0, token_file=token_file, export_env=False)
    assert service.tcp_address is not None and service.tcp_address.startswith("tcp://127.0.0.1:")


# -- the command line and the service's own argv (real processes: on a build without the checks
#    `serve --max-batch 0` would run, so each is bounded and its process group killed) ---------------


def _run(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(args[2:])} was accepted: still running after {timeout} s")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


SERVE_CASES = [
    (["--max-batch", "0"], "max_batch must be in 1..100000, got 0"),
    (["--max-batch", "-1"], "max_batch must be in 1..100000, got -1"),
    (["--max-wait-ms", "-1"], "max_wait_ms must be a number of milliseconds from 0 up to 60000, got -1.0"),
    (["--max-wait-ms", "nan"], "max_wait_ms must be a number of milliseconds from 0 up to 60000, got nan"),
    (["--threads", "0"], "threads must be in 1..1024, got 0"),
    # Upper bounds (issue 21): 1e308 ms was accepted, and a miss then waited for ever.
    (["--max-wait-ms", "1e308"], "max_wait_ms must be a number of milliseconds from 0 up to 60000, got 1e+308"),
    (["--max-batch", "100001"], "max_batch must be in 1..100000, got 100001"),
    (
        ["--frame-timeout", "1e9"],
        "frame_timeout must be a number of seconds from more than 0 up to 3600, got 1000000000.0",
    ),
    (["--http", "127.0.0.1:70000"], "port 70000 is not in 0..65535"),
]


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
@pytest.mark.parametrize("option, message", SERVE_CASES, ids=[" ".join(c[0]) for c in SERVE_CASES])
def test_serve_refuses_a_bad_setting_with_one_line_and_exit_code_1(store, option, message, detach):
    args = [sys.executable, "-m", "embedshare", "serve", "--store", str(store), "--model", "hash:64", *option]
    try:
        result = _run(args + (["--detach"] if detach else []))
        _assert_one_line_error(result, message)
        assert not StoreLayout(store).socket.exists()
    finally:  # a build that accepts the value starts a detached service: never leave it running
        if StoreLayout(store).socket.exists():
            _run([sys.executable, "-m", "embedshare", "stop", "--store", str(store)])


@pytest.mark.parametrize("option, message", SERVE_CASES[:3], ids=[" ".join(c[0]) for c in SERVE_CASES[:3]])
def test_the_service_module_refuses_a_bad_setting(store, option, message):
    """``python -m embedshare.service`` (what the launcher runs) checks its argv too."""
    result = _run([sys.executable, "-m", "embedshare.service", "--store", str(store), "--model", "hash:64", *option])
    _assert_one_line_error(result, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "read a csv", "-k", "0"], "-k must be in 1..2147483647, got 0"),
        (["top", "--once", "--interval", "0"], "--interval must be a number of seconds from more than 0 up to 604800"),
        (["top", "--interval", "-1"], "--interval must be a number of seconds from more than 0 up to 604800"),
        (["demo", "--workers", "0", "--model", "hash:64"], "--workers must be in 1..2147483647, got 0"),
        (
            ["demo", "--tasks", "0", "--workers", "1", "--no-naive", "--model", "hash:64"],
            "--tasks must be in 1..2147483647, got 0",
        ),
        (
            ["demo", "--naive-workers", "0", "--workers", "1", "--tasks", "1", "--model", "hash:64"],
            "--naive-workers must be in 1..2147483647, got 0",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_other_commands_refuse_bad_numbers(store, args, message):
    from click.testing import CliRunner

    from embedshare.cli import main

    result = CliRunner().invoke(main, [*args, "--store", str(store)])
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
