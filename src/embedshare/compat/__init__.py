"""A drop-in for the original ``mcp_embedding_manager`` module, backed by embedshare.

    from embedshare.compat import get_embedding_manager     # was: from mcp_embedding_manager import ...
    em = get_embedding_manager()                             # the machine's shared service if one runs
    for r in em.search("read a csv file", k=5):
        print(r.tool_name, r.score, r.category, r.reason)

The original's public surface (module functions, ``MCPEmbeddingManager``, ``EmbeddingConfig``,
``SearchResult``, ``ToolEmbedding``) with its call shapes; underneath, every process of the
machine shares one model, one cache and one memory-mapped index. README.md, "Migrating from
``mcp_embedding_manager``", lists what differs.
"""

from .config import EmbeddingConfig, LocalModelWarning
from .manager import (
    MCPEmbeddingManager,
    get_embedding_manager,
    get_embedding_manager_info,
    reset_embedding_manager,
)
from .types import SearchResult, ToolEmbedding, ToolEmbeddings

__all__ = [
    "EmbeddingConfig",
    "LocalModelWarning",
    "MCPEmbeddingManager",
    "SearchResult",
    "ToolEmbedding",
    "ToolEmbeddings",
    "get_embedding_manager",
    "get_embedding_manager_info",
    "reset_embedding_manager",
]
