"""Fair scheduling in the service's Batcher (issue 20): a huge request from one client runs as
many forwards, and another client's small request is in the next forward the model takes.

The model is a recording embedder that blocks before each forward until the test lets it go
(a condition with a deadline), so what is asserted is which forward carried a text, never
how many seconds something took.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from test_batcher import _run as run_batcher  # start the batcher, run the body, close it

from embedshare.embedders import create_embedder
from embedshare.service.batcher import CHARS_PER_TOKEN, FORWARDS_PER_BATCH, Batcher
from embedshare.service.fair_queue import FairQueue
from embedshare.service.metrics import ServiceMetrics

pytestmark = pytest.mark.timeout(120)

DEADLINE = 30.0
HASH = create_embedder("hash:32")


class Cache:
    """Records every key committed (``keys``: what a lookup would find)."""

    def __init__(self) -> None:
        self.committed: list[bytes] = []
        self.keys: set[bytes] = set()

    def put_many_keys(self, keys, vectors) -> int:
        self.committed.extend(keys)
        self.keys.update(keys)
        return len(keys)


class Forwards:
    """Lets the model run forward n only once the test has allowed n forwards."""

    def __init__(self) -> None:
        self.allowed = 0
        self.started = 0
        self._changed = threading.Condition()

    def before_embed(self, n: int, texts: list[str]) -> None:
        with self._changed:
            self.started = n
            self._changed.notify_all()
            if not self._changed.wait_for(lambda: self.allowed >= n, DEADLINE):
                raise TimeoutError(f"forward {n} was never let go")

    def allow(self, n: int) -> None:
        with self._changed:
            self.allowed = max(self.allowed, n)
            self._changed.notify_all()

    def wait_started(self, n: int) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.started >= n, DEADLINE):
                raise TimeoutError(f"forward {n} never started (at {self.started})")


def _batcher(embedder, cache, max_batch: int = 64) -> Batcher:
    return Batcher(SimpleNamespace(embedder=embedder, cache=cache), ServiceMetrics(), max_batch, 0.0)


def _keys(texts: list[str]) -> list[bytes]:
    return [t.encode() for t in texts]


def _of_the_first_16_characters(texts: list[str]) -> np.ndarray:
    return HASH.embed([t[:16] for t in texts])


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_a_one_text_miss_goes_in_the_next_forward_while_another_client_sends_2048_long_texts(recording_embedder):
    forwards = Forwards()
    embedder = recording_embedder(HASH.dim, before_embed=forwards.before_embed)
    embedder.max_tokens = 256  # where it truncates: an 8,192-character text costs 256 tokens
    embedder.max_batch_tokens = 2048  # its own forward's budget; a batch is a few of those
    embedder.model = SimpleNamespace(embed=_of_the_first_16_characters)  # hashing 16 MB takes a minute
    cache = Cache()
    batcher = _batcher(embedder, cache)
    long_texts = [f"{i:05d} " + "word " * 1637 for i in range(2048)]  # 8,191 characters each
    small = ["is the small client's one text answered soon"]

    async def body():
        big = asyncio.ensure_future(batcher.embed(_keys(long_texts), long_texts, client=("pid", 1)))
        await _in_thread(forwards.wait_started, 1)  # the big client's first forward is at the model
        little = asyncio.ensure_future(batcher.embed(_keys(small), small, client=("pid", 2)))
        await asyncio.sleep(0)  # queued
        forwards.allow(2)  # the first forward, and the next one taken
        await _in_thread(forwards.wait_started, 3)  # the third is held
        await asyncio.wait_for(asyncio.shield(little), DEADLINE)  # answered while forward 3 waits
        assert not big.done()
        forwards.allow(10**6)
        return await big, await little

    big, little = run_batcher(batcher, body)
    assert small[0] in embedder.calls[1], "the small request waited for more than one forward"
    assert np.array_equal(little, _of_the_first_16_characters(small))
    assert np.array_equal(big, _of_the_first_16_characters(long_texts))
    budget = embedder.max_batch_tokens * FORWARDS_PER_BATCH
    assert all(sum(min(len(t) // CHARS_PER_TOKEN + 2, 256) for t in call) <= budget for call in embedder.calls)
    assert len(embedder.calls) >= 2048 * 256 // budget  # many forwards, not one
    assert Counter(embedder.embedded) == Counter(long_texts + small)


def test_a_text_joined_while_it_waits_in_another_clients_backlog_is_not_stuck_behind_it(recording_embedder):
    forwards = Forwards()
    embedder = recording_embedder(HASH.dim, before_embed=forwards.before_embed)
    batcher = _batcher(embedder, Cache(), max_batch=4)
    backlog = [f"backlog text {i}" for i in range(100)]

    async def body():
        first = asyncio.ensure_future(batcher.embed(_keys(backlog), backlog, client=("pid", 1)))
        await _in_thread(forwards.wait_started, 1)
        # another client wants the backlog's last text: it joins, and it is next in line
        joined = asyncio.ensure_future(batcher.embed(_keys(backlog[-1:]), backlog[-1:], client=("pid", 2)))
        await asyncio.sleep(0)
        forwards.allow(10**6)
        return await first, await joined

    first, joined = run_batcher(batcher, body)
    assert backlog[-1] in embedder.calls[1]
    assert embedder.embedded[backlog[-1]] == 1, "the joined text was computed twice"
    assert np.array_equal(joined[0], first[-1])


def test_nothing_is_lost_or_computed_twice_when_many_clients_interleave(recording_embedder):
    """Clients send overlapping requests (repeats, joins of texts queued by others, long and
    short texts) while the model runs: every answer is right and each text is computed once."""
    embedder = recording_embedder(HASH.dim)
    embedder.max_tokens = 256
    cache = Cache()
    batcher = _batcher(embedder, cache, max_batch=8)
    rng = random.Random(20)
    pool = [f"shared {i} " + "x" * rng.choice([5, 50, 2000]) for i in range(300)]

    async def client(n: int) -> None:
        for _ in range(25):
            wanted = rng.sample(pool, rng.choice([1, 3, 16, 40]))
            texts = [t for t in wanted if t.encode() not in cache.keys]  # the engine's cache lookup
            if texts:
                got = await batcher.embed(_keys(texts), texts, client=("pid", n % 7))
                assert np.array_equal(got, HASH.embed(texts))
            await asyncio.sleep(0)

    async def body():
        await asyncio.gather(*(client(n) for n in range(12)))

    run_batcher(batcher, body)
    embedded = embedder.embedded
    assert max(embedded.values()) == 1, "a text was computed twice"
    assert Counter(cache.committed) == Counter(t.encode() for t in embedded)
    assert batcher.metrics.snapshot()["joined_inflight"] > 0  # joins happened, and were answered
    assert len(batcher._queue) == 0 and batcher._queue.queued_cost == 0


def _fair_queue_of(backlogs: dict[str, int]) -> FairQueue:
    queue = FairQueue(lambda text: 256)  # every text a long one: 256 tokens
    for client, count in backlogs.items():
        texts = [f"{client} {i}" for i in range(count)]
        queue.add(client, _keys(texts), texts)
    return queue


def test_the_batch_carrying_a_small_request_holds_one_turn_of_the_huge_backlog_not_a_full_batch():
    queue = _fair_queue_of({"huge": 2048, "small": 1})
    _, texts = queue.take(64, 4096)  # a turn: 16 texts or 1,024 tokens, so 4 long texts
    assert "small 0" in texts
    assert len(texts) == 1 + 4, "the huge client filled the small request's batch with more turns"
    _, texts = queue.take(64, 4096)  # the huge client alone again: whole batches
    assert len(texts) == 16


def test_bulk_clients_alone_still_get_whole_batches():
    queue = _fair_queue_of({"bulk a": 500, "bulk b": 500})
    for _ in range(10):
        _, texts = queue.take(64, 4096)
        assert len(texts) == 16  # 4 turns of 4 long texts: the whole token budget
        assert {t.split()[1] for t in texts} == {"a", "b"}  # both, in turn


def test_what_is_left_after_a_round_is_taken_when_all_of_it_fits_in_the_batch():
    queue = _fair_queue_of({"first": 2, "second": 1, "third": 1})  # turns of 1 text at max_batch 4
    _, texts = queue.take(4, 4096)
    assert len(texts) == 4, "a batch that could hold every waiting text left one for another forward"
