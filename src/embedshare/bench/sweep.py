"""Search latency against index size: exact, and two memory-mappable ANN indexes.

For each size (1k .. 1M synthetic tools, 384 dims) only the arrays a search needs are built:
the unit vectors (written to ``vectors.npy`` and opened with ``mmap_mode="r"``, as
``ToolIndex`` does), the IVF files of ``store/ann.py``, and a usearch HNSW index saved and
re-opened with ``view=True`` (memory-mapped). Nothing is embedded.

The vectors are random unit vectors with the structure of a tool registry: random topics
(2,500 tools each), groups of 50 similar tools around each topic, tools around their group;
a query is a tool's vector plus noise (cosine ~0.65 to it). Uniformly random vectors would be
a useless test: in 384 dimensions they are all nearly orthogonal (cosines 0 +- 0.05), so a
query has no near neighbours and "the top 5" is noise for any index. (Flat groups with no
topics are hard for IVF in another way: its lists cut the groups apart, and recall drops.)

Searches are timed with one BLAS thread (as each worker of a full pool should run).
Measured per size: the latency of single searches (p50/p99), recall@5 of each ANN index
against the exact top 5, build seconds and bytes on disk.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..util.install import pip_install

DIM = 384
K = 5
TOOLS_PER_TOPIC = 2500  # like a registry's categories ...
TOOLS_PER_GROUP = 50  # ... and the tools that do nearly the same thing
GROUP_NOISE = 0.052  # per dimension: cosine ~0.7 between a group and its topic
NOISE = 0.06  # per dimension: cosine ~0.65 between a tool and its group, and a query and its tool


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_vectors(n: int, path: Path, seed: int = 0, chunk: int = 1 << 16) -> np.ndarray:
    """``n`` unit vectors in topics, groups and tools, written to ``path`` (a .npy) and
    returned memory-mapped. Generated chunk by chunk: 1M tools never sit in memory twice."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((max(1, n // TOOLS_PER_TOPIC), DIM), dtype=np.float32))
    groups_n = max(1, n // TOOLS_PER_GROUP)
    groups = _unit(
        topics[rng.integers(0, len(topics), groups_n)]
        + GROUP_NOISE * rng.standard_normal((groups_n, DIM), dtype=np.float32)
    )
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        out[start : start + m] = _unit(
            groups[rng.integers(0, len(groups), m)] + NOISE * rng.standard_normal((m, DIM), dtype=np.float32)
        )
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def queries_near(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), size=count, replace=False))
    return _unit(np.asarray(vectors[rows]) + NOISE * rng.standard_normal((count, DIM), dtype=np.float32))


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int = K) -> np.ndarray:
    """What ``ToolIndex.search_hits`` does: one matrix-vector product, then the top k."""
    scores = vectors @ query
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.lexsort((top, -scores[top]))]


def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 1 << 17) -> np.ndarray:
    """The exact top k of many queries at once (batched; for recall, not timed)."""
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        scores = queries @ np.asarray(vectors[start : start + chunk]).T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, 1)
        best_rows = np.take_along_axis(all_rows, keep, 1)
    return best_rows


def _timed(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Time single searches with one BLAS thread, as in a worker of a pool that fills the
    machine (with a BLAS thread per core, each product waits for busy cores: on 2 loaded cores
    a 10k-row product took 10x longer)."""
    from threadpoolctl import threadpool_limits

    found, seconds = [], []
    with threadpool_limits(limits=1):
        for q in queries:
            started = time.perf_counter()
            found.append(np.asarray(search(q)))
            seconds.append(time.perf_counter() - started)
    return found, seconds


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def _latency(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def run_sweep(
    sizes: list[int],
    queries: int = 200,
    usearch_max: int = 100_000,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every size; usearch only up to ``usearch_max`` tools (its build time grows
    fastest: it is reported for the sizes it ran at)."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="embedshare-sweep-"))
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            folder = root / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            rows.append(_measure_size(n, queries, usearch_max, folder))
            log(_sweep_line(rows[-1]))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "rows": rows,
        "k": K,
        "queries": queries,
        "usearch_max": usearch_max,
        "data": f"random unit vectors in topics of {TOOLS_PER_TOPIC} tools and groups of "
        f"{TOOLS_PER_GROUP}; queries: a tool's vector plus noise (cosine ~0.65)",
    }


def _measure_size(n: int, queries: int, usearch_max: int, folder: Path) -> dict[str, Any]:
    """One size: generate the vectors, time exact search, IVF and (up to ``usearch_max``) HNSW."""
    started = time.perf_counter()
    vectors = synthetic_vectors(n, folder / "vectors.npy")
    generate_s = time.perf_counter() - started
    count = min(queries, n)
    qs = queries_near(vectors, count)
    truth = exact_truth(vectors, qs)
    # exact: a matrix-vector product per query over the memory map; at 1M each one
    # reads 1.5 GB, so fewer queries are timed there
    timed = qs[: max(20, count // max(1, n // 100_000))]

    def exact(q: np.ndarray, v: np.ndarray = vectors) -> np.ndarray:
        return exact_top(v, q)

    _, exact_s = _timed(exact, timed)
    row: dict[str, Any] = {
        "tools": n,
        "dim": DIM,
        "queries": count,
        "generate_s": generate_s,
        "exact": {**_latency(exact_s), "queries_timed": len(timed), "bytes": _bytes([folder / "vectors.npy"])},
        "ivf": _ivf(vectors, qs, truth, folder / "ivf"),
    }
    if n <= usearch_max:
        row["usearch"] = _usearch(vectors, qs, truth, folder / "hnsw.usearch")
    else:
        row["usearch"] = {"skipped": f"built only up to {usearch_max:,} tools (see build_s there)"}
    return row


def _ivf(vectors: np.ndarray, qs: np.ndarray, truth: np.ndarray, folder: Path) -> dict[str, Any]:
    from ..store.ann import IVFIndex, build_ivf

    started = time.perf_counter()
    build_ivf(vectors, folder)
    build = time.perf_counter() - started
    ivf = IVFIndex(folder)

    def ivf_top(q: np.ndarray, index: IVFIndex = ivf) -> np.ndarray:
        return index.search(q, K)[0]

    found, seconds = _timed(ivf_top, qs)
    files = ("ann_centroids.npy", "ann_offsets.npy", "ann_rows.npy", "ann_vectors.npy")
    return {
        **_latency(seconds),
        "recall_at_5": _recall(found, truth),
        "build_s": build,
        "nlist": ivf.nlist,
        "nprobe": ivf.nprobe,
        "bytes": _bytes([folder / f for f in files]),
    }


def _sweep_line(row: dict[str, Any]) -> str:
    line = (
        f"sweep {row['tools']:>9,} tools: exact p50 {row['exact']['p50_ms']:.3f} ms, "
        f"ivf p50 {row['ivf']['p50_ms']:.3f} ms recall {row['ivf']['recall_at_5']:.3f}"
    )
    if "p50_ms" in row["usearch"]:
        line += f", usearch p50 {row['usearch']['p50_ms']:.3f} ms recall {row['usearch']['recall_at_5']:.3f}"
    return line


def _usearch(vectors: np.ndarray, qs: np.ndarray, truth: np.ndarray, path: Path) -> dict[str, Any]:
    try:
        from usearch.index import Index
    except ImportError:
        return {"skipped": f"usearch is not installed ({pip_install('bench')})"}
    n = len(vectors)
    started = time.perf_counter()
    index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=16, expansion_add=64, expansion_search=64)
    for start in range(0, n, 1 << 16):
        chunk = np.asarray(vectors[start : start + (1 << 16)])
        index.add(np.arange(start, start + len(chunk)), chunk, threads=0)
    index.save(str(path))
    build = time.perf_counter() - started
    del index
    view = Index.restore(str(path), view=True)  # memory-mapped, shared by every process
    if view is None:
        raise RuntimeError(f"usearch could not open the index it saved in {path}")
    found, seconds = _timed(lambda q: view.search(q, K).keys, qs)
    return {
        **_latency(seconds),
        "recall_at_5": _recall(found, truth),
        "build_s": build,
        "bytes": path.stat().st_size,
        "connectivity": 16,
        "expansion_add": 64,
        "expansion_search": 64,
    }
