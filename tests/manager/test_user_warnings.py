"""Every warning embedshare gives points at the user's line (this file), not at embedshare's own,
whichever layer the call went through: the native API, the compat layer, LangChain's adapter."""

from __future__ import annotations

import warnings

import pytest
from helpers.extras import requires

from embedshare.access import NoServiceWarning, get_embedding_manager
from embedshare.compat import EmbeddingConfig, LocalModelWarning, MCPEmbeddingManager


def caught_in(call, category: type[Warning]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = [w for w in caught if issubclass(w.category, category)]
    assert found, [str(w.message) for w in caught]
    return found


def assert_points_here(found: list[warnings.WarningMessage]) -> None:
    assert {w.filename for w in found} == {__file__}, [(w.filename, w.lineno) for w in found]


def test_no_service_warning_of_the_native_api(tmp_path):
    assert_points_here(caught_in(lambda: get_embedding_manager(model="hash:64", store=tmp_path), NoServiceWarning))


def test_no_service_warning_through_the_compat_layer(monkeypatch):
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")
    assert_points_here(caught_in(lambda: MCPEmbeddingManager(EmbeddingConfig(model="hash:64")), NoServiceWarning))


@requires("local")
def test_the_compat_local_model_warning(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert_points_here(caught_in(MCPEmbeddingManager, LocalModelWarning))


def test_the_compat_clear_cache_warning():
    em = MCPEmbeddingManager(EmbeddingConfig(model="hash:64"))
    assert_points_here(caught_in(lambda: em.clear_cache(keep_embeddings=False), UserWarning))


@requires("langchain")
def test_no_service_warning_through_langchain_s_adapter(tmp_path):
    from embedshare.integrations.langchain import EmbedshareEmbeddings

    assert_points_here(caught_in(lambda: EmbedshareEmbeddings(model="hash:64", store=str(tmp_path)), NoServiceWarning))


pytestmark = pytest.mark.filterwarnings("always")
