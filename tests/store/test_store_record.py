"""The self-describing store (issue 10): what a store records, and every entry point given no
registry using it, through the CLI (click's CliRunner) and the Python API. Another registry
than the service's is an error, never silently the service's."""

from __future__ import annotations

import json
import re
import stat
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedshare import get_embedding_manager
from embedshare.access import NoServiceWarning, reset_embedding_manager
from embedshare.cli import main as cli
from embedshare.manager import EmbeddingManager, NoIndexError
from embedshare.registry import load_registry
from embedshare.store import StoreLayout

pytestmark = pytest.mark.timeout(180)

ZOO = {
    "zebra_feeder": {
        "description": "Feed the zebras at the zoo.",
        "metadata": {"category": "zoo", "operation": "feed"},
    },
    "lion_tamer": {
        "description": "Tame a lion in a circus ring.",
        "metadata": {"category": "zoo", "operation": "tame"},
    },
}


@pytest.fixture
def zoo(tmp_path) -> Path:
    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(ZOO))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


# -- CLI -------------------------------------------------------------------------------------------


def test_index_build_then_search_on_the_same_store_uses_that_registry(store, zoo):
    assert run("index", "build", zoo, "--store", store, "--model", "hash:64").exit_code == 0
    record = json.loads(StoreLayout(store).record.read_text())
    assert record["registry"]["hash"] == load_registry(zoo).content_hash
    assert record["registry"]["source"] == str(zoo.resolve())
    assert record["model"] == {"spec": "hash:64", "model_id": "hash:64:v1", "dim": 64}
    assert stat.S_IMODE(StoreLayout(store).record.stat().st_mode) == 0o600
    # no --registry and no --model: the store's (its model too)
    result = run("search", "feed the zebras", "--store", store, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    hits = [hit["name"] for hit in json.loads(result.stdout)]
    assert hits[0] == "zebra_feeder" and set(hits) <= set(ZOO)


def test_serve_without_registry_serves_the_recorded_one(store, zoo):
    assert run("index", "build", zoo, "--store", store, "--model", "hash:64").exit_code == 0
    started = run("serve", "--store", store, "--detach")
    try:
        assert started.exit_code == 0, started.output
        result = run("search", "tame a lion", "--store", store, "-k", "1", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["name"] == "lion_tamer"
    finally:
        run("stop", "--store", store)


def test_search_asking_for_another_registry_than_the_service_s_is_a_clear_error(store, zoo, hash_service):
    line = one_line_error(run("search", "read a csv file", "--store", store, "--registry", zoo))
    assert "zoo.json" in line and "bundled" not in line.split(" not ")[1].split(":")[0]
    assert load_registry("bundled").content_hash[:12] in line  # the served one, by hash
    assert load_registry(zoo).content_hash[:12] in line  # the asked one, by hash
    assert "embedshare serve" in line and "embedshare stop" in line  # what to do
    # asking for the served one is fine
    assert run("search", "read a csv file", "--store", store, "--registry", "bundled").exit_code == 0


def test_a_nonexistent_registry_file_is_an_error_with_or_without_a_service(store, tmp_path, hash_service):
    missing = tmp_path / "no-such-tools.json"
    assert "no-such-tools.json" in one_line_error(run("search", "q", "--store", store, "--registry", missing))
    other = tmp_path / "other-store"
    assert "no-such-tools.json" in one_line_error(
        run("search", "q", "--store", other, "--registry", missing, "--model", "hash:64")
    )


def test_a_fresh_store_with_no_registry_names_the_store_and_the_fixing_command(store):
    line = one_line_error(run("search", "read a csv file", "--store", store, "--model", "hash:64"))
    assert str(StoreLayout(store).root) in line
    assert f"embedshare index build FILE --store {StoreLayout(store).root}" in line
    # the command it names fixes it
    assert run("index", "build", "bundled", "--store", store, "--model", "hash:64").exit_code == 0
    assert run("search", "read a csv file", "--store", store).exit_code == 0


def test_stop_says_how_many_clients_were_attached(store, hash_service):
    client = get_embedding_manager()  # this process: one client
    assert client.stats()["mode"] == "shared"
    result = run("stop", "--store", store)
    assert result.exit_code == 0, result.output
    assert "1 client process(es) were attached" in result.stdout


# -- Python API ------------------------------------------------------------------------------------


def test_a_manager_given_no_registry_uses_the_one_the_store_records(store, zoo):
    EmbeddingManager(store, model="hash:64", registry=zoo).close()
    with pytest.warns(NoServiceWarning):
        manager = get_embedding_manager(store=store)  # no model, no registry: the store's
    assert manager.model_id == "hash:64:v1"
    assert manager.search("feed the zebras", k=1)[0].name == "zebra_feeder"


def test_get_embedding_manager_asking_for_another_registry_than_the_service_s_raises(store, zoo, hash_service):
    from embedshare import RegistryMismatchError

    with pytest.raises(RegistryMismatchError, match="zoo.json"):
        get_embedding_manager(registry=zoo)
    reset_embedding_manager()
    with pytest.raises(ValueError, match="registry file not found"):
        get_embedding_manager(registry=zoo.parent / "missing.json")
    reset_embedding_manager()
    assert get_embedding_manager(registry="bundled").search("read a csv file", k=1)


def test_the_readme_snippet_runs_on_a_fresh_machine_and_the_warning_s_hint_works(store, monkeypatch):
    monkeypatch.setenv("EMBEDSHARE_STORE", str(store))
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")  # the snippet's default model is the local one
    with pytest.warns(NoServiceWarning) as caught:
        manager = get_embedding_manager(registry="bundled")  # the README's first snippet
    assert manager.search("send an HTTP POST with a JSON body", k=5)
    reset_embedding_manager()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoServiceWarning)
        assert get_embedding_manager().search("read a csv file", k=1)  # the store remembers it
    reset_embedding_manager()
    hint = re.search(r"`(embedshare serve [^`]+)`", str(caught[0].message)).group(1)
    result = run(*hint.split()[1:])  # the command the warning names, as written
    try:
        assert result.exit_code == 0, result.output
        shared = get_embedding_manager()
        assert shared.stats()["mode"] == "shared"
        assert shared.search("read a csv file", k=1)
    finally:
        reset_embedding_manager()
        run("stop", "--store", store)


def test_no_registry_anywhere_is_an_error_naming_the_store(store):
    manager = EmbeddingManager(store, model="hash:64")
    with pytest.raises(NoIndexError, match=re.escape(f"embedshare index build FILE --store {StoreLayout(store).root}")):
        manager.search("read a csv file")


def test_a_service_started_with_a_registry_records_it(store, zoo, make_service):
    make_service(registry=zoo, export_env=False)
    record = json.loads(StoreLayout(store).record.read_text())
    assert record["registry"]["hash"] == load_registry(zoo).content_hash
    assert Path(record["registry"]["index"], "tools.jsonl").exists()


def test_a_record_that_already_says_the_same_is_not_written_again(store, zoo):
    """A service start right after its index build records what the build recorded: one
    write (an fsync'd rename), not two; anything different is written."""
    from embedshare.store.record import write_record

    served = {
        "model": "hash:64",
        "model_id": "hash-64",
        "dim": 64,
        "registry_hash": "ab" * 32,
        "registry_source": str(zoo),
    }
    write_record(store, index="/i", tools=2, **served)
    first = StoreLayout(store).record.stat()
    write_record(store, index="/i", tools=2, **served)
    assert StoreLayout(store).record.stat().st_ino == first.st_ino  # the same file: not rewritten
    write_record(store, index="/other", tools=2, **served)
    assert json.loads(StoreLayout(store).record.read_text())["registry"]["index"] == "/other"
