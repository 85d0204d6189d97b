"""The parts of embedshare.ray that need no Ray cluster (most need no Ray at all).

- a process that does not use Ray never imports it (get_embedding_manager, embedshare.ray,
  the node's service process);
- the text-to-node partition (rendezvous hashing);
- the object-store index answers as the folder index does;
- the node's service process stops when its actor's end of the lifeline closes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from embedshare import EmbeddingManager
from embedshare.ray.config import node_key, node_store, owner_of, owner_ranking, service_name
from embedshare.ray.index import ObjectStoreToolIndex, index_payload
from embedshare.store import ToolIndexError
from embedshare.store.cache import cache_key


def _modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    script = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_process_that_does_not_use_ray_never_imports_it(tmp_path):
    modules = _modules_after(
        "import warnings; warnings.simplefilter('ignore')\n"
        "from embedshare import get_embedding_manager\n"
        "m = get_embedding_manager(model='hash:16')\n"
        "assert type(m).__name__ == 'EmbeddingManager', m\n"
        "import embedshare.ray, embedshare.ray.config, embedshare.ray.index, embedshare.ray._service\n",
        env={"EMBEDSHARE_STORE": str(tmp_path / "store")},
    )
    assert "ray" not in modules
    assert "embedshare.ray.source" not in modules  # access.py did not even look


def test_in_ray_worker_is_false_without_ray(monkeypatch):
    from embedshare.ray.source import in_ray_worker

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert in_ray_worker() is False


def test_owner_is_the_first_of_the_ranking_and_the_same_everywhere():
    ring = [f"{i:02d}" + "ab" * 27 for i in range(5)]
    for i in range(200):
        key = cache_key("hash:64:v1", f"text {i}")
        ranking = owner_ranking(key, ring)
        assert sorted(ranking) == sorted(ring)
        assert owner_of(key, ring) == ranking[0] == owner_of(key, list(reversed(ring)))


def test_texts_spread_over_the_ring_and_a_leaving_node_moves_only_its_own():
    ring = ["node-a" * 8, "node-b" * 8, "node-c" * 8]
    keys = [cache_key("hash:64:v1", f"query {i}") for i in range(3000)]
    owners = [owner_of(k, ring) for k in keys]
    counts = Counter(owners)
    assert set(counts) == set(ring) and min(counts.values()) > 850  # ~1000 each
    smaller = ring[:2]
    for key, owner in zip(keys, owners, strict=True):
        if owner in smaller:
            assert owner_of(key, smaller) == owner  # only the leaving node's keys move
    assert owner_of(keys[0], []) == ""


def test_names_and_node_stores():
    node_id = "f" * 56
    assert service_name(node_id) == "embedshare-service-" + node_id
    path = node_store("/tmp/x", node_key(node_id, {node_id: "a" * 80}))
    assert path == Path("/tmp/x/node-" + "a" * 40 + "-0")
    assert len(str(path / "run" / "service.sock")) < 107


def test_a_node_s_store_is_the_same_in_every_ray_session():
    """Found on main: each ray.init() session made a new node-<id> folder, so the cache was
    never reused and folders piled up. The node id changes each session; the host does not."""
    session_1 = {"a" * 56: "worker-7"}
    session_2 = {"b" * 56: "worker-7"}
    assert node_key("a" * 56, session_1) == node_key("b" * 56, session_2) == "worker-7-0"
    # simulated nodes of one machine get distinct stores
    three = {"1" * 56: "box", "2" * 56: "box", "3" * 56: "box"}
    assert sorted(node_key(n, three) for n in three) == ["box-0", "box-1", "box-2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    manager = EmbeddingManager(tmp_path_factory.mktemp("store"), model="hash:64", registry="bundled")
    yield manager
    manager.close()


def test_the_object_store_index_answers_as_the_folder_index(built):
    folder = built.index
    payload = index_payload(folder.path)
    # what ray.put/ray.get does to it: arrays that are read-only views of a shared buffer
    for array in payload["arrays"].values():
        array.setflags(write=False)
    index = ObjectStoreToolIndex(payload)
    assert len(index) == len(folder) and index.model_id == folder.model_id
    for query in ("parse csv", "send an http request", "compress files"):
        vector = built.get_embedding(query)
        assert index.search_vector(vector, k=5) == folder.search_vector(vector, k=5)
        assert index.search_vector(vector, k=3, category="data_processing") == folder.search_vector(
            vector, k=3, category="data_processing"
        )
    for name in ("csv_parser", "http_post"):
        assert index.similar(name, k=4) == folder.similar(name, k=4)
    assert index.protocols(["csv_parser"]) == folder.protocols(["csv_parser"])
    assert index.tool(3) == folder.tool(3)


def test_a_large_index_keeps_its_approximate_index_in_the_object_store(built, tmp_path):
    from embedshare.registry import load_registry
    from embedshare.store import ToolIndex
    from embedshare.store.index_build import build_index

    folder = build_index(
        load_registry("bundled"),
        built.get_embeddings,
        built.model_id,
        built.dim,
        tmp_path / "ann-index",
        ann_min_tools=10,
    )
    on_disk = ToolIndex(folder)
    assert on_disk.ann is not None
    index = ObjectStoreToolIndex(index_payload(folder))
    assert index.ann is not None and index.ann.nlist == on_disk.ann.nlist
    for query in ("parse csv", "send an http request", "resize an image"):
        vector = built.get_embedding(query)
        assert index.search_vector(vector, k=5) == on_disk.search_vector(vector, k=5)


def test_a_damaged_index_payload_is_refused(built):
    payload = index_payload(built.index.path)
    payload["arrays"]["vectors"] = payload["arrays"]["vectors"][:-1]
    with pytest.raises(ToolIndexError, match="vectors"):
        ObjectStoreToolIndex(payload)
    payload = index_payload(built.index.path)
    payload["tools"] = payload["tools"][:-5]
    with pytest.raises(ToolIndexError, match="tools text"):
        ObjectStoreToolIndex(payload)
    with pytest.raises(ToolIndexError, match="format"):
        ObjectStoreToolIndex({**payload, "payload_format": 99})


@pytest.mark.slow
def test_the_node_service_stops_when_its_lifeline_closes(tmp_path):
    """What happens to the service when its actor is killed (ray.kill is a SIGKILL)."""
    from embedshare.client.connection import ServiceConnection
    from embedshare.store import StoreLayout

    layout = StoreLayout(tmp_path / "node")
    life_read, life_write = os.pipe()
    ready_read, ready_write = os.pipe()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedshare.ray._service",
            "--lifeline-fd",
            str(life_read),
            "--store",
            str(layout.root),
            "--model",
            "hash:16",
            "--ready-fd",
            str(ready_write),
        ],
        pass_fds=(life_read, ready_write),
        stdin=subprocess.DEVNULL,
    )
    os.close(life_read)
    os.close(ready_write)
    try:
        with os.fdopen(ready_read) as ready:
            assert ready.readline().startswith("ready")
        conn = ServiceConnection(layout.socket)
        assert conn.request("hello", timeout=30)["model_id"] == "hash:16:v1"
        conn.close()
        assert process.poll() is None
        os.close(life_write)  # the actor's process is gone
        life_write = None
        assert process.wait(timeout=60) == 0  # a clean stop, as on SIGTERM
        assert not layout.socket.exists()
    finally:
        if life_write is not None:
            os.close(life_write)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_service_entry_point_needs_its_lifeline():
    out = subprocess.run(
        [sys.executable, "-m", "embedshare.ray._service", "--store", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "--lifeline-fd" in out.stderr


def test_the_ray_registry_check_accepts_the_served_content_and_names_both_otherwise(built, tmp_path):
    from embedshare.errors import RegistryMismatchError
    from embedshare.ray.source import check_deployment_registry, deployment_registry
    from embedshare.registry import load_registry
    from embedshare.registry.loader import bundled_registry_path

    served = deployment_registry(ObjectStoreToolIndex(index_payload(built.index.path)))
    bundled = load_registry("bundled")
    assert served["hash"] == bundled.content_hash
    check_deployment_registry("bundled", bundled, served)  # by content: the name does not matter
    data = json.loads(bundled_registry_path().read_text())
    check_deployment_registry("<data>", load_registry(data), served)

    other = load_registry(dict(list(data.items())[:3]))
    with pytest.raises(RegistryMismatchError) as mismatch:
        check_deployment_registry("other.json", other, served)
    message = str(mismatch.value)
    assert "other.json" in message and other.content_hash[:12] in message
    assert bundled.content_hash[:12] in message and "embedshare.ray.init(" in message

    with pytest.raises(
        RegistryMismatchError,
        match=r"serves no tool registry, not bundled .*"
        r"embedshare\.ray\.init\(model=\.\.\., registry='bundled'\)",
    ):
        check_deployment_registry("bundled", bundled, deployment_registry(None))
