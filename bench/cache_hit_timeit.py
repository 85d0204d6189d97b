"""The cache-hit hot path, ``EmbeddingCache.get_one``, timed alone (p50/p90 of many calls).

Used to check what the per-vector checksum costs a hit: run it on a checkout before and after
a change to the cache's value format, on the same machine, in the same minute.

    PYTHONPATH=src python bench/cache_hit_timeit.py [--dim 384] [--calls 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from embedshare.store.cache import EmbeddingCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder, "timeit:v1", args.dim)
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.keys, args.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        keys = [cache.key(f"text {i}") for i in range(args.keys)]
        cache.put_many_keys(keys, vectors)
        get_one, clock = cache.get_one, time.perf_counter_ns
        for key in keys:  # warm up
            assert get_one(key) is not None
        samples = np.empty(args.calls, dtype=np.int64)
        for i in range(args.calls):
            key = keys[i % args.keys]
            started = clock()
            get_one(key)
            samples[i] = clock() - started
        cache.close()
    p50, p90, p99 = np.percentile(samples, [50, 90, 99]) / 1000
    print(f"get_one dim={args.dim} calls={args.calls}: p50 {p50:.2f} us  p90 {p90:.2f} us  p99 {p99:.2f} us")


if __name__ == "__main__":
    main()
