"""Storage: the LMDB embedding cache, the memory-mapped tool index, the store layout."""

from .cache import EmbeddingCache, cache_key
from .cache_errors import CacheDamagedError, CacheError, CacheFullError
from .index import SearchResult, ToolIndex, ToolIndexError, UnknownToolError
from .index_build import build_index, open_or_build_index
from .layout import StoreLayout

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
