"""A LangChain ``Embeddings`` backed by embedshare: the machine's shared model and cache.

::

    from embedshare.integrations.langchain import EmbedshareEmbeddings

    embeddings = EmbedshareEmbeddings()                  # get_embedding_manager(): shared if a service runs
    embeddings = EmbedshareEmbeddings(model="hash:64")   # or name the model this process expects
    embeddings = EmbedshareEmbeddings(manager=my_manager)
    vectors = embeddings.embed_documents(["read a csv file", "send an HTTP POST"])
    vector = await embeddings.aembed_query("read a csv file")

Every LangChain vector store or retriever that takes an ``Embeddings`` then shares the
service's batching, single-flight and cache with every other process of the machine, and
reads cache hits from the memory map without a round trip.

The manager's rules hold: texts must be non-empty strings (an empty document is an
``InvalidTextError`` naming it; a whitespace-only one is embedded as the model embeds it),
and a service with another model than the one asked for is an error, never silently used.
Needs the ``langchain`` extra (``pip install -e '.[langchain]'`` from a checkout).
"""

from __future__ import annotations

from typing import Any

from ..util.install import pip_install

try:
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"the LangChain adapter needs langchain-core: {pip_install('langchain')}") from exc

from ..errors import ModelMismatchError
from ..manager import EmbeddingManager

__all__ = ["EmbedshareEmbeddings"]


class EmbedshareEmbeddings(Embeddings):
    """LangChain embeddings from an embedshare manager (thread-safe, one per process is enough).

    ``manager``: use this manager. Otherwise the process's own, ``get_embedding_manager(model,
    store, registry, on_failure=...)``: the shared client when a service runs, else a local
    manager. ``model`` defaults to ``$EMBEDSHARE_MODEL`` (then ``local``), ``store`` to
    ``$EMBEDSHARE_STORE``. The manager is resolved here, at construction, so that a wrong model
    or store is an error now rather than at the first document.
    """

    def __init__(
        self,
        manager: EmbeddingManager | None = None,
        *,
        model: str | None = None,
        store: str | None = None,
        registry: str | None = None,
        on_failure: str | None = None,
    ) -> None:
        if manager is None:
            from ..access import get_embedding_manager

            manager = get_embedding_manager(model=model, store=store, registry=registry, on_failure=on_failure)
            if model is not None:
                _check_model(manager, model)
        elif not isinstance(manager, EmbeddingManager):
            raise TypeError(f"manager must be an embedshare manager, got {type(manager).__name__}")
        self.manager = manager

    @property
    def model_id(self) -> str:
        return self.manager.model_id

    @property
    def dim(self) -> int:
        return self.manager.dim

    def __repr__(self) -> str:
        return f"EmbedshareEmbeddings(manager={self.manager!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector (unit length, ``dim`` floats) per text; all misses in one request."""
        return self.manager.get_embeddings(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.manager.get_embedding(text).tolist()

    # The manager blocks (a cache read, or a round trip to the service for misses), so the
    # async variants run it in LangChain's executor: the event loop is never held, and
    # concurrent coroutines' misses meet in the service's batches.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await run_in_executor(None, self.embed_query, text)


def _check_model(manager: Any, model: str) -> None:
    """The process's manager may predate this call: make sure it embeds with ``model``."""
    from ..embedders import create_embedder

    wanted = create_embedder(model).model_id
    if manager.model_id != wanted:
        raise ModelMismatchError(
            f"this process's embedding manager embeds with {manager.model_id!r}, not {wanted!r}; "
            "pass manager= to use another one"
        )
