"""The service's Batcher in one process: the model/commit pipeline, answers only after the
commit, and concurrent batches for network-bound embedders.

The fakes block on each other (barriers and events with a deadline), so a Batcher that ran
these steps one after the other would fail the test by deadlock, not by a timing threshold.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from embedshare.embedders import create_embedder
from embedshare.service.batcher import Batcher
from embedshare.service.metrics import ServiceMetrics
from embedshare.store import CacheError

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0  # seconds a fake waits for the other side before failing the test
HASH = create_embedder("hash:32")


class RecordingCache:
    """Records commits; ``before_commit`` runs inside each ``put_many_keys`` first."""

    def __init__(self, before_commit=None, fail: bool = False) -> None:
        self.before_commit = before_commit
        self.fail = fail
        self.commits: list[list[bytes]] = []

    def put_many_keys(self, keys, vectors) -> int:
        if self.before_commit:
            self.before_commit()
        if self.fail:
            raise CacheError("disk full (a test's cache)")
        self.commits.append(list(keys))
        return len(keys)


def _batcher(embedder, cache, max_batch: int = 4) -> Batcher:
    # max_wait 0: a batch is whatever is queued when the model is free
    return Batcher(SimpleNamespace(embedder=embedder, cache=cache), ServiceMetrics(), max_batch, 0.0)


def _run(batcher: Batcher, body):
    async def main():
        batcher.start()
        try:
            return await body()
        finally:
            await batcher.aclose()

    return asyncio.run(main())


def test_the_model_computes_the_next_batch_while_the_previous_one_commits(wait_for, recording_embedder):
    second_batch_started = threading.Event()

    def hold_the_first_commit() -> None:  # until the model has started on the second batch
        if not cache.commits:
            wait_for(second_batch_started.is_set, DEADLINE, "the second batch")

    cache = RecordingCache(before_commit=hold_the_first_commit)
    embedder = recording_embedder(
        HASH.dim, before_embed=lambda n, texts: second_batch_started.set() if n == 2 else None
    )
    batcher = _batcher(embedder, cache, max_batch=2)
    texts = [f"text {i}" for i in range(4)]

    async def body():
        first = asyncio.ensure_future(batcher.embed([t.encode() for t in texts[:2]], texts[:2]))
        await asyncio.sleep(0)  # let the first batch be taken alone
        second = asyncio.ensure_future(batcher.embed([t.encode() for t in texts[2:]], texts[2:]))
        return await asyncio.gather(first, second)

    first, second = _run(batcher, body)
    assert embedder.calls == [texts[:2], texts[2:]]
    assert np.array_equal(np.concatenate([first, second]), HASH.embed(texts))
    assert [sorted(c) for c in cache.commits] == [
        sorted(t.encode() for t in texts[:2]),
        sorted(t.encode() for t in texts[2:]),
    ]


def test_an_answer_comes_only_after_its_commit_and_a_repeat_joins_it(wait_for, recording_embedder):
    in_commit, commit_may_finish = threading.Event(), threading.Event()

    def hold_the_commit() -> None:
        in_commit.set()
        wait_for(commit_may_finish.is_set, DEADLINE, "the test to let the commit finish")

    embedder = recording_embedder(HASH.dim)
    cache = RecordingCache(before_commit=hold_the_commit)
    batcher = _batcher(embedder, cache)

    async def body():
        loop = asyncio.get_running_loop()
        asked = asyncio.ensure_future(batcher.embed([b"k"], ["a text"]))
        await loop.run_in_executor(None, wait_for, in_commit.is_set, DEADLINE, "the commit")  # computed, committing
        assert not asked.done(), "answered before its vectors were committed"
        again = asyncio.ensure_future(batcher.embed([b"k"], ["a text"]))  # asked again meanwhile
        await asyncio.sleep(0)  # let it join (or, wrongly, queue a new model call)
        commit_may_finish.set()
        return await asked, await again

    first, again = _run(batcher, body)
    assert len(embedder.calls) == 1, "the repeat was computed again"
    assert cache.commits == [[b"k"]]
    assert np.array_equal(first, again)
    assert batcher.metrics.snapshot()["joined_inflight"] == 1


def test_batches_of_a_network_bound_embedder_run_concurrently(recording_embedder):
    together = threading.Barrier(3, timeout=DEADLINE)  # three calls must be in flight at once
    embedder = recording_embedder(
        HASH.dim, concurrency=3, before_embed=lambda n, texts: together.wait() if n <= 3 else None
    )
    cache = RecordingCache()
    batcher = _batcher(embedder, cache, max_batch=1)
    texts = [f"api text {i}" for i in range(3)]

    async def body():
        return await asyncio.gather(*(batcher.embed([t.encode()], [t]) for t in texts))

    results = _run(batcher, body)
    assert sorted(map(tuple, embedder.calls)) == [(t,) for t in texts]
    assert np.array_equal(np.concatenate(results), HASH.embed(texts))
    assert sum(len(c) for c in cache.commits) == 3


def test_a_failed_commit_still_answers_with_the_vectors_and_is_counted(recording_embedder):
    batcher = _batcher(recording_embedder(HASH.dim), RecordingCache(fail=True))

    async def body():
        return await batcher.embed([b"k"], ["served uncached"])

    vectors = _run(batcher, body)
    assert np.array_equal(vectors, HASH.embed(["served uncached"]))
    assert batcher.metrics.snapshot()["cache_write_failures"] == 1
