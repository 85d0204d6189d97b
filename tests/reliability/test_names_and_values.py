"""Names and values, and tracebacks where one line belongs (issue 21, items 6 and 7).

Each shape the issue found is run the way a user runs it: the CLI in a fresh interpreter (one
``error:`` line, exit code 1, no traceback), the Python API (an error that is both a
``TypeError`` and a ``ValueError``, naming the argument and its value).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from helpers.processes import PYTHON

from embedshare.compat import EmbeddingConfig
from embedshare.manager import EmbeddingManager
from embedshare.registry import RegistryError, load_registry

pytestmark = pytest.mark.timeout(180)

TOOL = {"description": "Read a CSV file into rows.", "metadata": {"category": "files"}}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=120)


def _assert_one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- a name given twice --------------------------------------------------------------------------

REPEATED = {
    # 3 entries became 2 tools: the first read_csv was dropped without a word
    "a tool twice": (
        '{"read_csv": %s, "write_csv": %s, "read_csv": %s}' % ((json.dumps(TOOL),) * 3),
        "tool 'read_csv' is given twice",
    ),
    "a field twice (object form)": (
        '{"read_csv": {"description": "one", "description": "two"}}',
        "field 'description' is given twice",
    ),
    "a field twice (list form)": (
        '[{"name": "read_csv", "description": "one", "name": "write_csv"}]',
        "field 'name' is given twice",
    ),
}


@pytest.mark.parametrize("text, message", REPEATED.values(), ids=REPEATED)
def test_a_name_given_twice_in_a_registry_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "tools.json"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        load_registry(path)
    store = tmp_path / "store"
    _assert_one_line(
        _run("-m", "embedshare", "index", "build", str(path), "--store", str(store), "--model", "hash:64"), message
    )


# -- tracebacks where one line belongs: the command line ---------------------------------------------


@pytest.fixture
def deep_registry(tmp_path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text('{"read_csv": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


@pytest.mark.parametrize("command", ["index build", "serve"])
def test_a_registry_nested_100k_levels_deep_is_one_line(tmp_path, deep_registry, command):
    store = str(tmp_path / "store")
    if command == "index build":
        args = ["-m", "embedshare", "index", "build", str(deep_registry), "--store", store, "--model", "hash:64"]
    else:
        args = ["-m", "embedshare", "serve", "--registry", str(deep_registry), "--store", store, "--model", "hash:64"]
    _assert_one_line(_run(*args), "deep.json", "nested too deeply")


def test_the_service_module_given_a_deep_registry_is_one_line(tmp_path, deep_registry):
    store = str(tmp_path / "store")
    result = _run("-m", "embedshare.service", "--store", store, "--model", "hash:64", "--registry", str(deep_registry))
    _assert_one_line(result, "nested too deeply")


@pytest.mark.parametrize("mode", [None, 0o644], ids=["no token file", "a world-readable token file"])
def test_the_service_module_with_tcp_and_a_bad_token_file_is_one_line(tmp_path, mode):
    args = [
        "-m",
        "embedshare.service",
        "--store",
        str(tmp_path / "store"),
        "--model",
        "hash:64",
        "--tcp",
        "127.0.0.1:0",
    ]
    if mode is not None:
        token = tmp_path / "token"
        token.write_text("a-token-long-enough-to-be-used\n")
        token.chmod(mode)
        args += ["--token-file", str(token)]
    expected = "needs --token-file" if mode is None else "readable by other users (mode 0644); chmod 600 it"
    _assert_one_line(_run(*args), expected)


@pytest.mark.parametrize("key, value", [("index", 123), ("source", ["bundled"]), ("hash", 7)])
def test_a_store_json_holding_a_non_string_is_one_line(tmp_path, key, value):
    store = tmp_path / "store"
    EmbeddingManager(store, model="hash:64", registry="bundled").close()
    record = json.loads((store / "store.json").read_text())
    record["registry"][key] = value
    (store / "store.json").write_text(json.dumps(record))
    result = _run("-m", "embedshare", "search", "read a csv", "--store", str(store), "--model", "hash:64")
    _assert_one_line(result, "store.json", f"registry.{key} must be a string, got {value!r}")


# -- tracebacks where one line belongs: the Python API -------------------------------------------------


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    manager = EmbeddingManager(tmp_path_factory.mktemp("api") / "store", model="hash:64", registry="bundled")
    yield manager
    manager.close()


CALLS = {
    "find_similar_tools(k='3')": (lambda m: m.find_similar_tools("read_csv", k="3"), "k must be .*got '3'"),
    "find_similar_tools(k=2.5)": (lambda m: m.find_similar_tools("read_csv", k=2.5), "k must be .*got 2.5"),
    "find_similar_tools(same_category_only='yes')": (
        lambda m: m.find_similar_tools("read_csv", same_category_only="yes"),
        "same_category_only must be True or False, got 'yes'",
    ),
    "get_tool_protocols([None])": (lambda m: m.get_tool_protocols([None]), "tool name must be a str, got None"),
    "get_tool_protocols(None)": (lambda m: m.get_tool_protocols(None), "tool_names must be .*got None"),
    "search(category=[])": (lambda m: m.search("read a csv", category=[]), r"category must be .*got \[\]"),
    "search(k=True)": (lambda m: m.search("read a csv", k=True), "k must be .*got True"),
    # NaN passes no comparison: it silently found nothing
    "search(threshold=nan)": (lambda m: m.search("read a csv", threshold=math.nan), "threshold must be .*got nan"),
    "search(threshold='0.5')": (lambda m: m.search("read a csv", threshold="0.5"), "threshold must be .*got '0.5'"),
}


@pytest.mark.parametrize("call, message", CALLS.values(), ids=CALLS)
def test_a_bad_argument_to_the_search_api_names_it(manager, call, message):
    with pytest.raises(TypeError, match=message) as info:
        call(manager)
    assert isinstance(info.value, ValueError)  # code catching either kind catches it


COMPAT_CALLS = {
    "find_similar_tools(k='3')": (lambda c: c.find_similar_tools("read_csv", k="3"), "k must be .*got '3'"),
    "find_similar_tools(k=2.5)": (lambda c: c.find_similar_tools("read_csv", k=2.5), "k must be .*got 2.5"),
    "get_tool_protocols([None])": (lambda c: c.get_tool_protocols([None]), "tool name must be a str, got None"),
    "get_tool_protocols(None)": (lambda c: c.get_tool_protocols(None), "tool_names must be .*got None"),
    "search(category_filter=[])": (lambda c: c.search("read a csv", category_filter=[]), r"category must be .*\[\]"),
    "search(similarity_threshold=nan)": (
        lambda c: c.search("read a csv", similarity_threshold=math.nan),
        "threshold must be .*got nan",
    ),
}


@pytest.mark.parametrize("call, message", COMPAT_CALLS.values(), ids=COMPAT_CALLS)
def test_a_bad_argument_to_the_compat_manager_names_it(make_service, monkeypatch, call, message):
    from embedshare.compat import get_embedding_manager

    make_service(registry="bundled")
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")
    with pytest.raises(TypeError, match=message) as info:
        call(get_embedding_manager())
    assert isinstance(info.value, ValueError)


CONFIGS = {
    "model=123": ({"model": 123}, "model must be .*got 123"),
    "model=None": ({"model": None}, "model must be .*got None"),
    "model=''": ({"model": ""}, "model must be .*got ''"),
    "dimension='abc'": ({"dimension": "abc"}, "dimension must be .*got 'abc'"),
    "dimension=None": ({"dimension": None}, "dimension must be .*got None"),
    "dimension=0": ({"dimension": 0}, "dimension must be .*got 0"),
}


@pytest.mark.parametrize("kwargs, message", CONFIGS.values(), ids=CONFIGS)
def test_a_bad_compat_config_names_the_field(kwargs, message):
    with pytest.raises(TypeError, match=f"^EmbeddingConfig: {message}") as info:
        EmbeddingConfig(**kwargs)
    assert isinstance(info.value, ValueError)
