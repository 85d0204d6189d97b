"""The ``embedshare`` command line, driven through click's CliRunner with the hashing model:
index build, search (text and JSON), embed, and errors as one line with exit code 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embedshare.cli import main
from embedshare.embedders.hashing import HashingEmbedder
from embedshare.registry import load_registry

pytestmark = pytest.mark.timeout(120)

BUNDLED = load_registry("bundled")
TOOLS = {tool.name: tool for tool in BUNDLED.tools}
RANKED_LINE = re.compile(r"^(\d+)\. (\S+)\s+(-?\d+\.\d{3})\s+\[(\S+)\]\s+(.+)$")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    # Nothing may fall back to ~/.cache: the default store is this test's own folder.
    monkeypatch.setenv("EMBEDSHARE_STORE", str(tmp_path / "env-store"))
    monkeypatch.delenv("EMBEDSHARE_MODEL", raising=False)
    return tmp_path / "store"


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 1, one line on stderr starting with 'error:', no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("serve", "stop", "index", "search", "embed", "stats", "demo"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), command


def test_index_build_prints_count_and_path(store):
    result = run("index", "build", "bundled", "--store", str(store), "--model", "hash:64")
    assert result.exit_code == 0, result.output
    out = result.stdout.strip()
    assert f"{len(BUNDLED)} tools" in out
    path = Path(out.rsplit(" at ", 1)[1])
    assert path.is_dir()
    assert (path / "manifest.json").is_file()
    assert path.resolve().is_relative_to(store.resolve())
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["count"] == len(BUNDLED)
    assert manifest["dim"] == 64
    # building again reuses the same index
    again = run("index", "build", "bundled", "--store", str(store), "--model", "hash:64")
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == out


def test_search_prints_k_ranked_lines(store):
    result = run(
        "search", "read a csv file", "-k", "3", "--store", str(store), "--model", "hash:64", "--registry", "bundled"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    parsed = [RANKED_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed] == [1, 2, 3]
    for m in parsed:
        assert m.group(2) in TOOLS
        assert m.group(4) == TOOLS[m.group(2)].category
        assert "match" in m.group(5)  # the reason
    scores = [float(m.group(3)) for m in parsed]
    assert scores == sorted(scores, reverse=True)


def test_search_json(store):
    result = run(
        "search",
        "send an http request",
        "-k",
        "4",
        "--json",
        "--store",
        str(store),
        "--model",
        "hash:64",
        "--registry",
        "bundled",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 4
    for item in data:
        for key in ("name", "score", "category", "reason", "protocol"):
            assert key in item, key
        assert item["name"] in TOOLS
        assert item["category"] == TOOLS[item["name"]].category
        assert item["reason"]
        assert item["protocol"]["name"] == item["name"]
        assert "inputSchema" in item["protocol"]
    scores = [item["score"] for item in data]
    assert scores == sorted(scores, reverse=True)


def test_search_category_filters(store):
    result = run(
        "search",
        "read a csv file",
        "-k",
        "5",
        "--category",
        "network",
        "--json",
        "--store",
        str(store),
        "--model",
        "hash:64",
        "--registry",
        "bundled",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data
    assert {item["category"] for item in data} == {"network"}


def test_search_unknown_category_says_no_tool_matches(store):
    result = run(
        "search",
        "read a csv file",
        "--category",
        "no_such_category",
        "--store",
        str(store),
        "--model",
        "hash:64",
        "--registry",
        "bundled",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no tool matches"


def test_embed_json(store):
    result = run("embed", "hello", "world", "--json", "--store", str(store), "--model", "hash:64")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    vectors = np.array(data["vectors"], dtype=np.float32)
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = HashingEmbedder(64).embed(["hello", "world"])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert data["model_id"] == HashingEmbedder(64).model_id


def test_missing_registry_file_is_one_line_error(store, tmp_path):
    missing = tmp_path / "no-such-registry.json"
    result = run("index", "build", str(missing), "--store", str(store), "--model", "hash:64")
    assert_one_line_error(result, str(missing))


def test_invalid_json_registry_names_line_and_column(store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "tool_a": {"description": "x",,}\n}\n')
    result = run("index", "build", str(bad), "--store", str(store), "--model", "hash:64")
    line = assert_one_line_error(result, str(bad))
    assert "line 2" in line and "column" in line


def test_invalid_registry_via_search_is_one_line_error(store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tool_a": {"name": "tool_a"}}')
    result = run("search", "anything", "--registry", str(bad), "--store", str(store), "--model", "hash:64")
    assert_one_line_error(result, "tool_a", "description")


@pytest.mark.parametrize(
    "command",
    [
        ["search", "read a csv file"],
        ["embed", "hello"],
        ["index", "build", "bundled"],
    ],
)
def test_unknown_model_spec_is_one_line_error(store, command):
    result = run(*command, "--store", str(store), "--model", "no-such-model:1")
    assert_one_line_error(result, "no-such-model")


def test_stats_without_a_service_is_one_line_error(store):
    result = run("stats", "--store", str(store))
    assert_one_line_error(result, "service")


def test_stop_without_a_service_is_one_line_error(store):
    result = run("stop", "--store", str(store))
    assert_one_line_error(result, "service")
    assert "stopped" not in result.stdout


def test_nothing_touches_the_default_store_when_store_is_given(store, tmp_path):
    result = run(
        "search", "read a csv file", "-k", "1", "--store", str(store), "--model", "hash:64", "--registry", "bundled"
    )
    assert result.exit_code == 0, result.output
    assert store.is_dir()
    assert not (tmp_path / "env-store").exists()


def test_importing_the_cli_loads_click_the_standard_library_and_its_settings_only():
    """The CLI imports the rest of embedshare when a command runs; at import time it needs
    only click, and the settings its options are generated from (standard library only)."""
    import subprocess
    import sys

    probe = (
        "import sys; before = set(sys.modules); import embedshare.cli; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    modules = loaded.stdout.split()
    assert "embedshare.cli.serve" in modules, loaded.stderr
    third_party = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"embedshare"}
    assert {name for name in third_party if not name.startswith("_")} == {"click"}
    ours = {m for m in modules if m.startswith("embedshare") and not m.startswith("embedshare.cli")}
    assert ours == {
        "embedshare",
        "embedshare.env",
        "embedshare.errors",  # the settings' SettingError (standard library only)
        "embedshare.service",
        "embedshare.service.config",
        "embedshare.service.setting_checks",  # the config's field checks (standard library only)
        "embedshare.settings",
    }


def test_the_command_s_entry_point_loads_nothing_a_spawned_worker_would_repeat():
    """multiprocessing's spawn re-imports the main script in every worker; for the
    ``embedshare`` command that is its entry-point module, which must not load the CLI."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "embedshare"]
    assert script.value == "embedshare.console:main"
    probe = (
        "import sys, embedshare.console; "
        "print(sorted(m for m in ('click', 'logging', 'embedshare.cli') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stderr
    # and ``python -m embedshare`` is the same command
    helped = subprocess.run([sys.executable, "-m", "embedshare", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "demo" in helped.stdout and "serve" in helped.stdout


def test_the_ray_demo_module_names_the_command_instead_of_doing_nothing():
    """``python -m embedshare.bench.ray_demo`` lost its entry (bench may not import cli): it
    says which command it is now and exits non-zero, rather than exit 0 with no output."""
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-m", "embedshare.bench.ray_demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.strip().splitlines() == [
        "error: run 'python -m embedshare.cli ray-demo' (or 'embedshare ray-demo'); this module is not a command"
    ]
