"""``MCPEmbeddingManager``: the original manager's API on top of the process's embedshare manager.

Every compat manager of a process wraps the same ``embedshare.get_embedding_manager()``: the
shared client when a service runs (in a pool worker, a ``Popen``'d shard, a thread), else a
local manager, with the native API's fallback rules and warnings. Only the shapes change here:
``SearchResult(tool_name, score, mcp_protocol, category, reason)``, ``(name, score)`` pairs,
``tool_embeddings`` as a mapping over the memory-mapped index.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import access
from ..errors import ModelMismatchError, NoIndexError, ToolIndexError
from ..manager import EmbeddingManager
from ..registry import load_registry
from ..store import ToolIndex
from ..store.index import index_folder_name
from ..store.index_build import open_or_build_index
from ..util.user_warning import warn_user
from . import config as cfg
from .config import EmbeddingConfig
from .types import SearchResult, ToolEmbeddings


class MCPEmbeddingManager:
    """The original ``MCPEmbeddingManager``, backed by this process's embedshare manager."""

    def __init__(self, config: EmbeddingConfig | None = None, api_key: str | None = None) -> None:
        if api_key:  # read by whoever embeds: a local manager here, or a service this process starts
            os.environ.setdefault(cfg.API_KEY_ENV, api_key)
        self._asked = cfg.asked_model(config)
        self._pid = os.getpid()
        self._manager = self._attach()
        given = config or EmbeddingConfig()
        if given.dimension_given and int(given.dimension) != self._manager.dim:
            raise ValueError(
                f"EmbeddingConfig(dimension={given.dimension}) does not match the model: "
                f"{self._manager.model_id!r} embeds with {self._manager.dim} dims"
            )
        model = given.model if given.model_given else self._manager.model_id  # as asked, else the model's id
        self.config = replace(given, model=str(model), dimension=self._manager.dim)

    def _attach(self) -> EmbeddingManager:
        manager = access.get_embedding_manager(self._asked, default_model=cfg.fallback_model())
        if self._asked is not None:
            wanted = cfg.expected_dimension(self._asked)
            if not _same_model(self._asked, manager.model_id) or (wanted and wanted != manager.dim):
                raise ModelMismatchError(
                    f"this process's embedding manager embeds with {manager.model_id!r}, not "
                    f"{self._asked!r}: one process has one model (reset_embedding_manager() first)"
                )
        elif (
            manager.mode == "local"
            and manager.model_id.startswith(cfg.LOCAL_SPEC)
            and not os.environ.get(cfg.API_KEY_ENV)
        ):
            cfg.warn_local_default()
        return manager

    @property
    def manager(self) -> EmbeddingManager:
        """The embedshare manager underneath (this process's; rebuilt after a fork)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._manager = self._attach()
        return self._manager

    def __repr__(self) -> str:
        return f"MCPEmbeddingManager(model={self.config.model!r}, dimension={self.config.dimension})"

    # -- attributes the original's callers read -----------------------------------------------

    @property
    def index(self) -> ToolIndex | None:
        """The loaded tool index (memory-mapped), or None before one is loaded."""
        try:
            return self.manager.index  # a local manager opens the store's recorded registry here
        except NoIndexError:
            return None

    @property
    def tool_embeddings(self) -> ToolEmbeddings:
        """name -> ``ToolEmbedding``, read from the mapped index on demand (never copied)."""
        return ToolEmbeddings(self.index)

    # -- embeddings and search ----------------------------------------------------------------

    def _get_embedding(self, text: str) -> np.ndarray:
        """One text's vector (float32, unit length), through the shared cache and service."""
        return self.manager.get_embedding(text)

    def search(
        self,
        query: str,
        k: int = 5,
        category_filter: str | None = None,
        return_scores: bool = True,
        similarity_threshold: float = 0.0,
    ) -> list[SearchResult]:
        """The ``k`` tools that best match ``query``; every result carries its score."""
        hits = self.manager.search(query, k=k, category=category_filter, threshold=similarity_threshold)
        return [
            SearchResult(
                tool_name=h.name, score=float(h.score), mcp_protocol=h.protocol, category=h.category, reason=h.reason
            )
            for h in hits
        ]

    def find_similar_tools(
        self, tool_name: str, k: int = 5, same_category_only: bool = False
    ) -> list[tuple[str, float]]:
        """``(name, score)`` of the ``k`` tools closest to ``tool_name`` (itself excluded)."""
        hits = self.manager.find_similar_tools(tool_name, k=k, same_category_only=same_category_only)
        return [(h.name, float(h.score)) for h in hits]

    def get_tool_protocols(
        self, tool_names: Sequence[str], include_embeddings: bool = False
    ) -> dict[str, dict[str, Any]]:
        """MCP protocols by name; ``include_embeddings`` adds each tool's combined vector."""
        protocols = {name: dict(p) for name, p in self.manager.get_tool_protocols(tool_names).items()}
        if include_embeddings:
            embeddings = self.tool_embeddings
            for name, protocol in protocols.items():
                protocol["embedding"] = embeddings[name].combined_embedding.tolist()
        return protocols

    # -- the index ----------------------------------------------------------------------------

    def build_index(self, tool_registry_path: str | Path, force_rebuild: bool = False) -> dict[str, Any]:
        """Index a registry (the original's JSON shape indexes as is) and search it from now on.

        An index is named by the registry's content and the model, so an existing one is
        reused; ``force_rebuild`` checks every file against its checksum first and rebuilds a
        damaged one. Tools are embedded through the shared cache (and service): a registry
        the machine has seen costs no model call.
        """
        started = time.perf_counter()
        manager = self.manager
        registry = load_registry(tool_registry_path)
        path = manager.layout.indexes / index_folder_name(registry.content_hash, manager.model_id)
        if force_rebuild and (path / "manifest.json").exists():
            try:
                ToolIndex(path, verify=True)
            except ToolIndexError:  # damaged: rebuilt below (another shard may be removing it too)
                shutil.rmtree(path, ignore_errors=True)
        existed = (path / "manifest.json").exists()
        misses_before = manager.stats()["misses"]
        if manager.mode == "local":  # the store records it, as load_registry does
            index = manager.load_registry(tool_registry_path)
        else:  # a service's client: embedded through it; the service keeps serving its own registry
            index = open_or_build_index(path.parent, registry, manager.get_embeddings, manager.model_id, manager.dim)
            manager.use_index(index)
        categories = Counter(index.category_of(row) for row in range(len(index)))
        return {
            "total_tools": len(index),
            "categories": dict(sorted(categories.items())),
            "model": manager.model_id,
            "dimension": manager.dim,
            "index_path": str(index.path),
            "registry": registry.source,
            "rebuilt": not existed,
            "embedding_cache_misses": manager.stats()["misses"] - misses_before,
            "build_time": time.perf_counter() - started,
        }

    def load_index(self, index_file: str | Path | None = None) -> bool:
        """Load an index folder (``save_index``'s) or a registry JSON; False if there is none.

        With no argument: True if an index is loaded (the service's, or ``EMBEDSHARE_REGISTRY``'s).
        The original's pickled index files are not read: pickle runs code from whoever wrote it.
        """
        if index_file is None:
            return self.index is not None
        path = Path(index_file).expanduser()
        if (path / "manifest.json").is_file():
            self.manager.use_index(ToolIndex(path, verify=True))
            return True
        if path.is_file() and path.suffix == ".json":
            self.build_index(path)
            return True
        if not path.exists():
            return False
        raise ToolIndexError(
            f"{path} is neither an embedshare index folder (with manifest.json) nor a tool registry "
            "(.json); pickled indexes of the original manager are not read: build_index(registry) instead"
        )

    def save_index(self, path: str | Path) -> Path:
        """Copy the loaded index folder to ``path`` (written beside it, then renamed into place)."""
        index = self.index
        if index is None:
            raise NoIndexError("no tool index is loaded: call build_index(registry) or load_index(path) first")
        destination = Path(path).expanduser().resolve()
        if destination.exists() and not (destination / "manifest.json").is_file():
            raise FileExistsError(f"{destination} exists and is not an index folder; not overwritten")
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=destination.parent))
        try:
            for source in index.path.iterdir():
                shutil.copy2(source, tmp / source.name)
            if destination.exists():
                shutil.rmtree(destination)
            os.rename(tmp, destination)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return destination

    # -- caches and statistics ----------------------------------------------------------------

    def clear_cache(self, keep_embeddings: bool = True) -> None:
        """Forget this process's search results. The embedding cache is the store's, never cleared."""
        self.manager.clear_search_cache()
        if not keep_embeddings:
            warn_user(
                "clear_cache(keep_embeddings=False): the embedding cache is shared by every process "
                f"of the store ({self.manager.layout.root}) and is kept; stop the service and delete "
                "its cache/ folder to empty it",
                UserWarning,
            )

    def get_cache_stats(self) -> dict[str, Any]:
        """Hits, misses and sizes of this process's caches."""
        stats = self.manager.stats()
        lookups = stats["hits"] + stats["misses"]
        return {
            "cached_embeddings": self.manager.cache.count(),
            "cache_hits": stats["hits"],
            "cache_misses": stats["misses"],
            "hit_rate": stats["hits"] / lookups if lookups else 0.0,
            "searches": stats["searches"],
            "search_cache_hits": stats["search_cache_hits"],
            "mode": stats["mode"],
        }

    def export_stats(self) -> dict[str, Any]:
        """Everything there is to say about this manager, JSON-able."""
        stats = self.manager.stats()
        return {
            "config": {"model": self.config.model, "dimension": self.config.dimension},
            "model_id": self.manager.model_id,
            "index_loaded": self.index is not None,
            "index_path": self.manager.index_path,
            "tools": stats["tools"],
            "cache": self.get_cache_stats(),
            "manager": stats,
        }


def _same_model(spec: str, model_id: str) -> bool:
    """Whether a manager's ``model_id`` is the model ``spec`` names (``hash:64`` is ``hash:64:v1``)."""
    from ..embedders import model_id_of

    try:
        return model_id_of(spec) == model_id
    except ValueError:
        return False


_lock = threading.Lock()
_instance: MCPEmbeddingManager | None = None
_instance_pid: int | None = None


def get_embedding_manager(config: EmbeddingConfig | None = None) -> MCPEmbeddingManager:
    """This process's compat manager: shared with every thread, rebuilt in a forked child."""
    global _instance, _instance_pid
    with _lock:
        if _instance is None or _instance_pid != os.getpid():
            _instance, _instance_pid = MCPEmbeddingManager(config), os.getpid()
        elif config is not None and config.model_given:
            asked, current = cfg.to_spec(config.model), _instance.manager.model_id
            if not _same_model(asked, current):  # one process, one model: never silently another
                raise ValueError(
                    f"this process's embedding manager embeds with {current!r}, not {asked!r}; "
                    "call reset_embedding_manager() first"
                )
        return _instance


def reset_embedding_manager() -> None:
    """Forget this process's manager (and the native one underneath)."""
    global _instance, _instance_pid
    with _lock:
        _instance, _instance_pid = None, None
    access.reset_embedding_manager()
    cfg.reset_warning()


def get_embedding_manager_info() -> dict[str, Any]:
    """What this process's manager holds: cached embeddings, index, model and dimension."""
    manager = get_embedding_manager()
    return {
        "cached_embeddings": manager.manager.cache.count(),
        "index_loaded": manager.index is not None,
        "model": manager.config.model,
        "dimension": manager.config.dimension,
    }
