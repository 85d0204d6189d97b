"""The shared service (server), its wire protocol, and the worker-side client."""

from .client import SharedEmbeddingManager
from .connection import ServiceUnavailable
from .launcher import EmbeddingService, ServiceStartError
from .protocol import RemoteError

__all__ = ["EmbeddingService", "RemoteError", "ServiceStartError", "ServiceUnavailable", "SharedEmbeddingManager"]
