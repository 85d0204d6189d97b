"""The memory-mapped tool index: build, open, search (against a brute-force reference),
similar tools, protocols, reuse, corruption and atomic builds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from embedshare.embedders import create_embedder
from embedshare.registry import FIELDS, field_texts, field_weights, load_registry
from embedshare.store import (
    ToolIndex,
    ToolIndexError,
    UnknownToolError,
    build_index,
    open_or_build_index,
)
from embedshare.store.index import DATA_FILES, index_folder_name

pytestmark = pytest.mark.timeout(60)

EMBEDDER = create_embedder("hash:64")
CATEGORIES = ["file_operations", "data_processing", "network", "computation", "integration", "utility"]
VOCAB = [
    "read",
    "write",
    "file",
    "csv",
    "json",
    "parse",
    "http",
    "request",
    "send",
    "email",
    "compute",
    "mean",
    "median",
    "sum",
    "filter",
    "sort",
    "merge",
    "join",
    "split",
    "convert",
    "image",
    "resize",
    "compress",
    "archive",
    "upload",
    "download",
    "schedule",
    "timer",
    "random",
    "hash",
    "encrypt",
    "decrypt",
    "token",
    "user",
    "database",
    "query",
    "insert",
    "delete",
    "update",
    "cache",
    "log",
    "metric",
    "alert",
    "queue",
    "message",
    "stream",
    "socket",
    "path",
    "folder",
    "text",
    "translate",
    "summarise",
]


def _random_registry(n: int, seed: int):
    rng = random.Random(seed)
    tools = []
    for i in range(n):
        words = lambda k: " ".join(rng.choice(VOCAB) for _ in range(k))
        tool = {
            "name": f"tool_{i:03d}_{rng.choice(VOCAB)}",
            "description": words(rng.randint(4, 12)),
            "parameters": [
                {
                    "name": f"p{j}_{rng.choice(VOCAB)}",
                    "type": rng.choice(["string", "integer"]),
                    "description": words(3),
                    "required": rng.random() < 0.5,
                }
                for j in range(rng.randint(0, 3))
            ],
            "returns": [{"name": "out", "type": "string", "description": words(3)}],
            "errors": [{"code": "E", "description": words(2)}],
            "metadata": {"category": rng.choice(CATEGORIES), "operation": rng.choice(VOCAB)},
        }
        if rng.random() < 0.4:
            tool["differentiation"] = {
                "unique_purpose": words(5),
                "usage_keywords": [rng.choice(VOCAB) for _ in range(3)],
            }
        tools.append(tool)
    return load_registry(tools)


def _reference(registry):
    """Brute force: field vectors (n, F, dim), weights (n, F) and combined vectors, in float64."""
    n, nf, dim = len(registry), len(FIELDS), EMBEDDER.dim
    fields = np.zeros((n, nf, dim))
    weights = np.zeros((n, nf))
    for row, tool in enumerate(registry.tools):
        texts = field_texts(tool)
        names = list(texts)
        vecs = EMBEDDER.embed([texts[f] for f in names]).astype(np.float64)
        for f, vec in zip(names, vecs, strict=True):
            fields[row, FIELDS.index(f)] = vec
            weights[row, FIELDS.index(f)] = field_weights(texts)[f]
    combined = np.einsum("nf,nfd->nd", weights, fields)
    combined /= np.linalg.norm(combined, axis=1, keepdims=True)
    return fields, weights, combined


def _brute_force(registry, combined, query_vec, k, category=None, threshold=0.0, exclude=None):
    scores = combined @ query_vec.astype(np.float64)
    rows = [
        r
        for r in range(len(registry))
        if scores[r] >= threshold and (category is None or registry.tools[r].category == category) and r != exclude
    ]
    rows.sort(key=lambda r: (-scores[r], r))
    rows = rows[:k]
    return [registry.tools[r].name for r in rows], np.array([scores[r] for r in rows])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    registry = _random_registry(300, seed=7)
    path = build_index(
        registry, EMBEDDER.embed, EMBEDDER.model_id, EMBEDDER.dim, tmp_path_factory.mktemp("big") / "index"
    )
    return registry, ToolIndex(path), _reference(registry)


@pytest.fixture()
def small_index(tmp_path):
    registry = _random_registry(20, seed=3)
    path = build_index(registry, EMBEDDER.embed, EMBEDDER.model_id, EMBEDDER.dim, tmp_path / "index")
    return registry, path


# -- build and open -------------------------------------------------------------------------------


def test_build_and_open(big):
    registry, index, _ = big
    assert index.count == len(index) == 300
    assert index.dim == 64
    assert index.model_id == EMBEDDER.model_id
    assert index.categories == sorted({t.category for t in registry.tools})
    assert index.manifest["registry_hash"] == registry.content_hash
    for array in (
        index.vectors,
        index.fields,
        index.weights,
        index.category_codes,
        index.names_sorted,
        index.rows_by_name,
        index.tool_offsets,
    ):
        assert isinstance(array, np.memmap)
    assert index.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    for row in (0, 150, 299):
        tool = registry.tools[row]
        assert index.row_of(tool.name) == row
        assert index.name_of(row) == tool.name
        assert index.category_of(row) == tool.category
        assert index.tool(row) == tool.raw
        assert index.protocol(row) == tool.protocol()


def test_stored_vectors_match_reference(big):
    _, index, (fields, weights, combined) = big
    np.testing.assert_allclose(index.vectors, combined, atol=1e-5)
    np.testing.assert_allclose(index.fields, fields, atol=1e-6)
    np.testing.assert_allclose(index.weights, weights, atol=1e-7)


def test_row_of_unknown_names(big):
    registry, index, _ = big
    name = registry.tools[5].name
    for unknown in (name + "_longer_than_any_stored_name_at_all", name[:-1], "", "zzz", "\ud800"):
        with pytest.raises(UnknownToolError) as info:
            index.row_of(unknown)
        assert repr(unknown) in str(info.value)


# -- search against brute force ----------------------------------------------------------------------


QUERIES = [
    "read csv file",
    "send email",
    "compute median of stream",
    "encrypt token hash",
    "upload image to folder",
    "database query insert",
]


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("query", QUERIES)
def test_search_equals_brute_force(big, query, k):
    registry, index, (_, _, combined) = big
    q = EMBEDDER.embed([query])[0]
    names, scores = _brute_force(registry, combined, q, k)
    results = index.search_vector(q, k=k)
    assert [r.name for r in results] == names
    np.testing.assert_allclose([r.score for r in results], scores, atol=1e-5)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for r in results:
        assert r.category == registry.by_name()[r.name].category
        assert r.protocol == registry.by_name()[r.name].protocol()


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("category", ["network", "utility", "computation"])
def test_search_with_category_and_threshold(big, category, k):
    registry, index, (_, _, combined) = big
    for query in QUERIES[:3]:
        q = EMBEDDER.embed([query])[0]
        for threshold in (0.0, 0.15):
            names, scores = _brute_force(registry, combined, q, k, category=category, threshold=threshold)
            results = index.search_vector(q, k=k, category=category, threshold=threshold)
            assert [r.name for r in results] == names
            np.testing.assert_allclose([r.score for r in results], scores, atol=1e-5)
            assert all(r.category == category and r.score >= threshold for r in results)


def test_threshold_filters_everything_and_unknown_category(big):
    _, index, _ = big
    q = EMBEDDER.embed(["read csv file"])[0]
    assert index.search_vector(q, k=5, threshold=1.01) == []
    assert index.search_vector(q, k=5, category="no_such_category") == []
    with pytest.raises(ValueError, match="k must be"):
        index.search_vector(q, k=0)
    with pytest.raises(ValueError, match="dims"):
        index.search_vector(np.ones(32, dtype=np.float32), k=5)


def test_ties_are_broken_by_row(tmp_path):
    """Equal scores come back in row order (lowest rows first), also when ties straddle k."""
    registry = _random_registry(300, seed=11)
    # every field of every tool gets the same basis vector: every combined vector is exactly
    # e_5 and every score exactly 1.0
    constant = np.zeros(EMBEDDER.dim, np.float32)
    constant[5] = 1.0
    path = build_index(
        registry, lambda texts: np.tile(constant, (len(texts), 1)), "constant", EMBEDDER.dim, tmp_path / "index"
    )
    index = ToolIndex(path)
    assert np.all(index.vectors @ constant == 1.0)
    for k in (1, 3, 7, 20):
        results = index.search_vector(constant, k=k)
        assert [r.name for r in results] == [t.name for t in registry.tools[:k]]
        cat = registry.tools[0].category
        expected = [t.name for t in registry.tools if t.category == cat][:k]
        assert [r.name for r in index.search_vector(constant, k=k, category=cat)] == expected
        first = registry.tools[0].name
        assert [r.name for r in index.similar(first, k=k)] == [t.name for t in registry.tools[1 : k + 1]]


# -- reasons -------------------------------------------------------------------------------------------


def test_reasons_name_present_fields_with_similarities(big):
    registry, index, (fields, _, _) = big
    q = EMBEDDER.embed(["compute median of stream"])[0]
    results = index.search_vector(q, k=20)
    assert any("differentiation" in r.field_scores for r in results)
    assert any("differentiation" not in r.field_scores for r in results)
    for r in results:
        row = index.row_of(r.name)
        present = set(field_texts(registry.tools[row]))
        assert set(r.field_scores) == present
        for name, sim in r.field_scores.items():
            expected = float(index.fields[row][FIELDS.index(name)] @ q)
            assert sim == pytest.approx(expected, abs=1e-6)
            assert sim == pytest.approx(float(fields[row, FIELDS.index(name)] @ q), abs=1e-5)
        # the reason names the fields that matched (positive similarity; the best field when
        # none did), each with its similarity, strongest weighted contribution first
        named = [(f, s) for f, s in r.field_scores.items() if s > 0]
        if not named:
            named = [max(r.field_scores.items(), key=lambda fs: fs[1] * float(index.weights[row][FIELDS.index(fs[0])]))]
        named.sort(key=lambda fs: -fs[1] * float(index.weights[row][FIELDS.index(fs[0])]))
        assert r.reason == " + ".join(f"{f} match {s:.2f}" for f, s in named)


# -- similar tools and protocols -------------------------------------------------------------------------


def test_similar_excludes_itself(big):
    registry, index, (_, _, combined) = big
    for row in (0, 42, 299):
        name = registry.tools[row].name
        results = index.similar(name, k=10)
        assert len(results) == 10
        assert name not in [r.name for r in results]
        names, scores = _brute_force(registry, combined, combined[row], 10, threshold=-1.0, exclude=row)
        assert [r.name for r in results] == names
        np.testing.assert_allclose([r.score for r in results], scores, atol=1e-5)


def test_similar_same_category_only(big):
    registry, index, _ = big
    tool = registry.tools[17]
    same = [t for t in registry.tools if t.category == tool.category and t.name != tool.name]
    results = index.similar(tool.name, k=len(registry), same_category_only=True)
    assert {r.name for r in results} == {t.name for t in same}
    assert all(r.category == tool.category for r in results)
    assert len(index.similar(tool.name, k=len(registry))) == len(registry) - 1


def test_similar_unknown_tool(big):
    _, index, _ = big
    with pytest.raises(UnknownToolError) as info:
        index.similar("no_such_tool")
    assert "'no_such_tool'" in str(info.value)


def test_protocols(big):
    registry, index, _ = big
    names = [registry.tools[i].name for i in (3, 1, 250)]
    protocols = index.protocols(names)
    assert list(protocols) == names
    for name in names:
        assert protocols[name] == registry.by_name()[name].protocol()
    with pytest.raises(UnknownToolError) as info:
        index.protocols([names[0], "ghost_one", names[1], "ghost_two"])
    message = str(info.value)
    assert "'ghost_one'" in message and "'ghost_two'" in message
    assert names[0] not in message


# -- open_or_build_index -----------------------------------------------------------------------------------


def test_open_or_build_builds_once(tmp_path, recording_embedder):
    registry = _random_registry(30, seed=5)
    embedder = recording_embedder(EMBEDDER.dim)
    first = open_or_build_index(tmp_path, registry, embedder.embed, EMBEDDER.model_id, EMBEDDER.dim)
    assert len(embedder.calls) > 0
    calls = len(embedder.calls)
    second = open_or_build_index(
        tmp_path, load_registry([t.raw for t in registry.tools]), embedder.embed, EMBEDDER.model_id, EMBEDDER.dim
    )
    assert len(embedder.calls) == calls
    assert second.path == first.path
    assert np.array_equal(second.vectors, first.vectors)
    assert first.path.name == index_folder_name(registry.content_hash, EMBEDDER.model_id)

    # a changed registry builds a new folder
    changed_raw = [dict(t.raw) for t in registry.tools]
    changed_raw[0]["description"] = "something else entirely"
    changed = load_registry(changed_raw)
    third = open_or_build_index(tmp_path, changed, embedder.embed, EMBEDDER.model_id, EMBEDDER.dim)
    assert len(embedder.calls) > calls
    assert third.path != first.path
    assert third.manifest["registry_hash"] == changed.content_hash

    # another model builds a new folder
    other = create_embedder("hash:32")
    other_embedder = recording_embedder(other.dim)
    fourth = open_or_build_index(tmp_path, registry, other_embedder.embed, other.model_id, other.dim)
    assert len(other_embedder.calls) > 0
    assert fourth.path not in (first.path, third.path)
    assert fourth.model_id == other.model_id and fourth.dim == 32
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 3
    assert not any(name.startswith(".tmp-") for name in folders)


# -- corrupt index folders ------------------------------------------------------------------------------------


def _open_error(path: Path, verify: bool = False) -> str:
    with pytest.raises(ToolIndexError) as info:
        ToolIndex(path, verify=verify)
    message = str(info.value)
    assert str(path) in message
    return message


def test_manifest_missing(small_index):
    _, path = small_index
    (path / "manifest.json").unlink()
    assert "manifest.json missing" in _open_error(path)
    assert "no tool index" in _open_error(path.parent / "nowhere")


def test_manifest_not_json(small_index):
    _, path = small_index
    (path / "manifest.json").write_text("{not json")
    assert "not valid JSON" in _open_error(path)
    (path / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "not valid JSON" in _open_error(path)


@pytest.mark.parametrize("key", ["format", "model_id", "dim", "count", "categories", "files"])
def test_manifest_missing_key(small_index, key):
    _, path = small_index
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest[key]
    (path / "manifest.json").write_text(json.dumps(manifest))
    message = _open_error(path)
    assert "manifest.json is incomplete" in message and key in message


def test_manifest_missing_file_entry(small_index):
    _, path = small_index
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["fields.npy"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert "fields.npy" in _open_error(path)


def test_manifest_is_not_an_object(small_index):
    _, path = small_index
    (path / "manifest.json").write_text("[1, 2, 3]")
    assert "manifest.json" in _open_error(path)


def test_vectors_truncated(small_index):
    _, path = small_index
    data = (path / "vectors.npy").read_bytes()
    (path / "vectors.npy").write_bytes(data[: len(data) - 100])
    message = _open_error(path)
    assert "vectors.npy" in message and f"{len(data) - 100} bytes" in message and str(len(data)) in message


@pytest.mark.parametrize("fname", DATA_FILES)
def test_data_file_deleted(small_index, fname):
    _, path = small_index
    (path / fname).unlink()
    message = _open_error(path)
    assert fname in message and "missing" in message


@pytest.mark.parametrize("fname", ["vectors.npy", "tools.jsonl", "names_sorted.npy"])
def test_checksum_mismatch_with_verify(small_index, fname):
    _, path = small_index
    target = path / fname
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01  # same size, different content
    target.write_bytes(bytes(data))
    ToolIndex(path)  # without verify only sizes are checked
    message = _open_error(path, verify=True)
    assert fname in message and "checksum" in message


def test_wrong_shape_is_clear(small_index):
    _, path = small_index
    # a manifest that claims another dim than the arrays have: shapes do not match
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dim"] = 32
    (path / "manifest.json").write_text(json.dumps(manifest))
    message = _open_error(path)
    assert "shape" in message


def test_open_or_build_rejects_foreign_index(tmp_path):
    registry = _random_registry(10, seed=9)
    folder = tmp_path / index_folder_name(registry.content_hash, EMBEDDER.model_id)
    build_index(registry, EMBEDDER.embed, "some-other-model", EMBEDDER.dim, folder)
    with pytest.raises(ToolIndexError, match="another model or registry"):
        open_or_build_index(tmp_path, registry, EMBEDDER.embed, EMBEDDER.model_id, EMBEDDER.dim)


# -- atomic builds ----------------------------------------------------------------------------------------------


def test_failed_embed_leaves_nothing(tmp_path):
    registry = _random_registry(40, seed=13)
    calls = 0

    def failing_embed(texts):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("embedding backend died")
        return EMBEDDER.embed(texts)

    root = tmp_path / "indexes"
    with pytest.raises(RuntimeError, match="backend died"):
        build_index(registry, failing_embed, EMBEDDER.model_id, EMBEDDER.dim, root / "index", batch_size=16)
    assert calls == 2
    assert not (root / "index").exists()
    assert not root.exists() or list(root.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    registry = _random_registry(20, seed=17)
    real_save = np.save
    saved = []

    def failing_save(file, array, *args, **kwargs):
        saved.append(Path(file).name)
        if len(saved) == 3:
            raise OSError("disk full")
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    root = tmp_path / "indexes"
    with pytest.raises(OSError, match="disk full"):
        build_index(registry, EMBEDDER.embed, EMBEDDER.model_id, EMBEDDER.dim, root / "index")
    assert len(saved) == 3
    assert list(root.iterdir()) == []


def test_wrong_embed_shape_leaves_nothing(tmp_path):
    registry = _random_registry(10, seed=19)
    root = tmp_path / "indexes"
    with pytest.raises(ToolIndexError, match="shape"):
        build_index(
            registry,
            lambda texts: np.ones((len(texts), 8), np.float32),
            EMBEDDER.model_id,
            EMBEDDER.dim,
            root / "index",
        )
    assert not root.exists() or list(root.iterdir()) == []


def test_build_over_an_existing_index_keeps_it(small_index):
    registry, path = small_index
    before = (path / "vectors.npy").read_bytes()
    assert build_index(registry, EMBEDDER.embed, EMBEDDER.model_id, EMBEDDER.dim, path) == path
    assert (path / "vectors.npy").read_bytes() == before
    ToolIndex(path, verify=True)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
