"""The original manager's result types, and ``tool_embeddings`` as a view of the mapped index.

``ToolEmbeddings`` is a read-only ``Mapping`` built on demand from the memory-mapped index: a
``ToolEmbedding``'s arrays are views of the index's ``vectors.npy`` and ``fields.npy``, so 25
processes share one copy of them in the page cache instead of each unpickling its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnknownToolError
from ..registry import FIELDS
from ..store import ToolIndex

_DESCRIPTION, _PARAMETERS, _FUNCTIONALITY = (FIELDS.index(f) for f in ("description", "parameters", "functionality"))
_EMBEDDINGS = ("description_embedding", "parameter_embedding", "functionality_embedding", "combined_embedding")


@dataclass
class SearchResult:
    """One search hit, as the original returned it."""

    tool_name: str
    score: float
    mcp_protocol: dict[str, Any]
    category: str
    reason: str = ""


@dataclass
class ToolEmbedding:
    """One tool's embeddings. From an index, the arrays are read-only views of its memory map."""

    tool_name: str
    category: str
    description: str
    description_embedding: np.ndarray
    parameter_embedding: np.ndarray
    functionality_embedding: np.ndarray
    combined_embedding: np.ndarray
    mcp_protocol: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (arrays as lists of floats)."""
        data = {
            name: getattr(self, name) for name in ("tool_name", "category", "description", "mcp_protocol", "metadata")
        }
        data.update({name: np.asarray(getattr(self, name), dtype=np.float32).tolist() for name in _EMBEDDINGS})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolEmbedding:
        arrays = {name: np.asarray(data[name], dtype=np.float32) for name in _EMBEDDINGS}
        return cls(
            tool_name=data["tool_name"],
            category=data["category"],
            description=data["description"],
            mcp_protocol=data.get("mcp_protocol") or {},
            metadata=data.get("metadata") or {},
            **arrays,
        )


class ToolEmbeddings(Mapping[str, ToolEmbedding]):
    """``tool_embeddings``: name -> ``ToolEmbedding``, read from the index when asked, never copied.

    Nothing here grows with the registry: a lookup is a binary search in the mapped names, and
    the tool's JSON is parsed from the mapped ``tools.jsonl`` only for the tool asked for.
    """

    def __init__(self, index: ToolIndex | None) -> None:
        self._index = index

    def __len__(self) -> int:
        return 0 if self._index is None else len(self._index)

    def __iter__(self) -> Iterator[str]:
        index = self._index
        if index is None:
            return iter(())
        return (index.name_of(row) for row in range(len(index)))

    def __contains__(self, name: object) -> bool:
        if self._index is None or not isinstance(name, str):
            return False
        try:
            self._index.row_of(name)
        except UnknownToolError:
            return False
        return True

    def __getitem__(self, name: str) -> ToolEmbedding:
        if self._index is None or not isinstance(name, str):
            raise KeyError(name)
        try:
            row = self._index.row_of(name)
        except UnknownToolError:
            raise KeyError(name) from None
        index = self._index
        raw = index.tool(row)
        fields = index.fields[row]
        return ToolEmbedding(
            tool_name=name,
            category=index.category_of(row),
            description=raw["description"],
            description_embedding=fields[_DESCRIPTION],
            parameter_embedding=fields[_PARAMETERS],
            functionality_embedding=fields[_FUNCTIONALITY],
            combined_embedding=index.vectors[row],
            mcp_protocol=index.protocol(row),
            metadata=raw.get("metadata") or {},
        )

    def __repr__(self) -> str:
        where = self._index.path if self._index is not None else "no index"
        return f"<tool_embeddings: {len(self)} tools, mapped from {where}>"
