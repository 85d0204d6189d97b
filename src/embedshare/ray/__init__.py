"""embedshare on a Ray cluster: one service per node, the index in Ray's object store.

    import ray, embedshare.ray
    ray.init(address="auto")
    embedshare.ray.init(model="local", registry="bundled")   # optional: deploy up front

    @ray.remote
    def task(query):
        from embedshare import get_embedding_manager
        return [hit.name for hit in get_embedding_manager().search(query, k=5)]

Inside a Ray task or actor, ``get_embedding_manager()`` returns a manager bound to its node's
service (see ``source.py``); nothing changes in task code. Names are imported on first use:
``python -m embedshare.ray._service`` (the node's service process) must not import Ray.
See docs/ray.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "init": "embedshare.ray.api",
    "shutdown": "embedshare.ray.api",
    "deployment": "embedshare.ray.api",
    "RayDeployment": "embedshare.ray.api",
    "RayEmbeddingManager": "embedshare.ray.source",
    "in_ray_worker": "embedshare.ray.source",
}

__all__ = [*_EXPORTS, "get_node_manager"]


def get_node_manager(model: str | None = None, *, on_failure: str | None = None) -> Any:
    """A manager bound to this node's service, in any process connected to Ray (a driver too).

    Tasks and actors need not call it: ``get_embedding_manager()`` does it for them.
    """
    from .source import RayEmbeddingManager

    return RayEmbeddingManager(model=model, on_failure=on_failure)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedshare.ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
