"""The Embedder Protocol says everything the rest of embedshare reads of a backend, and every
backend (and every test double) provides it: the service and the store read the members, they
no longer probe for them with getattr and a guessed default."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from helpers.embedders import RecordingEmbedder
from helpers.extras import requires

from embedshare.embedders import Embedder, EmbedderDefaults, UnknownModelError, create_embedder
from embedshare.embedders.hashing import HashingEmbedder
from embedshare.embedders.local import LocalEmbedder
from embedshare.embedders.onnx_local import OnnxLocalEmbedder
from embedshare.manager import EmbeddingManager

# What the store and the service's batcher read of an embedder besides model_id, dim and embed.
READ_BY_CALLERS = ("concurrency", "max_tokens", "max_batch_tokens", "load", "keep_graphs_in")


def _openai() -> Embedder:
    from embedshare.embedders.openai import OpenAIEmbedder

    return OpenAIEmbedder("text-embedding-3-small")  # a known model: no probe, nothing sent


def _bench_counter() -> Embedder:
    from embedshare.bench.designs import CountingEmbedder  # here: the bench's layout may change

    return CountingEmbedder(HashingEmbedder(64))


BACKENDS: dict[str, Callable[[], Embedder]] = {
    "hash": lambda: HashingEmbedder(64),
    "onnx": OnnxLocalEmbedder,  # built, not loaded: nothing is read until load()
    "torch": LocalEmbedder,
    "openai": _openai,
    "test double": lambda: RecordingEmbedder(64),
    "bench's counter": _bench_counter,
}


@pytest.mark.parametrize(
    "make", [pytest.param(BACKENDS[k], id=k, marks=[requires("openai")] if k == "openai" else []) for k in BACKENDS]
)
def test_every_embedder_provides_what_callers_read(make):
    embedder = make()
    assert [name for name in READ_BY_CALLERS if not hasattr(embedder, name)] == []
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.concurrency, int) and embedder.concurrency >= 1
    for limit in (embedder.max_tokens, embedder.max_batch_tokens):
        assert limit is None or (isinstance(limit, int) and limit > 0)
    assert callable(embedder.load) and callable(embedder.keep_graphs_in)


def test_the_members_that_size_the_service_s_work_are_the_backends_own():
    onnx = OnnxLocalEmbedder(max_batch_tokens=4096)
    assert (onnx.max_tokens, onnx.max_batch_tokens, onnx.concurrency) == (256, 4096, 1)
    assert HashingEmbedder(64).max_batch_tokens is None  # not cut by tokens: the batcher's default


class _Bare:
    """A backend written before the Protocol said more than model_id, dim and embed."""

    model_id = "bare:8"
    dim = 8

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 8), dtype=np.float32) / np.sqrt(8)


def test_an_incomplete_embedder_is_refused_in_one_line_naming_what_it_lacks():
    with pytest.raises(UnknownModelError) as info:
        create_embedder(_Bare())  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    assert "lacks concurrency, max_tokens, max_batch_tokens, load, keep_graphs_in" in message
    assert "EmbedderDefaults" in message


class _Own(EmbedderDefaults, _Bare):
    """The same backend, completed by inheriting the neutral members."""


def test_a_backend_of_one_s_own_needs_only_model_id_dim_and_embed(tmp_path):
    own = _Own()
    assert create_embedder(own) is own
    manager = EmbeddingManager(tmp_path / "store", model=own)
    try:
        assert manager.get_embedding("any text").shape == (8,)
    finally:
        manager.close()
