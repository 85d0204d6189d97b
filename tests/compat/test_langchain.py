"""The LangChain adapter: langchain-tests' standard suites, and what they do not check (the
vectors are the manager's, through a shared service too, and the model is never mixed up)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers.extras import skip_module_unless

from embedshare.access import NoServiceWarning, SharedEmbeddingManager, get_embedding_manager
from embedshare.embedders import InvalidTextError
from embedshare.manager import EmbeddingManager

skip_module_unless("langchain")
skip_module_unless("dev", "langchain_tests")

from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from embedshare.integrations.langchain import EmbedshareEmbeddings

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::embedshare.access.NoServiceWarning")]


class TestEmbedshareEmbeddingsUnit(EmbeddingsUnitTests):
    """The standard unit tests, on the process's manager (a local one: no service runs)."""

    @property
    def embeddings_class(self) -> type[EmbedshareEmbeddings]:
        return EmbedshareEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "hash:64"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        # EMBEDSHARE_MODEL picks the model when none is passed
        return {"EMBEDSHARE_MODEL": "hash:32"}, {}, {"model_id": "hash:32:v1", "dim": 32}


class TestEmbedshareEmbeddingsThroughAService(EmbeddingsIntegrationTests):
    """The standard behaviour tests (sync and async), against a running service."""

    @pytest.fixture(autouse=True)
    def _service(self, clean_embedshare_env, make_service):
        make_service(registry=None)  # exports its address

    @property
    def embeddings_class(self) -> type[EmbedshareEmbeddings]:
        return EmbedshareEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "hash:64"}


@pytest.fixture
def reference(tmp_path) -> EmbeddingManager:
    return EmbeddingManager(tmp_path / "ref", model="hash:64")


def test_vectors_are_the_manager_s_as_floats(tmp_path, reference):
    embeddings = EmbedshareEmbeddings(manager=EmbeddingManager(tmp_path / "m", model="hash:64"))
    assert isinstance(embeddings, Embeddings)
    docs = ["read a csv file", "send an http post", "read a csv file"]
    got = embeddings.embed_documents(docs)
    assert all(type(x) is float for row in got for x in row)
    assert np.array(got, dtype=np.float32).tobytes() == reference.get_embeddings(docs).tobytes()
    assert (
        np.array(embeddings.embed_query("zip a folder"), dtype=np.float32).tobytes()
        == reference.get_embedding("zip a folder").tobytes()
    )
    assert embeddings.embed_documents([]) == []
    assert asyncio.run(embeddings.aembed_documents(docs)) == got
    assert asyncio.run(embeddings.aembed_query("zip a folder")) == embeddings.embed_query("zip a folder")


def test_through_a_service_only_misses_travel(make_service, reference):
    service = make_service(registry=None)
    embeddings = EmbedshareEmbeddings(model="hash:64")
    assert isinstance(embeddings.manager, SharedEmbeddingManager)
    assert embeddings.manager is get_embedding_manager()  # the process's one manager
    docs = [f"document {i}" for i in range(50)]

    async def many():
        return await asyncio.gather(*(embeddings.aembed_documents(docs[i::5]) for i in range(5)))

    parts = asyncio.run(many())
    for i, part in enumerate(parts):
        assert np.array(part, dtype=np.float32).tobytes() == reference.get_embeddings(docs[i::5]).tobytes()
    requests = service.stats()["embed_requests"]
    embeddings.embed_documents(docs)  # all cached now: read in this process
    assert service.stats()["embed_requests"] == requests
    assert service.stats()["texts_embedded"] == 50


def test_a_manager_of_another_model_is_refused(tmp_path):
    with pytest.warns(NoServiceWarning):
        get_embedding_manager(model="hash:32")
    with pytest.raises(ValueError, match="hash:32:v1.*hash:64:v1"):
        EmbedshareEmbeddings(model="hash:64")


def test_empty_documents_name_the_offender(tmp_path):
    embeddings = EmbedshareEmbeddings(manager=EmbeddingManager(tmp_path / "m", model="hash:64"))
    with pytest.raises(InvalidTextError, match=r"texts\[1\] is empty"):
        embeddings.embed_documents(["fine", ""])
    assert len(embeddings.embed_documents(["fine", "  "])) == 2  # whitespace-only is a text
    with pytest.raises(TypeError, match="embedshare manager"):
        EmbedshareEmbeddings(manager="hash:64")  # type: ignore[arg-type]
