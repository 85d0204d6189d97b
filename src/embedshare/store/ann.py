"""An approximate index for large tool indexes: IVF-flat in memory-mapped ``.npy`` files.

Exact search is one matrix-vector product over every tool: ~0.1 ms for 10k tools, but it
reads the whole matrix per query (1.5 GB at 1M tools of 384 dims). Past ~100k tools this
index takes over behind the same ``ToolIndex.search_hits`` call (see ``ToolIndex.attach_ann``).

How it works (an inverted file, as in FAISS's IVF-Flat, kept to what numpy does well):

- ``nlist`` centroids (spherical k-means on a sample of the vectors, seeded, so a rebuild
  gives the same index);
- every vector is assigned to its closest centroid; the vectors are stored again, grouped by
  list, so that probing a list is one contiguous matrix-vector product;
- a query scores the centroids, probes the ``nprobe`` best lists, and ranks what it found
  with exact inner products (scores are exact; only the candidate set is approximate).

Files, next to the index's own (all opened with ``np.load(mmap_mode="r")``, so every process
shares the same physical pages and nothing grows per process):

    ann_centroids.npy   (nlist, dim) float32
    ann_offsets.npy     (nlist + 1,) int64    list l holds positions offsets[l]:offsets[l+1]
    ann_rows.npy        (n,) int64            the index row of each position
    ann_vectors.npy     (n, dim) float32      the vectors in list order

Chosen over an HNSW graph (usearch, FAISS HNSW) because it builds in about the time of one
pass of matrix products (an HNSW graph of 1M vectors takes tens of minutes on 2 cores), its
files are plain arrays like the rest of the index, and filtered searches stay simple.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ANN_FILES = ("ann_centroids.npy", "ann_offsets.npy", "ann_rows.npy", "ann_vectors.npy")
_CHUNK = 1 << 15  # rows per matrix product while building


def default_nlist(n: int) -> int:
    """About sqrt(n) lists: 1,000 lists of ~1,000 vectors at 1M."""
    return max(1, min(n, round(math.sqrt(n))))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: 1/16 of them, at least 8 (or all, for few lists)."""
    return min(nlist, max(8, nlist // 16))


def _assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), _CHUNK):
        chunk = np.asarray(vectors[start : start + _CHUNK], dtype=np.float32)
        out[start : start + len(chunk)] = np.argmax(chunk @ centroids.T, axis=1)
    return out


def train_centroids(
    vectors: np.ndarray, nlist: int, *, iterations: int = 8, sample_per_list: int = 40, seed: int = 0
) -> np.ndarray:
    """Spherical k-means on a seeded sample of ``vectors``: ``(nlist, dim)`` unit rows."""
    n = len(vectors)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be between 1 and the number of vectors ({n}), got {nlist}")
    rng = np.random.default_rng(seed)
    size = min(n, nlist * sample_per_list)
    picked = np.sort(rng.choice(n, size=size, replace=False))
    sample = np.asarray(vectors[picked], dtype=np.float32)
    centroids = sample[rng.choice(size, size=nlist, replace=False)].copy()
    for _ in range(iterations):
        assign = _assign(sample, centroids)
        sums = np.zeros_like(centroids)
        _sum_by_label(sample, assign, sums)
        norms = np.linalg.norm(sums, axis=1)
        filled = norms > 0  # an empty list keeps its centroid
        centroids[filled] = sums[filled] / norms[filled, None]
    return centroids


def _sum_by_label(sample: np.ndarray, labels: np.ndarray, sums: np.ndarray) -> None:
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums[sorted_labels[starts]] = np.add.reduceat(sample[order], starts, axis=0)


def build_ivf(
    vectors: np.ndarray, destination: str | Path, nlist: int | None = None, *, iterations: int = 8, seed: int = 0
) -> Path:
    """Write the IVF files for ``vectors`` (unit rows, float32, may be a memory map)."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("cannot build an ANN index of no vectors")
    nlist = nlist or default_nlist(n)
    centroids = train_centroids(vectors, nlist, iterations=iterations, seed=seed)
    assign = _assign(vectors, centroids)
    order = np.argsort(assign, kind="stable")
    offsets = np.searchsorted(assign[order], np.arange(nlist + 1), side="left").astype(np.int64)
    grouped = np.lib.format.open_memmap(destination / "ann_vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, _CHUNK):
        rows = order[start : start + _CHUNK]
        # gather in row order (sequential reads of a memory map), then scatter back
        sorted_rows = np.sort(rows)
        gathered = np.asarray(vectors[sorted_rows], dtype=np.float32)
        grouped[start : start + len(rows)] = gathered[np.searchsorted(sorted_rows, rows)]
    grouped.flush()
    del grouped
    np.save(destination / "ann_centroids.npy", centroids.astype(np.float32))
    np.save(destination / "ann_offsets.npy", offsets)
    np.save(destination / "ann_rows.npy", order.astype(np.int64))
    return destination


class IVFIndex:
    """A read-only IVF-flat index over memory-mapped files. Thread-safe."""

    def __init__(self, path: str | Path, nprobe: int | None = None) -> None:
        self.path = Path(path)
        try:
            self.centroids = np.load(self.path / "ann_centroids.npy", mmap_mode="r")
            self.offsets = np.load(self.path / "ann_offsets.npy", mmap_mode="r")
            self.rows = np.load(self.path / "ann_rows.npy", mmap_mode="r")
            self.vectors = np.load(self.path / "ann_vectors.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"no usable ANN index at {self.path}: {exc}") from None
        self.nlist, self.dim = self.centroids.shape
        if (
            self.offsets.shape != (self.nlist + 1,)
            or len(self.rows) != len(self.vectors)
            or int(self.offsets[-1]) != len(self.rows)
        ):
            raise ValueError(f"ANN index at {self.path} is inconsistent")
        self.nprobe = nprobe or default_nprobe(self.nlist)

    def __len__(self) -> int:
        return len(self.rows)

    def candidates(self, query: np.ndarray, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and exact scores of every vector in the ``nprobe`` lists closest to ``query``."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        probe = min(self.nlist, nprobe or self.nprobe)
        centroid_scores = self.centroids @ query
        lists = np.argpartition(-centroid_scores, probe - 1)[:probe] if probe < self.nlist else np.arange(self.nlist)
        rows, scores = [], []
        for cell in np.sort(lists):  # in file order: sequential reads
            start, end = int(self.offsets[cell]), int(self.offsets[cell + 1])
            if end > start:
                scores.append(self.vectors[start:end] @ query)
                rows.append(self.rows[start:end])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(rows), np.concatenate(scores)

    def search(self, query: np.ndarray, k: int = 5, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows found (best first, ties by row) and their exact scores."""
        rows, scores = self.candidates(query, nprobe)
        if rows.size > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[keep], scores[keep]
        order = np.lexsort((rows, -scores))
        return rows[order], scores[order]
