"""``StoreIndexes``: the index provider of a source that is not one itself (a user's own).

A registry asked for is indexed with the manager's vectors in the store's ``indexes/`` folder
(opened as is when it was built already); nothing is served by default, and nothing is recorded
as the store's (``store.json`` names a model the package can build, which a user's source is not).
"""

from __future__ import annotations

from ..registry import Registry
from ..store import StoreLayout, ToolIndex
from .base import EmbedFn, Progress


class StoreIndexes:
    """Registries indexed in ``layout``'s folder, for vectors of ``model_id`` and ``dim``."""

    index_on_first_use = False

    def __init__(self, layout: StoreLayout, model_id: str, dim: int) -> None:
        self.layout, self.model_id, self.dim = layout, model_id, dim

    def served_index(self, embed: EmbedFn) -> ToolIndex | None:
        return None

    def index_for(self, registry: Registry, name: str, embed: EmbedFn, progress: Progress | None = None) -> ToolIndex:
        from ..store.index_build import open_or_build_index

        return open_or_build_index(self.layout.indexes, registry, embed, self.model_id, self.dim, progress=progress)

    def no_index_advice(self) -> str:
        return "load one first: manager.load_registry(path or 'bundled')"
