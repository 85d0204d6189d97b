"""Embedders: the hashing embedder, spec parsing, text validation and output checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from embedshare.embedders import (
    MAX_TEXT_CHARS,
    Embedder,
    EmbedderError,
    InvalidTextError,
    UnknownModelError,
    check_vectors,
    create_embedder,
    validate_text,
    validate_texts,
)

pytestmark = pytest.mark.timeout(60)

TEXTS = [
    "read a csv file",
    "send an http request to a url",
    "compute the mean of a column",
    "Ünïcödé text, with punctuation!",
    "...",  # no word at all: must still give a unit vector
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return create_embedder("hash:64")


# -- the hashing embedder ---------------------------------------------------------------------


def test_hash_embedder_shape_dtype_unit_norm(embedder):
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 64
    assert "64" in embedder.model_id
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 64)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-6)


def test_hash_embedder_empty_batch(embedder):
    vectors = embedder.embed([])
    assert vectors.shape == (0, 64)
    assert vectors.dtype == np.float32


def test_hash_embedder_is_deterministic_and_batch_independent(embedder):
    first = embedder.embed(TEXTS)
    second = create_embedder("hash:64").embed(TEXTS)
    assert first.tobytes() == second.tobytes()
    # a text's vector does not depend on what else is in the batch, nor on its position
    for i, text in enumerate(TEXTS):
        assert embedder.embed([text]).tobytes() == first[i : i + 1].tobytes()
    reversed_ = embedder.embed(TEXTS[::-1])
    assert reversed_[::-1].tobytes() == first.tobytes()


def test_hash_embedder_is_bit_identical_in_another_process(embedder):
    code = (
        "import sys, json\n"
        "from embedshare.embedders import create_embedder\n"
        "texts = json.loads(sys.stdin.read())\n"
        "sys.stdout.buffer.write(create_embedder('hash:64').embed(texts).tobytes())\n"
    )
    import json

    # PYTHONHASHSEED differs from ours on purpose: Python's salted hash() must not be used
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(TEXTS).encode(),
        capture_output=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == embedder.embed(TEXTS).tobytes()


def test_hash_embedder_similar_texts_score_higher(embedder):
    query, similar, unrelated = embedder.embed(
        [
            "read a csv file from disk",
            "read csv files from the disk",
            "send an email notification to a user",
        ]
    )
    assert float(query @ similar) > float(query @ unrelated)
    assert float(query @ similar) > 0.5


def test_hash_embedder_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        create_embedder("hash:4")


# -- create_embedder spec parsing --------------------------------------------------------------


def test_create_embedder_hash_spec():
    emb = create_embedder("hash:64")
    assert emb.dim == 64
    assert create_embedder(" HASH:64 ").model_id == emb.model_id
    assert create_embedder("hash:32").model_id != emb.model_id
    # an embedder object is passed through unchanged
    assert create_embedder(emb) is emb


@pytest.mark.parametrize("spec", ["hash:abc", "nope", "openai:", "", "nope:thing"])
def test_create_embedder_bad_specs_are_clear(spec):
    with pytest.raises(UnknownModelError) as info:
        create_embedder(spec)
    assert repr(spec) in str(info.value)


def test_create_embedder_non_string_spec():
    with pytest.raises(UnknownModelError, match="spec string"):
        create_embedder(42)  # type: ignore[arg-type]


# -- validate_texts / validate_text -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, problem",
    [
        (None, "must be a str, got NoneType"),
        (b"bytes", "must be a str, got bytes"),
        (7, "must be a str, got int"),
        ("", "is empty"),
        ("ok \ud800 no", "lone surrogate at position 3"),
    ],
)
def test_validate_texts_names_problem_and_position(bad, problem):
    with pytest.raises(InvalidTextError) as info:
        validate_texts(["fine", "also fine", bad])
    message = str(info.value)
    assert "texts[2]" in message
    assert problem in message

    with pytest.raises(InvalidTextError) as info:
        validate_text(bad)
    assert problem in str(info.value)


def test_validate_texts_requires_a_list():
    for bad in ("a string", b"bytes", None, 3):
        with pytest.raises(InvalidTextError, match="list of strings"):
            validate_texts(bad)


def test_validate_texts_keeps_good_texts():
    texts = ["a", "  padded  ", "ünï"]
    assert validate_texts(texts) == texts
    assert validate_texts(tuple(texts)) == texts
    assert validate_texts([]) == []


def test_long_text_is_truncated():
    long = "x" * (MAX_TEXT_CHARS + 100)
    assert validate_text(long) == "x" * MAX_TEXT_CHARS
    assert validate_texts([long]) == ["x" * MAX_TEXT_CHARS]
    exact = "y" * MAX_TEXT_CHARS
    assert validate_text(exact) == exact


# -- check_vectors ------------------------------------------------------------------------------


def test_check_vectors_normalises():
    raw = np.array([[3.0, 4.0], [0.0, -2.0]], dtype=np.float64)
    out = check_vectors(raw, 2, 2, "test")
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], atol=1e-7)


@pytest.mark.parametrize(
    "vectors, message",
    [
        (np.ones((3, 4)), r"shape \(3, 4\), expected \(2, 4\)"),
        (np.ones((2, 5)), r"shape \(2, 5\), expected \(2, 4\)"),
        (np.ones(8), r"shape \(8,\), expected \(2, 4\)"),
        (np.array([[1.0, np.nan, 0, 0], [1, 0, 0, 0]]), "NaN or infinite"),
        (np.array([[1.0, 0, 0, 0], [np.inf, 0, 0, 0]]), "NaN or infinite"),
        (np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]), "all-zero"),
    ],
)
def test_check_vectors_rejects_bad_output(vectors, message):
    with pytest.raises(EmbedderError, match=message) as info:
        check_vectors(vectors, 2, 4, "backend-xyz")
    assert "backend-xyz" in str(info.value)


# -- whitespace-only texts: embedded as the model embeds them (README "Texts") ----------------


def test_whitespace_only_texts_get_a_unit_vector_from_the_hash_model(embedder):
    vectors = embedder.embed(["   ", "\n\t", "\u00a0", "read a csv file"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0].tobytes() == vectors[1].tobytes() == vectors[2].tobytes()  # no word: one vector
    assert validate_texts(["  ", "\t"]) == ["  ", "\t"]


@pytest.mark.model
def test_whitespace_only_texts_get_a_unit_vector_from_the_local_model():
    local = create_embedder("local")
    vectors = local.embed(["   ", "\n\t", "read a csv file"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5)  # the tokenizer drops whitespace
    assert abs(float(vectors[0] @ vectors[2])) < 0.5
