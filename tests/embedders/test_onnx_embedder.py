"""The ONNX Runtime backend (the default ``local``): the torch path's vectors, no torch in the
service, its own model id for int8, and clear errors for bad specs.

The equality test is the proof that a graph built by hand from the safetensors
(``embedders/bert_graph.py``) computes what sentence-transformers computes, so the fp32 backend
may share ``local:all-MiniLM-L6-v2:v1`` and every vector already cached under it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from helpers.extras import requires

from embedshare.embedders import UnknownModelError, create_embedder

WORDS = [
    "read",
    "write",
    "parse",
    "csv",
    "json",
    "yaml",
    "xml",
    "file",
    "folder",
    "http",
    "post",
    "get",
    "request",
    "send",
    "email",
    "queue",
    "message",
    "hash",
    "sha256",
    "compress",
    "archive",
    "unzip",
    "database",
    "query",
    "table",
    "row",
    "column",
    "filter",
    "sort",
    "aggregate",
    "sum",
    "average",
    "image",
    "resize",
    "crop",
    "translate",
    "text",
    "summarise",
    "calendar",
    "event",
    "weather",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "was",
    "were",
]
ODD = [
    "Héllo",
    "wörld",
    "漢字",
    "🙂",
    "naïve",
    "résumé",
    "C++",
    "$HOME/.cache",
    "ß",
    "Ωmega",
    "e-mail",
    "don't",
    "3.14159",
    "#tag",
    "@user",
    "1,000,000",
    "\tTab",
    "UPPER",
    "MiXeD",
]


def varied_texts(count: int, seed: int = 13) -> list[str]:
    """Short queries, sentences, odd characters and long texts past the 256-token truncation."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        kind = i % 10
        if kind < 5:
            n = rng.randint(1, 12)
        elif kind < 8:
            n = rng.randint(13, 120)
        else:
            n = rng.randint(260, 700)  # well past 256 word pieces: truncation must agree
        words = [rng.choice(ODD) if rng.random() < 0.1 else rng.choice(WORDS) for _ in range(n)]
        text = " ".join(words)
        if i % 7 == 0:
            text = f"  {text.capitalize()}?!  "
        texts.append(text)
    return texts


def test_spec_names_the_backend():
    assert type(create_embedder("local")).__name__ == "OnnxLocalEmbedder"
    assert type(create_embedder("local@onnx")).__name__ == "OnnxLocalEmbedder"
    assert type(create_embedder("local@torch")).__name__ == "LocalEmbedder"
    assert type(create_embedder("local:all-MiniLM-L6-v2@torch")).__name__ == "LocalEmbedder"
    # fp32 ONNX and torch give the same vectors, so the same cache key; int8 never mixes
    ids = {spec: create_embedder(spec).model_id for spec in ("local", "local@torch", "local@int8")}
    assert ids["local"] == ids["local@torch"] == "local:all-MiniLM-L6-v2:v1"
    assert ids["local@int8"] == "local:all-MiniLM-L6-v2:int8:v1"


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(UnknownModelError, match="unknown local backend 'gpu'.*local@torch"):
        create_embedder("local@gpu")


@pytest.mark.model
@requires("local-torch")
def test_onnx_vectors_equal_the_torch_path_on_1000_varied_texts():
    texts = varied_texts(1000)
    onnx_vectors = create_embedder("local").embed(texts)
    torch_embedder = create_embedder("local@torch")
    torch_vectors = torch_embedder.embed(texts)
    tokenizer = torch_embedder._model.tokenizer  # the texts do reach the truncation
    truncated = sum(len(tokenizer(t)["input_ids"]) > 256 for t in texts)
    assert truncated >= 100, truncated
    diff = float(np.abs(onnx_vectors - torch_vectors).max())
    print(f"\nmax abs diff onnx vs torch on {len(texts)} texts ({truncated} truncated): {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.model
def test_a_text_gets_the_same_vector_alone_and_in_a_padded_batch():
    embedder = create_embedder("local")
    texts = varied_texts(40, seed=3)
    batch = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts[:8]])
    assert float(np.abs(batch[:8] - alone).max()) <= 1e-5


@pytest.mark.model
def test_int8_is_close_but_not_the_fp32_vectors():
    texts = varied_texts(50, seed=5)
    fp32 = create_embedder("local").embed(texts)
    int8 = create_embedder("local@int8").embed(texts)
    cosine = np.sum(fp32 * int8, axis=1)
    assert float(cosine.min()) > 0.95  # a quantised model of the same weights
    assert float(np.abs(fp32 - int8).max()) > 1e-4  # and not the same vectors: own model id


SERVICE_CHECK = """
import json, sys
from embedshare.service.launcher import EmbeddingService
with EmbeddingService(sys.argv[1], model=sys.argv[2], export_env=False, start_timeout=120) as s:
    stats = s.stats()
    print(json.dumps({"torch": stats["torch_imported"], "model_id": stats["model_id"]}))
"""


@pytest.mark.model
@pytest.mark.parametrize(
    "spec, torch_expected", [("local", False), pytest.param("local@torch", True, marks=requires("local-torch"))]
)
def test_the_service_process_imports_torch_only_for_local_at_torch(tmp_path, spec, torch_expected):
    out = subprocess.run(
        [sys.executable, "-c", SERVICE_CHECK, str(tmp_path / "store"), spec],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer == {"torch": torch_expected, "model_id": "local:all-MiniLM-L6-v2:v1"}


def test_threads_default_to_the_cores_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert create_embedder("local").threads == min(2, os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the per-process designs' one thread each
    assert create_embedder("local").threads == 1
    assert create_embedder("local", threads=3).threads == 3


@requires("local", "onnxruntime", "tokenizers")  # load() checks them before the folder
def test_a_folder_that_is_not_a_bert_is_a_clear_error(tmp_path):
    from embedshare.embedders import EmbedderError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_act": "gelu"}))
    embedder = create_embedder("local", model_path=tmp_path)
    with pytest.raises(EmbedderError, match="only BERT encoders"):
        embedder.load()


@pytest.mark.model
def test_load_runs_a_warm_up_forward_so_the_service_is_warm_when_it_says_ready(monkeypatch):
    from embedshare.embedders import onnx_local

    forwards = []
    real_run = onnx_local.OnnxLocalEmbedder._run
    monkeypatch.setattr(
        onnx_local.OnnxLocalEmbedder, "_run", lambda self, texts: forwards.append(list(texts)) or real_run(self, texts)
    )
    embedder = create_embedder("local")
    embedder.load()  # what the service's prepare() calls before it reports ready
    assert forwards == [onnx_local.WARMUP_TEXTS]
