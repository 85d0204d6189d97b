"""Child-process entry points for test_cache.py.

They live in their own module so that spawned processes can import them by name.
"""

from __future__ import annotations

import hashlib
import random
import traceback

from embedshare.embedders import create_embedder
from embedshare.store import EmbeddingCache


def concurrent_worker(index, cache_path, universe, barrier, results) -> None:
    """Read and write overlapping keys; report every vector that differs from the embedder's."""
    try:
        embedder = create_embedder("hash:64")
        cache = EmbeddingCache(cache_path, embedder.model_id, embedder.dim, map_size=1 << 16)
        rng = random.Random(index)
        mine = universe[index * 40 : index * 40 + 160]
        rng.shuffle(mine)
        expected = dict(zip(mine, embedder.embed(mine), strict=True))
        problems: list[str] = []
        hits = misses = 0
        barrier.wait(timeout=60)
        for start in range(0, len(mine), 8):
            batch = mine[start : start + 8]
            vectors, found = cache.get_many(batch)
            for text, vec, ok in zip(batch, vectors, found, strict=True):
                if ok and vec.tobytes() != expected[text].tobytes():
                    problems.append(f"read a wrong vector for {text!r} before writing")
            hits += int(found.sum())
            missing = [t for t, ok in zip(batch, found, strict=True) if not ok]
            misses += len(missing)
            if missing:
                cache.put_many(missing, embedder.embed(missing))
            vectors, found = cache.get_many(batch)
            if not found.all():
                problems.append(f"not found after writing: {[t for t, ok in zip(batch, found, strict=True) if not ok]}")
            for text, vec in zip(batch, vectors, strict=True):
                if vec.tobytes() != expected[text].tobytes():
                    problems.append(f"read back a wrong vector for {text!r}")
        results.put((index, problems, hits, misses))
    except BaseException:
        results.put((index, [traceback.format_exc()], 0, 0))


def killed_writer(cache_path, texts_per_batch, batches, conn) -> None:
    """Write batches forever (round-robin over ``batches``), one byte to ``conn`` per commit."""
    embedder = create_embedder("hash:64")
    cache = EmbeddingCache(cache_path, embedder.model_id, embedder.dim, map_size=1 << 16)
    vectors = [embedder.embed(texts) for texts in batches]
    i = 0
    while True:
        cache.put_many(batches[i % len(batches)], vectors[i % len(batches)])
        conn.send_bytes(b"c")
        i += 1


def late_reader(cache_path, model_id, dim, texts, ready, go, results) -> None:
    """Open the cache (small map) before another process grows it, read after it grew."""
    try:
        cache = EmbeddingCache(cache_path, model_id, dim, readonly=True, map_size=1 << 16)
        before = cache.count()
        ready.set()
        if not go.wait(timeout=60):
            results.put(("error", "timed out waiting for the writer"))
            return
        vectors, found = cache.get_many(texts)
        results.put(("ok", before, int(found.sum()), hashlib.sha256(vectors.tobytes()).hexdigest(), cache.count()))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def growing_writer(cache_path, stop) -> None:
    """Commit new vectors into a small, non-durable map (so it grows fast) until ``stop``."""
    embedder = create_embedder("hash:64")
    cache = EmbeddingCache(cache_path, embedder.model_id, embedder.dim, map_size=1 << 16, durable=False)
    batch = 0
    while not stop.is_set():
        texts = [f"growing {batch} {i}" for i in range(200)]
        cache.put_many(texts, embedder.embed(texts))
        batch += 1


def repeated_opener(cache_path, opens, results) -> None:
    """Open and close the cache ``opens`` times; report the errors of the opens that failed."""
    embedder = create_embedder("hash:64")
    failures: list[str] = []
    for _ in range(opens):
        try:
            EmbeddingCache(cache_path, embedder.model_id, embedder.dim, map_size=1 << 16).close()
        except Exception as exc:
            failures.append(repr(exc))
    results.put((failures, opens))
