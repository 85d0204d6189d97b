"""The service's ``Batcher``: every client's cache misses, gathered into model batches.

Requests from every connection (socket, TCP, HTTP) bring their misses here. The batcher
gathers them for up to ``max_wait_ms`` or ``max_batch`` texts, computes each distinct text
once in a model thread (off the event loop), has a writer thread commit the vectors to the
cache, and answers. A text already queued or being computed is awaited, not computed again
(``util/singleflight.py``): single-flight across every process of the machine.

Waiting texts are queued per client and a batch takes from each client in turn
(``fair_queue.py``), so one client's thousands of texts run as many forwards between other
clients' work. A batch is sized to be about one forward: ``max_batch`` texts, and a budget of
estimated tokens (``batch_token_budget``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from .. import settings
from ..embedders import Embedder
from ..errors import CacheError
from ..store import EmbeddingCache
from ..util.singleflight import SingleFlight
from .fair_queue import FairQueue
from .metrics import ServiceMetrics

log = logging.getLogger("embedshare.service")

# On shutdown, batches still at the model get this many seconds to finish and be cached.
SHUTDOWN_BATCH_WAIT = 10.0

# A text's cost is estimated from its length, without tokenizing it on the event loop: about 4
# characters a word piece in English, plus [CLS] and [SEP], up to what the model reads.
CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 512  # a text's tokens when the embedder does not say where it truncates
# Tokens of one batch when the embedder has no budget of its own: 32 texts of 256 tokens, which
# all-MiniLM-L6-v2 computes in about 0.7 s on 2 cores; short texts are bound by max_batch first.
DEFAULT_BATCH_TOKENS = 8192
# With an embedder that cuts its own forwards by a token budget (``max_batch_tokens``), a batch
# is this many of its forwards: enough to keep it busy, small enough to wait for.
FORWARDS_PER_BATCH = 2


def token_estimate(max_tokens: int) -> Callable[[str], int]:
    """A text's estimated tokens, for sizing batches: cheap, monotonic in its length."""

    def cost(text: str) -> int:
        return min(len(text) // CHARS_PER_TOKEN + 2, max_tokens)

    return cost


def batch_token_budget(embedder: object) -> int:
    """Estimated tokens a batch may carry: a few of the embedder's forwards, when it says."""
    per_forward = getattr(embedder, "max_batch_tokens", None)
    if isinstance(per_forward, int) and per_forward > 0:
        return per_forward * FORWARDS_PER_BATCH
    return DEFAULT_BATCH_TOKENS


class ModelAndCache(Protocol):
    """What the batcher computes with and commits to (the engine's ``LocalSource``)."""

    embedder: Embedder
    cache: EmbeddingCache


def _loop_future() -> asyncio.Future[Any]:
    """A future of the running loop: the batcher is built before its loop runs (in tests)."""
    return asyncio.get_running_loop().create_future()


async def _wait_all(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The results of ``futures``, like ``gather``, but cancelling the wait cancels none of them.

    These futures are shared with every other request waiting for the same texts. ``gather``
    cancels its children when it is cancelled, so a client that disconnected (or was killed)
    while it waited cancelled them, and every other waiter of those texts never got an answer
    (it hung until its timeout). ``shield`` around each would cost a future and two callbacks
    more per text; one callback per text is what gather costs too.
    """
    pending = sum(not f.done() for f in futures)
    if pending:
        all_done = asyncio.get_running_loop().create_future()

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal pending
            pending -= 1
            if not pending and not all_done.done():
                all_done.set_result(None)

        waiting = [f for f in futures if not f.done()]
        for future in waiting:
            future.add_done_callback(one_done)
        try:
            await all_done
        finally:
            if pending:  # cancelled: the shared futures carry on without our callback
                for future in waiting:
                    future.remove_done_callback(one_done)
    return [f.result() for f in futures]


class Batcher:
    """Gathers texts from every client and computes each distinct text once.

    The model and the cache writes form a pipeline: while the writer thread commits one batch
    (a durable LMDB commit costs two fsyncs), the model computes the next. Batches that finish
    during a commit are committed together in the next one. A batch is answered once its
    commit lands, so an answer means the vectors are on disk, and until then its texts stay in
    flight: a client asking for one meanwhile waits for that answer instead of a new model call.

    Embedders that wait on the network (``concurrency`` > 1, the API embedder) get that many
    batches at the model at once; a local model gets one, since it already uses every core.
    """

    def __init__(self, source: ModelAndCache, metrics: ServiceMetrics, max_batch: int, max_wait_ms: float) -> None:
        self.source = source
        self.metrics = metrics
        # Checked here too, not only in ServiceConfig: with max_batch < 1 every turn of _run
        # takes no text and the loop spins, deaf to stop and SIGTERM.
        self.max_batch = settings.whole_number("max_batch", max_batch, 1)
        self.max_wait = settings.seconds("max_wait_ms", max_wait_ms, allow_zero=True, unit="milliseconds") / 1000.0
        self.concurrency = max(1, int(getattr(source.embedder, "concurrency", 1)))
        embedder = source.embedder
        max_tokens = getattr(embedder, "max_tokens", None)
        self.max_batch_cost = batch_token_budget(embedder)
        # waiting to be computed, per client
        self._queue = FairQueue(token_estimate(max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS))
        # queued, being computed or committed: each key's future, settled once its commit lands
        self._flights: SingleFlight[asyncio.Future[Any]] = SingleFlight(_loop_future)
        self._to_write: list[tuple[list[bytes], np.ndarray]] = []  # computed, not yet committed
        self._writing: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._batches: set[asyncio.Task[None]] = set()
        self._model_threads = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embedshare-model")
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedshare-cache-writer")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start taking batches (in the loop that will call :meth:`embed`)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def embed(self, keys: list[bytes], texts: list[str], client: Hashable = None) -> np.ndarray:
        """Vectors for (unique) keys that missed the cache, queued as ``client``'s (fairness)."""
        claim = self._flights.claim(keys)
        if claim.mine:
            self._queue.add(client, [keys[p] for p in claim.mine], [texts[p] for p in claim.mine])
        if claim.joined:
            self.metrics.add(joined_inflight=claim.joined)
            mine = set(claim.mine)
            self._queue.also_wanted(client, [key for p, key in enumerate(keys) if p not in mine])
        self.metrics.set_queue_depth(len(self._queue))
        if self._queue:
            self._wakeup.set()
            if self._is_full():
                self._full.set()
        return np.stack(await _wait_all(claim.futures))

    def _is_full(self) -> bool:
        return len(self._queue) >= self.max_batch or self._queue.queued_cost >= self.max_batch_cost

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            model_was_busy = self._slots.locked()
            await self._slots.acquire()  # texts keep gathering while every slot is busy
            # The gathering window lets a batch form while the model is idle; texts that
            # arrived while it was busy already are one, and the model should not idle now.
            if not model_was_busy and not self._is_full() and self.max_wait > 0:
                try:  # gather more texts for a moment, unless the batch fills first
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
                except TimeoutError:
                    pass
            keys, texts = self._queue.take(self.max_batch, self.max_batch_cost)
            if not self._is_full():
                self._full.clear()
            if not self._queue:
                self._wakeup.clear()
            self.metrics.set_queue_depth(len(self._queue))
            if not keys:
                self._slots.release()
                continue
            batch = asyncio.get_running_loop().create_task(self._compute_batch(keys, texts))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    async def _compute_batch(self, keys: list[bytes], texts: list[str]) -> None:
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(self._model_threads, self._embed, texts)
        except Exception as exc:  # the model failed: every waiter gets the error, we go on
            log.error("embedding batch of %d failed: %s", len(keys), exc)
            self._flights.fail(keys, exc)  # logged once above, not again for a waiter that left
            return
        finally:
            self._slots.release()
        self._to_write.append((keys, vectors))
        if self._writing is None:
            self._writing = asyncio.get_running_loop().create_task(self._write_and_answer())

    def _embed(self, texts: list[str]) -> np.ndarray:
        """In a model thread: embed one batch."""
        started = time.perf_counter()
        vectors = self.source.embedder.embed(texts)
        self.metrics.observe_batch(len(texts), time.perf_counter() - started)
        return vectors

    async def _write_and_answer(self) -> None:
        """Commit every computed batch (grouping those that finish during a commit), answer it."""
        loop = asyncio.get_running_loop()
        try:
            while self._to_write:
                pending, self._to_write = self._to_write, []
                keys = [key for batch_keys, _ in pending for key in batch_keys]
                vectors = np.concatenate([batch_vectors for _, batch_vectors in pending])
                try:
                    await loop.run_in_executor(self._writer_thread, self._write, keys, vectors)
                finally:
                    self._flights.settle(keys, vectors)
        finally:
            self._writing = None

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """In the writer thread: one transaction for every batch computed since the last."""
        try:
            self.source.cache.put_many_keys(keys, vectors)
        except CacheError as exc:  # full disk, size limit, I/O error: the vectors are still good
            self.metrics.add(cache_write_failures=1)
            log.warning("cache write failed, serving uncached vectors: %s", exc)

    async def aclose(self) -> None:
        """Stop taking batches, let those under way finish and commit what they computed."""
        if self._task:
            self._task.cancel()
        if self._batches:  # a batch stuck on a dead API is not worth a hung shutdown
            await asyncio.wait(set(self._batches), timeout=SHUTDOWN_BATCH_WAIT)
        if self._writing is not None:
            await asyncio.shield(self._writing)
        self._model_threads.shutdown(wait=False, cancel_futures=True)
        self._writer_thread.shutdown(wait=True)
