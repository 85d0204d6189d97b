"""embedshare.compat: the original ``mcp_embedding_manager`` API, called as the seed's code calls it.

The call patterns live in ``helpers/spawned/compat_calls.py``; here they run in this process against a local
manager (the reference), and in 25 ``Popen``'d shards through one service, which must all
attach to it and give the reference's answers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.extras import requires
from helpers.processes import SPAWNED, with_tests_on_path
from helpers.spawned import compat_calls

from embedshare.access import NoServiceWarning
from embedshare.access import get_embedding_manager as get_native_manager
from embedshare.compat import (
    EmbeddingConfig,
    LocalModelWarning,
    MCPEmbeddingManager,
    SearchResult,
    ToolEmbedding,
    get_embedding_manager,
    get_embedding_manager_info,
    reset_embedding_manager,
)
from embedshare.registry import load_registry
from embedshare.service.launcher import EmbeddingService
from embedshare.store import ToolIndexError

pytestmark = pytest.mark.timeout(300)

REGISTRY = Path(__file__).parents[1] / "data" / "mcp_tools_original.json"
CATEGORIES = ["computation", "data_processing", "file_operations", "integration", "network", "utility"]


@pytest.fixture(autouse=True)
def fresh_compat():
    reset_embedding_manager()
    yield
    reset_embedding_manager()


@pytest.fixture
def hash_env(monkeypatch):
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")


@pytest.fixture
def service(make_service) -> EmbeddingService:
    return make_service(registry=REGISTRY)


def _comparable(report: dict) -> dict:
    """A report without what differs between processes by nature (pid, how full the cache is)."""
    out = {
        k: v
        for k, v in report.items()
        if k not in ("pid", "mode", "shared_address", "loaded_at_start", "index_before_build", "model", "heavy_modules")
    }
    out["info"] = {k: v for k, v in report["info"].items() if k != "cached_embeddings"}
    out["build"] = {k: v for k, v in report["build"].items() if k != "rebuilt"}
    return out


@pytest.fixture
def reference(tmp_path, monkeypatch):
    """The call patterns' report from a local manager in this process (its own store)."""
    with monkeypatch.context() as patch, warnings.catch_warnings():
        patch.setenv("EMBEDSHARE_STORE", str(tmp_path / "reference"))
        patch.setenv("EMBEDSHARE_MODEL", "hash:64")
        patch.delenv("EMBEDSHARE_ADDRESS", raising=False)
        warnings.simplefilter("ignore", NoServiceWarning)
        report = compat_calls.run_calls(str(REGISTRY))
    reset_embedding_manager()
    assert report["mode"] == "local"
    return report


def test_the_original_registry_shape_indexes_as_is():
    registry = load_registry(REGISTRY)
    assert len(registry) == 30
    assert sorted({tool.category for tool in registry.tools}) == CATEGORIES
    raw = registry.by_name()["data_processing_filter"].raw
    for key in (
        "name",
        "description",
        "parameters",
        "returns",
        "errors",
        "dependencies",
        "dependency_metadata",
        "metadata",
        "differentiation",
    ):
        assert key in raw, key
    assert {"category", "operation", "version", "created_at"} <= set(raw["metadata"])


def test_call_patterns_in_this_process(reference):
    assert reference["build"] == {
        "total_tools": 30,
        "categories": dict.fromkeys(CATEGORIES, 5),
        "model": "hash:64:v1",
        "dimension": 64,
        "rebuilt": True,
    }
    assert reference["tools"] == 30
    assert reference["loaded_at_start"] is False and reference["index_before_build"] is False
    for q, results in reference["searches"].items():
        assert len(results) == 20, q
        scores = [score for _, score, _ in results]
        assert scores == sorted(scores, reverse=True)
    assert reference["searches"]["read a file"][0][0] == "file_operations_reader"
    assert reference["filtered"] and all(category == "network" for _, category, _, _ in reference["filtered"])
    for tool, similar in reference["similar"].items():
        assert len(similar) == 5 and tool not in [name for name, _ in similar]
    assert all(name.startswith("network_") for name in reference["same_category"])
    assert reference["protocols"]["network_fetcher"] == [
        ["description", "embedding", "errors", "inputSchema", "name", "returns"],
        64,
    ]
    assert reference["tool_embedding"][:3] == ["network_fetcher", "network", "fetch"]
    assert reference["info"]["index_loaded"] is True and reference["info"]["dimension"] == 64


def test_25_popen_shards_share_one_service_and_get_the_reference_answers(reference, service):
    env = with_tests_on_path()
    shards = []
    for i in range(25):
        how = "config" if i % 2 else "env"
        shard_env = {**env, "EMBEDSHARE_MODEL": "hash:64"} if how == "env" else env
        shards.append(
            subprocess.Popen(
                [sys.executable, str(SPAWNED / "compat_calls.py"), str(REGISTRY), how],
                env=shard_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    for shard in shards:
        out, err = shard.communicate(timeout=240)
        assert shard.returncode == 0, err
        assert "no embedshare service" not in err and "Warning" not in err, err
        reports.append(json.loads(out))
    assert len({r["pid"] for r in reports}) == 25
    for report in reports:
        assert report["mode"] == "shared"
        assert report["shared_address"] == service.address
        assert report["heavy_modules"] == []  # a worker stays light: no logging, asyncio, torch
        assert report["loaded_at_start"] is True  # the service's index, before any build_index
        assert report["build"]["rebuilt"] is False
        assert report["model"] in ("hash:64", "hash:64:v1")  # as the config named it, else the model's id
        assert _comparable(report) == _comparable(reference)
    # Every distinct text was embedded once for the whole run, by the service.
    stats = service.stats()
    distinct = reference["info"]["cached_embeddings"]
    assert stats["texts_embedded"] == distinct


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_get_the_shared_manager(service, hash_env, method):
    parent = get_embedding_manager()  # created before the fork: a forked child builds its own
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context(method)) as pool:
        reports = list(pool.map(_report_in_worker, range(4)))
    for mode, own, top in reports:
        assert (mode, own, top) == ("shared", True, parent.search("read a file", k=1)[0].tool_name)


def _report_in_worker(_: int) -> tuple[str, bool, str]:
    import embedshare.compat.manager as compat_manager

    em = get_embedding_manager()
    own = compat_manager._instance_pid == os.getpid() and em.manager is get_native_manager()
    return em.manager.mode, own, em.search("read a file", k=1)[0].tool_name


def test_threads_share_one_compat_manager(service, hash_env, run_threads):
    def grab(i: int) -> tuple[MCPEmbeddingManager, list[str]]:
        em = get_embedding_manager()
        return em, [r.tool_name for r in em.search("read a file", k=3)]

    managers, results = zip(*run_threads(16, grab), strict=True)
    assert len(managers) == 16 and all(m is managers[0] for m in managers)
    assert managers[0].manager.mode == "shared"
    assert all(r == results[0] for r in results)


def test_tool_embeddings_are_views_of_the_mapped_index(service, hash_env):
    em = get_embedding_manager()
    embeddings = em.tool_embeddings
    assert len(embeddings) == 30 and "network_fetcher" in embeddings and "nope" not in embeddings
    assert sorted(embeddings) == sorted(load_registry(REGISTRY).by_name())
    tool = embeddings["network_fetcher"]
    index = em.index
    for array in (
        tool.combined_embedding,
        tool.description_embedding,
        tool.parameter_embedding,
        tool.functionality_embedding,
    ):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert np.shares_memory(tool.combined_embedding, index.vectors)
    assert np.shares_memory(tool.description_embedding, index.fields)
    with pytest.raises(KeyError):
        embeddings["nope"]
    again = ToolEmbedding.from_dict(json.loads(json.dumps(tool.to_dict())))
    assert again.tool_name == "network_fetcher" and np.allclose(again.combined_embedding, tool.combined_embedding)


def test_search_result_has_the_original_shape():
    result = SearchResult("t", 0.5, {"name": "t"}, "utility")
    assert (result.tool_name, result.score, result.mcp_protocol, result.category, result.reason) == (
        "t",
        0.5,
        {"name": "t"},
        "utility",
        "",
    )


@requires("openai")
def test_original_model_name_maps_to_openai_with_3072_dims(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    with pytest.warns(NoServiceWarning):
        em = MCPEmbeddingManager(EmbeddingConfig(model="text-embedding-3-large"))
    assert em.manager.model_id == "openai:text-embedding-3-large"
    assert (em.config.model, em.config.dimension, em.manager.dim) == ("text-embedding-3-large", 3072, 3072)


def test_without_an_api_key_the_default_is_local_with_one_warning(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert EmbeddingConfig().model == "text-embedding-3-large" and EmbeddingConfig().dimension == 3072
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        em = get_embedding_manager()
        MCPEmbeddingManager()
        get_embedding_manager(EmbeddingConfig())
    local = [w for w in caught if issubclass(w.category, LocalModelWarning)]
    assert len(local) == 1, [str(w.message) for w in caught]
    assert "OPENAI_API_KEY is not set" in str(local[0].message)
    assert em.manager.model_id == "local:all-MiniLM-L6-v2:v1" and em.config.dimension == 384


def test_a_running_service_is_used_when_the_config_asks_for_nothing_else(service, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        em = get_embedding_manager(EmbeddingConfig())
    assert not caught, [str(w.message) for w in caught]
    assert em.manager.mode == "shared" and em.config.dimension == 64
    assert get_embedding_manager_info()["index_loaded"] is True


def test_a_config_for_another_model_than_the_service_is_an_error(service):
    with pytest.raises(ValueError, match="hash:64"):
        MCPEmbeddingManager(EmbeddingConfig(model="hash:32"))
    reset_embedding_manager()
    get_embedding_manager()
    with pytest.raises(ValueError, match="reset_embedding_manager"):
        get_embedding_manager(EmbeddingConfig(model="hash:32"))


def test_a_dimension_the_model_does_not_have_is_an_error(service):
    with pytest.raises(ValueError, match="dimension=128"):
        MCPEmbeddingManager(EmbeddingConfig(model="hash:64", dimension=128))


def test_load_and_save_index(service, hash_env, tmp_path):
    em = get_embedding_manager()
    assert em.load_index(tmp_path / "missing") is False
    saved = em.save_index(tmp_path / "saved-index")
    assert em.load_index(saved) is True and em.index.path == saved
    assert [r.tool_name for r in em.search("read a file", k=3)]
    pickled = tmp_path / "tool_index.pkl"
    pickled.write_bytes(pickle.dumps({"not": "read"}))
    with pytest.raises(ToolIndexError, match="pickled indexes"):
        em.load_index(pickled)


def test_clear_cache_keeps_the_shared_embeddings(service, hash_env):
    em = get_embedding_manager()
    em.search("read a file")
    em.search("read a file")
    assert em.get_cache_stats()["search_cache_hits"] == 1
    cached = em.get_cache_stats()["cached_embeddings"]
    with pytest.warns(UserWarning, match="shared by every process"):
        em.clear_cache(keep_embeddings=False)
    em.search("read a file")
    assert em.get_cache_stats()["search_cache_hits"] == 1  # the search was computed again
    assert em.get_cache_stats()["cached_embeddings"] == cached
    json.dumps(em.export_stats())
