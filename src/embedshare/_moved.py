"""Module paths of embedshare 0.1 that the redesign (issue 14) moved: importing one still works.

``from embedshare.service.client import SharedEmbeddingManager`` keeps working, with a
``DeprecationWarning`` naming the modules that hold those names now; every name is looked up
there, so the old path and the new one give the same object. Written by hand because what an
old module held is now spread over several new ones. To be removed in 0.3.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# old module -> the modules that hold its names now, searched in this order
MOVED: dict[str, tuple[str, ...]] = {
    "embedshare.digests": ("embedshare.util.digests",),
    "embedshare.latency": ("embedshare.util.latency",),
    "embedshare.lazylog": ("embedshare.util.lazylog",),
    "embedshare.progress": ("embedshare.util.progress",),
    "embedshare.pss": ("embedshare.util.pss",),
    "embedshare.pool.bare": ("embedshare.util.bare",),
    "embedshare.pool.memory": ("embedshare.util.memory",),
    "embedshare.pool.demo": ("embedshare.bench.demo",),
    "embedshare.pool.workload": ("embedshare.bench.workload",),
    "embedshare.ray.demo": ("embedshare.bench.ray_demo", "embedshare.bench.ray_demo_report"),
    "embedshare.ray.actors": ("embedshare.ray.node", "embedshare.ray.coordinator"),
    "embedshare.ray.worker": ("embedshare.ray.source",),
    "embedshare.service.client": ("embedshare.access", "embedshare.sources.service", "embedshare.sources.failover"),
    "embedshare.service.connection": ("embedshare.client.connection",),
    "embedshare.service.peercred": ("embedshare.client.peercred",),
    "embedshare.service.protocol": ("embedshare.client.protocol",),
    "embedshare.service.state": (
        "embedshare.client.state",
        "embedshare.service.config",
        "embedshare.env",
        "embedshare.client.address",
        "embedshare.service.token_file",
    ),
    "embedshare.service.http_address": (
        "embedshare.service.http.address",
        "embedshare.env",
        "embedshare.service.token_file",
    ),
    "embedshare.service.http_guard": ("embedshare.service.http.guard",),
    "embedshare.service.probes": ("embedshare.service.http.probes",),
    "embedshare.service.tokens": ("embedshare.service.http.tokens",),
}


class MovedModules:
    """A finder and loader of :data:`MOVED`'s old paths (after every real module: the last finder)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        # A loader by protocol (create_module, exec_module): importlib.abc, whose Loader typeshed
        # asks for, is not imported into every worker for a base class.
        return ModuleSpec(fullname, self) if fullname in MOVED else None  # type: ignore[arg-type]

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        old, homes = module.__name__, MOVED[module.__name__]
        from .util.user_warning import warn_user  # here: importing embedshare stays this module only

        warn_user(f"{old} moved in embedshare 0.2: import from {' or '.join(homes)}", DeprecationWarning)

        def __getattr__(name: str) -> Any:
            for home in homes:
                value = getattr(importlib.import_module(home), name, _ABSENT)
                if value is not _ABSENT:
                    return value
            raise AttributeError(f"module {old!r} (moved to {', '.join(homes)}) has no attribute {name!r}")

        module.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562's module __getattr__


_ABSENT = object()


def install() -> None:
    """Let the old paths be imported (once per process)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
