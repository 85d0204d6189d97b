"""embedshare: one embedding model, cache and tool index per machine, shared by every worker.

    from embedshare import get_embedding_manager
    manager = get_embedding_manager()          # shared client if a service runs, else local
    manager.search("read a CSV file", k=5)
"""

from __future__ import annotations

from .access import get_embedding_manager, reset_embedding_manager
from .embedders import create_embedder
from .manager import EmbeddingManager
from .service import EmbeddingService, ServiceUnavailable, SharedEmbeddingManager

__version__ = "0.1.0"

__all__ = [
    "EmbeddingManager",
    "EmbeddingService",
    "ServiceUnavailable",
    "SharedEmbeddingManager",
    "create_embedder",
    "get_embedding_manager",
    "reset_embedding_manager",
    "__version__",
]
