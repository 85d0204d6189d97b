"""embedshare: one embedding model, cache and tool index per machine, shared by every worker.

    from embedshare import get_embedding_manager
    manager = get_embedding_manager(registry="bundled")  # shared client if a service runs, else
    manager.search("read a CSV file", k=5)               # local; the store remembers the registry

Names are imported on first use (PEP 562), so a worker that only needs the client does not
pay for the pool, the CLI or the server in memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# What type checkers see (re-exported through __all__); at run time each name is imported
# when first used, by __getattr__ below.
if TYPE_CHECKING:
    from .access import (  # noqa: F401
        NoServiceWarning,
        SharedEmbeddingManager,
        get_embedding_manager,
        reset_embedding_manager,
        set_embedding_manager,
    )
    from .embedders import create_embedder  # noqa: F401
    from .errors import (  # noqa: F401
        AlreadyRunning,
        ArgumentError,
        CacheDamagedError,
        CacheError,
        CacheFullError,
        EmbedderError,
        EmbedshareError,
        ForeignServiceError,
        InvalidTextError,
        MainGuardError,
        ModelMismatchError,
        NodeGone,
        NoIndexError,
        PoolError,
        ProtocolError,
        RegistryError,
        RegistryMismatchError,
        RemoteError,
        ServiceAuthenticationError,
        ServiceStartError,
        ServiceStopped,
        ServiceUnavailable,
        SettingError,
        StateFileError,
        StoreRecordError,
        TaskFailed,
        ToolIndexError,
        UnknownModelError,
        UnknownToolError,
        UnsafeStoreError,
        UnsupportedModelError,
        WorkerCrashed,
        WorkerInitError,
    )
    from .manager import EmbeddingManager  # noqa: F401
    from .pool.shared import SharedPool  # noqa: F401
    from .service.config import ServiceConfig  # noqa: F401
    from .service.launcher import EmbeddingService  # noqa: F401
    from .sources.base import VectorSource  # noqa: F401


__version__ = "0.1.0"

_EXPORTS = {
    "get_embedding_manager": "embedshare.access",
    "set_embedding_manager": "embedshare.access",
    "reset_embedding_manager": "embedshare.access",
    "EmbeddingManager": "embedshare.manager",
    "create_embedder": "embedshare.embedders",
    "SharedEmbeddingManager": "embedshare.access",
    "NoServiceWarning": "embedshare.access",
    "EmbeddingService": "embedshare.service.launcher",
    "ServiceConfig": "embedshare.service.config",
    "SharedPool": "embedshare.pool.shared",
    "VectorSource": "embedshare.sources.base",  # for a source of your own: EmbeddingManager(source=...)
    # Every exception a user can meet, from the one module that defines them (errors.py).
    "AlreadyRunning": "embedshare.errors",
    "ArgumentError": "embedshare.errors",
    "CacheDamagedError": "embedshare.errors",
    "CacheError": "embedshare.errors",
    "CacheFullError": "embedshare.errors",
    "EmbedderError": "embedshare.errors",
    "EmbedshareError": "embedshare.errors",
    "ForeignServiceError": "embedshare.errors",
    "InvalidTextError": "embedshare.errors",
    "MainGuardError": "embedshare.errors",
    "ModelMismatchError": "embedshare.errors",
    "NoIndexError": "embedshare.errors",
    "NodeGone": "embedshare.errors",
    "PoolError": "embedshare.errors",
    "ProtocolError": "embedshare.errors",
    "RegistryError": "embedshare.errors",
    "RegistryMismatchError": "embedshare.errors",
    "RemoteError": "embedshare.errors",
    "ServiceAuthenticationError": "embedshare.errors",
    "ServiceStartError": "embedshare.errors",
    "ServiceStopped": "embedshare.errors",
    "ServiceUnavailable": "embedshare.errors",
    "SettingError": "embedshare.errors",
    "StateFileError": "embedshare.errors",
    "StoreRecordError": "embedshare.errors",
    "TaskFailed": "embedshare.errors",
    "ToolIndexError": "embedshare.errors",
    "UnknownModelError": "embedshare.errors",
    "UnknownToolError": "embedshare.errors",
    "UnsafeStoreError": "embedshare.errors",
    "UnsupportedModelError": "embedshare.errors",
    "WorkerCrashed": "embedshare.errors",
    "WorkerInitError": "embedshare.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedshare' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
