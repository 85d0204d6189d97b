"""The approximate index (store/ann.py) and ToolIndex's use of it for large indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedshare.embedders import create_embedder
from embedshare.registry import load_registry
from embedshare.store.ann import IVFIndex, build_ivf, default_nlist
from embedshare.store.index import ToolIndex, ToolIndexError
from embedshare.store.index_build import build_index


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_ivf_probing_every_list_is_exact(tmp_path):
    vectors = _clustered(2000)
    ivf = IVFIndex(build_ivf(vectors, tmp_path / "ivf"))
    assert ivf.nlist == default_nlist(2000) and len(ivf) == 2000
    assert sorted(ivf.rows.tolist()) == list(range(2000))  # every row once
    for q in vectors[:20]:
        rows, scores = ivf.search(q, k=5, nprobe=ivf.nlist)
        exact = np.lexsort((np.arange(2000), -(vectors @ q)))[:5]
        assert rows.tolist() == exact.tolist()
        np.testing.assert_allclose(scores, (vectors @ q)[exact], rtol=1e-5)


def test_ivf_default_probe_finds_near_neighbours(tmp_path):
    vectors = _clustered(5000, seed=3)
    ivf = IVFIndex(build_ivf(vectors, tmp_path / "ivf"))
    hits = [ivf.search(q, k=1)[0][0] == i for i, q in enumerate(vectors[:200])]
    assert np.mean(hits) >= 0.95  # a tool's own vector is found (recall@1 of an exact match)


def test_ivf_is_memory_mapped_and_rejects_bad_input(tmp_path):
    vectors = _clustered(100)
    ivf = IVFIndex(build_ivf(vectors, tmp_path / "ivf", nlist=4))
    assert isinstance(ivf.vectors, np.memmap)
    with pytest.raises(ValueError, match="nlist"):
        build_ivf(vectors, tmp_path / "bad", nlist=101)
    with pytest.raises(ValueError, match="no usable ANN index"):
        IVFIndex(tmp_path / "missing")
    one = IVFIndex(build_ivf(vectors[:1], tmp_path / "one"))
    assert one.search(vectors[0], k=5)[0].tolist() == [0]


def _bundled_index(tmp_path, ann: bool):
    embedder = create_embedder("hash:64")
    path = build_index(
        load_registry("bundled"),
        embedder.embed,
        embedder.model_id,
        64,
        tmp_path / ("ann" if ann else "exact"),
        ann_min_tools=10 if ann else 10**9,
    )
    return ToolIndex(path, verify=True), embedder


def test_small_indexes_have_no_ann_and_large_ones_do(tmp_path):
    exact, _ = _bundled_index(tmp_path, ann=False)
    approx, _ = _bundled_index(tmp_path, ann=True)
    assert exact.ann is None and "ann" not in exact.manifest
    assert approx.ann is not None and approx.manifest["ann"]["kind"] == "ivf-flat"


def test_toolindex_search_through_the_ann_agrees_with_exact(tmp_path):
    exact, embedder = _bundled_index(tmp_path, ann=False)
    approx, _ = _bundled_index(tmp_path, ann=True)
    queries = [
        "read a csv file",
        "send an http post",
        "resize an image",
        "hash a password",
        "schedule a job",
        "merge two json objects",
        "query a database",
        "zip files",
    ]
    same = 0
    for q in embedder.embed(queries):
        a, e = approx.search_hits(q, k=5), exact.search_hits(q, k=5)
        np.testing.assert_allclose(a.scores, exact.vectors[a.rows] @ q, rtol=1e-5)  # exact scores
        assert list(a.scores) == sorted(a.scores, reverse=True)
        same += a.rows.tolist() == e.rows.tolist()
    assert same >= len(queries) - 1
    # filters: a category, a threshold, the tool itself excluded (find_similar_tools)
    category = exact.categories[0]
    hits = approx.search_hits(embedder.embed(["data"])[0], k=3, category=category)
    assert all(approx.category_of(int(r)) == category for r in hits.rows)
    name = exact.name_of(0)
    assert name not in [r.name for r in approx.similar(name, k=5)]
    assert [r.name for r in approx.similar(name, k=5)][:3] == [r.name for r in exact.similar(name, k=5)][:3]
    assert len(approx.search_hits(embedder.embed(["x"])[0], k=5, threshold=0.99).rows) == 0
    assert len(approx.search_hits(embedder.embed(["x"])[0], k=5, category="no such category").rows) == 0


def test_a_damaged_ann_file_is_an_error(tmp_path):
    index, _ = _bundled_index(tmp_path, ann=True)
    path = index.path
    del index
    (path / "ann_rows.npy").write_bytes(b"garbage")
    with pytest.raises(ToolIndexError, match="ann_rows.npy"):
        ToolIndex(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert "ann_rows.npy" in manifest["ann"]["files"]
