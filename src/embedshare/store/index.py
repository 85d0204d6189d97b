"""The tool index: a folder of memory-mapped arrays that every process searches in place.

Layout of one index folder (written once, atomically, by ``index_build``, then only read)::

    manifest.json        model_id, dim, count, registry hash, categories, file sizes + sha256
    vectors.npy          (n, dim) float32   combined, normalised tool vectors (searched)
    fields.npy           (n, F, dim) float32 per-field vectors (for the reasons), 0 if absent
    weights.npy          (n, F) float32     each tool's field weights (0 if absent)
    categories.npy       (n,) int32         index into manifest["categories"]
    names_sorted.npy     (n,) bytes         tool names, sorted, for binary search by name
    rows_by_name.npy     (n,) int64         the row of each sorted name
    tools.jsonl          one tool's JSON per line; tool_offsets.npy (n+1,) int64 byte offsets

Everything is opened with ``np.load(mmap_mode="r")``: N processes share the same physical
pages, and nothing in a process grows with the number of tools (a Python dict of a million
names would cost every worker ~100 MB).
"""

from __future__ import annotations

import functools
import json
import mmap
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ToolIndexError, UnknownToolError
from ..registry import FIELDS
from ..registry.loader import tool_protocol
from ..util.digests import blake2b, sha256
from .files import check_owned

if TYPE_CHECKING:  # imported when an index has one (large indexes): see _open_ann
    from .ann import IVFIndex

FORMAT_VERSION = 1
ARRAY_FILES = (
    "vectors.npy",
    "fields.npy",
    "weights.npy",
    "categories.npy",
    "names_sorted.npy",
    "rows_by_name.npy",
    "tool_offsets.npy",
)
DATA_FILES = (*ARRAY_FILES, "tools.jsonl")


@dataclass(frozen=True)
class Hits:
    """What a search found, compactly (kept by the managers' search-result caches)."""

    rows: np.ndarray
    scores: np.ndarray
    field_sims: np.ndarray  # (k, F): each hit's similarity per field


@dataclass(frozen=True)
class SearchResult:
    """One search hit: which tool, how close, and why."""

    name: str
    score: float
    category: str
    reason: str
    protocol: dict[str, Any] = field(repr=False)
    field_scores: dict[str, float] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_folder_name(registry_hash: str, model_id: str) -> str:
    """Folder name of the index for this registry content and model."""
    model_tag = blake2b(model_id.encode(), digest_size=4).hexdigest()
    return f"{registry_hash[:16]}-{model_tag}"


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file of the index (its manifest lists one for every file)."""
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_index_owned(path: Path) -> None:
    """Refuse an index folder, or a file in it, that is not ours alone (``UnsafeStoreError``).

    Whoever owns or may write an index decides what a search answers (its tools, their
    protocols); a folder of another user is refused however it is reached: named in
    ``store.json``, through a link inside ``indexes/``, or given as a path.
    """
    try:
        check_owned(path, "folder")
        names = os.listdir(path)
    except FileNotFoundError:
        raise ToolIndexError(f"no tool index at {path} (manifest.json missing)") from None
    for name in names:
        check_owned(path / name, "file")


class ToolIndex:
    """A read-only, memory-mapped tool index. Thread-safe (nothing in it changes)."""

    def __init__(self, path: str | Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        check_index_owned(self.path)
        manifest_path = self.path / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise ToolIndexError(f"no tool index at {self.path} (manifest.json missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ToolIndexError(f"tool index {self.path}: manifest.json is not valid JSON ({exc})") from None
        m = self.manifest
        try:
            if m["format"] != FORMAT_VERSION:
                raise ToolIndexError(f"tool index {self.path}: format {m['format']}, expected {FORMAT_VERSION}")
            self.model_id: str = m["model_id"]
            self.dim: int = int(m["dim"])
            self.count: int = int(m["count"])
            self.categories: list[str] = list(m["categories"])
            files = m["files"]
            for fname in DATA_FILES:
                expected = int(files[fname]["bytes"])
                try:
                    actual = (self.path / fname).stat().st_size
                except FileNotFoundError:
                    raise ToolIndexError(f"tool index {self.path}: {fname} is missing") from None
                if actual != expected:
                    raise ToolIndexError(
                        f"tool index {self.path}: {fname} has {actual} bytes, manifest says {expected}"
                    )
                if verify and file_sha256(self.path / fname) != files[fname]["sha256"]:
                    raise ToolIndexError(f"tool index {self.path}: {fname} does not match its checksum")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ToolIndexError):
                raise
            raise ToolIndexError(f"tool index {self.path}: manifest.json is incomplete ({exc!r})") from None

        def load(fname: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
            try:
                array: np.ndarray = np.load(self.path / fname, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ToolIndexError(f"tool index {self.path}: cannot read {fname} ({exc})") from None
            if array.shape != shape or array.dtype.kind != np.dtype(dtype).kind:
                raise ToolIndexError(
                    f"tool index {self.path}: {fname} has shape {array.shape} {array.dtype}, expected {shape} {dtype}"
                )
            return array

        n, dim, nf = self.count, self.dim, len(FIELDS)
        self.vectors = load("vectors.npy", (n, dim), "float32")
        self.fields = load("fields.npy", (n, nf, dim), "float32")
        self.weights = load("weights.npy", (n, nf), "float32")
        self.category_codes = load("categories.npy", (n,), "int32")
        self.names_sorted = load("names_sorted.npy", (n,), "S")
        self.rows_by_name = load("rows_by_name.npy", (n,), "int64")
        self.tool_offsets = load("tool_offsets.npy", (n + 1,), "int64")
        with open(self.path / "tools.jsonl", "rb") as f:
            self._tools_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # Parsed name and protocol of recently returned rows: bounded, whatever the index size.
        self._row_info = functools.lru_cache(maxsize=512)(self._parse_row)
        self.ann = self._open_ann(verify) if m.get("ann") else None

    def _open_ann(self, verify: bool) -> IVFIndex:
        """The approximate index the manifest lists (large indexes), checked like the rest."""
        from .ann import IVFIndex

        for fname, meta in self.manifest["ann"]["files"].items():
            path = self.path / fname
            if not path.exists() or path.stat().st_size != int(meta["bytes"]):
                raise ToolIndexError(f"tool index {self.path}: {fname} is missing or has the wrong size")
            if verify and file_sha256(path) != meta["sha256"]:
                raise ToolIndexError(f"tool index {self.path}: {fname} does not match its checksum")
        try:
            ann = IVFIndex(self.path)
        except ValueError as exc:
            raise ToolIndexError(f"tool index {self.path}: {exc}") from None
        if len(ann) != self.count or ann.dim != self.dim:
            raise ToolIndexError(f"tool index {self.path}: its ANN index does not match its vectors")
        return ann

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ToolIndex({str(self.path)!r}, count={self.count}, model_id={self.model_id!r})"

    # -- lookups ---------------------------------------------------------------------------

    def tool(self, row: int) -> dict[str, Any]:
        """The tool JSON of ``row``, parsed from the mapped file (nothing kept in memory)."""
        start, end = int(self.tool_offsets[row]), int(self.tool_offsets[row + 1])
        tool: dict[str, Any] = json.loads(self._tools_map[start:end])
        return tool

    def _parse_row(self, row: int) -> tuple[str, dict[str, Any]]:
        raw = self.tool(row)
        return raw["name"], tool_protocol(raw)

    def row_of(self, name: str) -> int:
        key = name.encode("utf-8", "surrogatepass")
        pos = int(np.searchsorted(self.names_sorted, key))
        if pos < self.count and self.names_sorted[pos] == key:
            return int(self.rows_by_name[pos])
        raise UnknownToolError(f"unknown tool {name!r}")

    def name_of(self, row: int) -> str:
        return self._row_info(row)[0]

    def category_of(self, row: int) -> str:
        return self.categories[int(self.category_codes[row])]

    def protocol(self, row: int) -> dict[str, Any]:
        """The MCP protocol of ``row`` (shared with other results: treat it as read-only)."""
        return self._row_info(row)[1]

    def protocols(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """MCP protocols of the named tools; an unknown name is an error naming all of them."""
        rows, unknown = {}, []
        for name in names:
            try:
                rows[name] = self.row_of(name)
            except UnknownToolError:
                unknown.append(name)
        if unknown:
            raise UnknownToolError(f"unknown tool(s): {', '.join(map(repr, unknown))}")
        return {name: self.protocol(row) for name, row in rows.items()}

    # -- search ----------------------------------------------------------------------------

    def search_hits(
        self,
        query: np.ndarray,
        k: int = 5,
        category: str | None = None,
        threshold: float = 0.0,
        exclude_row: int | None = None,
    ) -> Hits:
        """The ``k`` rows closest to ``query`` (a unit vector), best first, compactly."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query vector has {query.shape[0]} dims, the index has {self.dim}")
        if self.ann is not None:
            hits = self._ann_hits(self.ann, query, k, category, threshold, exclude_row)
            if hits is not None:
                return hits
        scores = self.vectors @ query
        eligible = scores >= threshold
        if category is not None:
            if category not in self.categories:
                eligible[:] = False
            else:
                eligible &= self.category_codes == self.categories.index(category)
        if exclude_row is not None:
            eligible[exclude_row] = False
        candidates = np.flatnonzero(eligible)
        if candidates.size > k:
            # keep every candidate at least as good as the k-th best, ties included, so that
            # the tie-break below (by row) also decides which tied rows make the cut
            # (argpartition alone keeps an arbitrary subset of the rows tied at the k-th score)
            kth = np.partition(scores[candidates], candidates.size - k)[candidates.size - k]
            candidates = candidates[scores[candidates] >= kth]
        # best first; ties broken by row so the order is the same in every process
        rows = candidates[np.lexsort((candidates, -scores[candidates]))[:k]]
        field_sims = (
            np.einsum("kfd,d->kf", self.fields[rows], query) if rows.size else np.zeros((0, len(FIELDS)), np.float32)
        )
        return Hits(rows=rows, scores=scores[rows], field_sims=field_sims)

    def _ann_hits(
        self, ann: IVFIndex, query: np.ndarray, k: int, category: str | None, threshold: float, exclude_row: int | None
    ) -> Hits | None:
        """``search_hits`` through the approximate index: exact scores of its candidates, the
        same filters and tie-break; None (search exactly) when fewer than k candidates pass."""
        rows, scores = ann.candidates(query)
        eligible = scores >= threshold
        if category is not None:
            if category not in self.categories:
                return None
            eligible &= np.asarray(self.category_codes)[rows] == self.categories.index(category)
        if exclude_row is not None:
            eligible &= rows != exclude_row
        rows, scores = rows[eligible], scores[eligible]
        if rows.size < k:
            return None
        top = np.argpartition(-scores, k - 1)[:k]
        kth = scores[top].min()  # ties at the k-th score: decided by row, as the exact search does
        tied = np.flatnonzero(scores >= kth)
        order = tied[np.lexsort((rows[tied], -scores[tied]))[:k]]
        rows, scores = rows[order].astype(np.int64), scores[order]
        field_sims = np.einsum("kfd,d->kf", self.fields[rows], query)
        return Hits(rows=rows, scores=scores, field_sims=field_sims)

    def results(self, hits: Hits) -> list[SearchResult]:
        """Full results (name, category, protocol, reason) for compact hits."""
        out = []
        for row, score, sims in zip(hits.rows.tolist(), hits.scores.tolist(), hits.field_sims.tolist(), strict=True):
            weights = self.weights[row]
            present = [(FIELDS[i], sims[i], float(weights[i])) for i in range(len(FIELDS)) if weights[i] > 0]
            present.sort(key=lambda x: -x[1] * x[2])
            positive = [p for p in present if p[1] > 0] or present[:1]
            out.append(
                SearchResult(
                    name=self.name_of(row),
                    score=score,
                    category=self.category_of(row),
                    reason=" + ".join(f"{name} match {sim:.2f}" for name, sim, _ in positive),
                    protocol=self.protocol(row),
                    field_scores={name: sim for name, sim, _ in present},
                )
            )
        return out

    def search_vector(
        self,
        query: np.ndarray,
        k: int = 5,
        category: str | None = None,
        threshold: float = 0.0,
        exclude_row: int | None = None,
    ) -> list[SearchResult]:
        """The ``k`` tools closest to ``query`` (a unit vector), best first."""
        return self.results(self.search_hits(query, k, category, threshold, exclude_row))

    def similar(self, name: str, k: int = 5, same_category_only: bool = False) -> list[SearchResult]:
        """Tools whose combined vectors are closest to tool ``name`` (itself excluded)."""
        row = self.row_of(name)
        category = self.category_of(row) if same_category_only else None
        return self.search_vector(np.array(self.vectors[row]), k=k, category=category, threshold=-1.0, exclude_row=row)
