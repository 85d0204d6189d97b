"""What a user reads: start-up errors of `serve` as one line, the no-service warning once, help
texts that say what commands do, `index list` / `index show`, and `ray-demo` as a subcommand."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers.disks import fill, mount_tmpfs, unmount
from helpers.extras import requires

from embedshare.cli import main

pytestmark = pytest.mark.timeout(180)

README = Path(__file__).parents[2] / "README.md"


def cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m embedshare ARGS`` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "embedshare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(result, *fragments: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- the no-service warning ------------------------------------------------------------------------


def test_the_no_service_warning_is_printed_once(tmp_path):
    code = "from embedshare import get_embedding_manager; get_embedding_manager(model='hash:64')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMBEDSHARE_STORE": str(tmp_path / "store")},
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no embedshare service is running") == 1, out.stderr


# -- start-up errors of serve ----------------------------------------------------------------------


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield lambda path, options: (mount_tmpfs(path, options), mounted.append(path))
    for path in mounted:
        unmount(path)


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def _read_only_store(tmp_path: Path, mounts) -> Path:
    if os.geteuid() != 0:
        parent = tmp_path / "read-only"
        parent.mkdir()
        parent.chmod(0o500)
        return parent / "store"
    mounts(tmp_path / "read-only", "ro,size=1m")  # root writes through any mode: a read-only mount
    return tmp_path / "read-only" / "store"


def _full_store(tmp_path: Path, mounts) -> Path:
    mounts(tmp_path / "full", "size=256k")
    fill(tmp_path / "full")
    return tmp_path / "full" / "store"


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
@pytest.mark.parametrize(
    "case",
    [
        "unknown model",
        "missing registry",
        pytest.param("port in use", marks=requires("http")),
        "read-only store",
        "full store",
    ],
)
def test_serve_start_up_errors_are_one_line(case, detach, tmp_path, mounts, busy_port):
    store, args, fragment = tmp_path / "store", ["--model", "hash:64"], ""
    if case == "unknown model":
        args, fragment = ["--model", "no-such-model"], "unknown model spec 'no-such-model'"
    elif case == "missing registry":
        args += ["--registry", str(tmp_path / "missing.json")]
        fragment = "registry file not found"
    elif case == "port in use":
        args += ["--http", f"127.0.0.1:{busy_port}"]
        fragment = f"cannot listen for HTTP on 127.0.0.1:{busy_port}"
    elif case == "read-only store":
        store = _read_only_store(tmp_path, mounts)
        fragment = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    else:
        store = _full_store(tmp_path, mounts)
        fragment = "the disk is full"
    result = cli("serve", "--store", str(store), *args, *(["--detach"] if detach else []))
    assert_one_error_line(result, fragment)


def test_serve_with_v_shows_the_traceback(tmp_path):
    result = cli("-v", "serve", "--store", str(tmp_path / "store"), "--model", "no-such-model", "--detach")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    "error", [PermissionError(13, "Permission denied", "/some/store/cache"), OSError(28, "No space left on device")]
)
def test_permission_and_os_errors_of_any_command_are_one_line(error, monkeypatch, tmp_path):
    import embedshare.manager

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(embedshare.manager, "EmbeddingManager", refuse)
    result = CliRunner().invoke(main, ["index", "build", "bundled", "--store", str(tmp_path), "--model", "hash:64"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {error}", result.stderr


# -- help texts ------------------------------------------------------------------------------------


def _commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_help_texts_say_what_commands_do_without_project_jargon():
    for name in ("bench", "demo", "index", "ray-demo"):
        text = CliRunner().invoke(main, [*name.split(), "--help"]).stdout
        for jargon in ("seed", "the user's", "naive design"):
            assert jargon not in text, (name, jargon)
    assert "Manager dict" in CliRunner().invoke(main, ["bench", "--help"]).stdout
    assert "one embedding manager per process" in " ".join(CliRunner().invoke(main, ["demo", "--help"]).stdout.split())


def test_every_model_option_names_its_variable_and_the_readme_says_which_commands_have_one():
    with_model = set()
    for name, command in _commands(main):
        for param in command.params:
            if "--model" in getattr(param, "opts", []):
                with_model.add(name)
                assert "$EMBEDSHARE_MODEL" in param.help, name
    claim = re.search(r"^(.*) take `--model`", README.read_text(), re.MULTILINE)
    assert claim, "the README's Command line section says which commands take --model"
    assert set(re.findall(r"`([a-z -]+)`", claim.group(1))) == with_model


# -- index list and index show ---------------------------------------------------------------------


def test_index_list_and_show_describe_the_stores_indexes(tmp_path):
    store = str(tmp_path / "store")
    runner = CliRunner()
    assert runner.invoke(main, ["index", "list", "--store", store]).stdout.startswith("no index in ")
    built = runner.invoke(main, ["index", "build", "bundled", "--store", store, "--model", "hash:64"])
    assert built.exit_code == 0, built.output
    folder = Path(built.stdout.strip().rsplit(" at ", 1)[1])
    (folder.parent / "left-behind").mkdir()
    listed = runner.invoke(main, ["index", "list", "--store", store]).stdout.strip().splitlines()
    assert sorted(listed) == sorted(
        [
            f"{folder.name}  hash:64:v1 (64 dims)  82 tools  registry {folder.name[:12]} "
            + str(Path(__import__("embedshare.registry", fromlist=["x"]).bundled_registry_path())),
            "left-behind  damaged: manifest.json is missing",
        ]
    )
    as_json = json.loads(runner.invoke(main, ["index", "list", "--store", store, "--json"]).stdout)
    assert {entry["name"] for entry in as_json} == {folder.name, "left-behind"}
    shown = runner.invoke(main, ["index", "show", folder.name[:8], "--store", store])
    assert shown.exit_code == 0, shown.output
    assert "82 tools in 8 categories:" in shown.stdout and "csv_parser" in shown.stdout
    details = json.loads(runner.invoke(main, ["index", "show", str(folder), "--json"]).stdout)
    assert sum(details["category_counts"].values()) == 82
    missing = runner.invoke(main, ["index", "show", "nope", "--store", store])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no index 'nope'")
    damaged = runner.invoke(main, ["index", "show", "left-behind", "--store", store])
    assert damaged.exit_code == 1 and "manifest.json missing" in damaged.stderr


# -- ray-demo --------------------------------------------------------------------------------------


@requires("ray")
def test_the_ray_demo_is_a_subcommand_with_the_clis_conventions(monkeypatch):
    import embedshare.bench.ray_demo as demo

    seen = {}

    class Report:
        failed = 0

        def format(self):
            return "report"

        def as_dict(self):
            return {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        if kwargs["tasks"] == 13:
            raise ValueError("the cluster at nowhere:1 did not answer")
        return Report()

    monkeypatch.setattr(demo, "run_ray_demo", fake_run)
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")
    result = CliRunner().invoke(main, ["ray-demo", "--tasks", "10"])
    assert result.exit_code == 0 and result.stdout.strip() == "report"
    assert seen["model"] == "hash:64" and seen["tasks"] == 10
    failed = CliRunner().invoke(main, ["ray-demo", "--tasks", "13"])
    assert failed.exit_code == 1 and failed.stderr == "error: the cluster at nowhere:1 did not answer\n"
    module_help = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "ray-demo", "--help"], capture_output=True, text=True, timeout=60
    )
    command_help = CliRunner().invoke(main, ["ray-demo", "--help"]).stdout
    assert module_help.returncode == 0 and "$EMBEDSHARE_MODEL" in module_help.stdout
    assert module_help.stdout.startswith("Usage: python -m embedshare.cli ray-demo [OPTIONS]")
    assert module_help.stdout.split("\n", 1)[1].split() == command_help.split("\n", 1)[1].split()
