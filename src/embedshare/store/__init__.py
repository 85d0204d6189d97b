"""Storage: the LMDB embedding cache, the memory-mapped tool index, the store layout.

The index builder (``build_index``, ``open_or_build_index``) is imported when first asked for:
a worker reads indexes and never builds one.
"""

from typing import TYPE_CHECKING, Any

from ..errors import CacheDamagedError, CacheError, CacheFullError, ToolIndexError, UnknownToolError
from .cache import EmbeddingCache, cache_key
from .index import SearchResult, ToolIndex
from .layout import StoreLayout

if TYPE_CHECKING:
    from .index_build import build_index, open_or_build_index

__all__ = [
    "CacheDamagedError",
    "CacheError",
    "CacheFullError",
    "EmbeddingCache",
    "SearchResult",
    "StoreLayout",
    "ToolIndex",
    "ToolIndexError",
    "UnknownToolError",
    "build_index",
    "cache_key",
    "open_or_build_index",
]


def __getattr__(name: str) -> Any:
    if name in ("build_index", "open_or_build_index"):
        from . import index_build

        return getattr(index_build, name)
    raise AttributeError(f"module 'embedshare.store' has no attribute {name!r}")
