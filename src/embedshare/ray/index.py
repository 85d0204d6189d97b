"""The tool index as one object in Ray's object store, searched in place by every worker.

``index_payload(folder)`` turns a built index folder into plain numpy arrays (and the tools'
JSON lines as a byte array). Put once with ``ray.put``, it is copied once to each node's
shared-memory object store; ``ray.get`` in a worker then returns arrays that point straight
into that shared memory (read-only, zero-copy), so every worker of a node searches the same
physical pages, as the memory-mapped folder does on one machine. ``ObjectStoreToolIndex``
is a :class:`~embedshare.store.ToolIndex` over those arrays. Imports no Ray.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolIndexError
from ..registry import FIELDS
from ..store.index import ARRAY_FILES, FORMAT_VERSION, ToolIndex

PAYLOAD_FORMAT = 1
ANN_ARRAYS = ("centroids", "offsets", "rows", "vectors")  # store/ann.py's files, ann_<name>.npy


def index_payload(path: str | Path) -> dict[str, Any]:
    """The arrays of the index folder at ``path`` (checked against its manifest)."""
    index = ToolIndex(path, verify=True)
    folder = Path(path)
    arrays = {fname[: -len(".npy")]: np.load(folder / fname, allow_pickle=False) for fname in ARRAY_FILES}
    tools = np.frombuffer((folder / "tools.jsonl").read_bytes(), dtype=np.uint8)
    ann = None
    if getattr(index, "ann", None) is not None:  # a large index's approximate index, same arrays
        ann = {name: np.load(folder / f"ann_{name}.npy", allow_pickle=False) for name in ANN_ARRAYS}
    return {
        "payload_format": PAYLOAD_FORMAT,
        "id": folder.name,
        "manifest": index.manifest,
        "arrays": arrays,
        "tools": tools,
        "ann": ann,
    }


class ObjectStoreToolIndex(ToolIndex):
    """A read-only tool index over arrays (from Ray's object store); the API of ToolIndex."""

    def __init__(self, payload: dict[str, Any]) -> None:
        if payload.get("payload_format") != PAYLOAD_FORMAT:
            raise ToolIndexError(f"index payload format {payload.get('payload_format')!r}, expected {PAYLOAD_FORMAT}")
        m = self.manifest = payload["manifest"]
        if m["format"] != FORMAT_VERSION:
            raise ToolIndexError(f"index payload: format {m['format']}, expected {FORMAT_VERSION}")
        self.path = Path("ray-object-store") / payload["id"]
        self.model_id = m["model_id"]
        self.dim = int(m["dim"])
        self.count = int(m["count"])
        self.categories = list(m["categories"])
        a = payload["arrays"]
        n, dim, nf = self.count, self.dim, len(FIELDS)
        expected = {
            "vectors": ((n, dim), "f"),
            "fields": ((n, nf, dim), "f"),
            "weights": ((n, nf), "f"),
            "categories": ((n,), "i"),
            "names_sorted": ((n,), "S"),
            "rows_by_name": ((n,), "i"),
            "tool_offsets": ((n + 1,), "i"),
        }
        for name, (shape, kind) in expected.items():
            array = a.get(name)
            if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype.kind != kind:
                raise ToolIndexError(f"index payload {payload['id']}: array {name!r} is not {shape} of kind {kind}")
        self.vectors = a["vectors"]
        self.fields = a["fields"]
        self.weights = a["weights"]
        self.category_codes = a["categories"]
        self.names_sorted = a["names_sorted"]
        self.rows_by_name = a["rows_by_name"]
        self.tool_offsets = a["tool_offsets"]
        self._tools_text: np.ndarray = payload["tools"]  # uint8, the tools.jsonl of a file index
        if self._tools_text.size != int(self.tool_offsets[-1]):
            raise ToolIndexError(f"index payload {payload['id']}: tools text has the wrong length")
        self._row_info = functools.lru_cache(maxsize=512)(self._parse_row)
        self.ann = _ivf_from_arrays(self.path, payload["ann"], n, dim) if payload.get("ann") else None

    def __repr__(self) -> str:
        return f"ObjectStoreToolIndex({self.path.name!r}, count={self.count}, model_id={self.model_id!r})"

    def tool(self, row: int) -> dict[str, Any]:
        start, end = int(self.tool_offsets[row]), int(self.tool_offsets[row + 1])
        tool: dict[str, Any] = json.loads(self._tools_text[start:end].tobytes())
        return tool


def _ivf_from_arrays(path: Path, arrays: dict[str, np.ndarray], count: int, dim: int) -> Any:
    """store/ann.py's IVF index over arrays from the object store instead of its files."""
    from ..store.ann import IVFIndex, default_nprobe

    ann = IVFIndex.__new__(IVFIndex)
    ann.path = path
    ann.centroids, ann.offsets, ann.rows, ann.vectors = (arrays[name] for name in ANN_ARRAYS)
    ann.nlist, ann.dim = ann.centroids.shape
    if (
        ann.offsets.shape != (ann.nlist + 1,)
        or len(ann.rows) != count
        or len(ann.vectors) != count
        or int(ann.offsets[-1]) != count
        or ann.dim != dim
    ):
        raise ToolIndexError(f"index payload {path.name}: its ANN arrays do not match its vectors")
    ann.nprobe = default_nprobe(ann.nlist)
    return ann
