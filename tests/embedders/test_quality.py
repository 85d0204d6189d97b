"""Search quality with the real local model (all-MiniLM-L6-v2, offline) on the bundled registry:
a labelled set of user queries must find their tool, and the model must behave like a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedshare.embedders.local import LocalEmbedder
from embedshare.manager import EmbeddingManager
from embedshare.registry import load_registry

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

QUALITY_FILE = Path(__file__).parents[1] / "data" / "search_quality.json"
MIN_QUERIES = 25
MIN_TOP1 = 0.85


def _load_cases() -> list[dict]:
    cases = json.loads(QUALITY_FILE.read_text(encoding="utf-8"))
    assert isinstance(cases, list)
    for case in cases:
        assert set(case) >= {"query", "expected"}, case
    return cases


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    m = EmbeddingManager(store=tmp_path_factory.mktemp("quality") / "store", model="local", registry="bundled")
    yield m
    m.close()


def test_quality_set_is_big_enough_and_names_real_tools():
    cases = _load_cases()
    assert len(cases) >= MIN_QUERIES, f"only {len(cases)} labelled queries"
    names = {tool.name for tool in load_registry("bundled").tools}
    unknown = [c["expected"] for c in cases if c["expected"] not in names]
    assert not unknown, f"expected tools not in the bundled registry: {unknown}"
    queries = [c["query"] for c in cases]
    assert len(set(queries)) == len(queries), "duplicate queries"


def test_search_finds_the_expected_tool(manager):
    cases = _load_cases()
    assert len(cases) >= MIN_QUERIES
    top1 = 0
    not_top1, not_top3 = [], []
    for case in cases:
        got = [r.name for r in manager.search(case["query"], k=3)]
        if got and got[0] == case["expected"]:
            top1 += 1
        else:
            not_top1.append((case["query"], case["expected"], got))
        if case["expected"] not in got:
            not_top3.append((case["query"], case["expected"], got))
    rate = top1 / len(cases)
    print(f"\nsearch quality: top-1 {top1}/{len(cases)} = {rate:.3f}, top-3 {len(cases) - len(not_top3)}/{len(cases)}")

    def listing(misses):
        return "\n".join(f"  {q!r}: expected {e}, got {g}" for q, e, g in misses)

    assert not not_top3, f"{len(not_top3)} expected tools not in the top 3:\n{listing(not_top3)}"
    assert rate >= MIN_TOP1, f"top-1 rate {rate:.3f} < {MIN_TOP1}; misses:\n{listing(not_top1)}"


def test_local_embedder_works_offline_and_is_a_sentence_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    embedder = LocalEmbedder()
    assert embedder.model_id == LocalEmbedder().model_id  # stable: part of every cache key
    assert embedder.model_id == "local:all-MiniLM-L6-v2:v1"
    assert embedder.dim == 384
    texts = ["read a csv file", "parse comma separated values", "send an email"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    csv, parse, email = vectors
    assert float(csv @ parse) > float(csv @ email) + 0.1
    # deterministic: the same text gives the same vector in another batch
    again = embedder.embed(["send an email"])[0]
    np.testing.assert_allclose(again, email, atol=1e-5)
