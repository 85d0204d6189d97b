"""The batcher's waiting texts, one queue per client, taken in turn (fair scheduling, issue 20).

With one queue in arrival order, one request of 2,048 long texts held the model for 48.6 s and
a one-text miss from another client waited 48.3 s behind it. Here every client (a worker
process, a TCP or HTTP connection: the engine says who) has its own queue, and a batch is
filled by taking *turns*: each client with texts waiting gives at most a quarter of a batch
(by count and by estimated tokens), then the next client gives its share. A client alone gets
whole batches; a huge request becomes many batches, and a small request from anyone else is
in the next batch the model takes, so it waits about one forward.

A turn is a quarter of a batch rather than one text so that a request of 16 texts (at a
``max_batch`` of 64) is still answered by one batch, not trickled through several.

A batch goes round again only while every client served has more waiting (backlogs only: a
client alone, or two bulk clients, still get whole batches), or when all that waits fits in
it. Once a round has answered someone whole and a backlog would be left, the batch ends: the
huge client does not fill what the small requests left with more turns of its own, so the
forward that carries a small request is short, and that request waits about the forward
under way plus a short one of its own. Filling it made that forward a whole batch: a one-text
miss waited 2.2 mean forwards at p99 (bench/README.md, issue 20).

A text another client asks for while it waits (single-flight: it joins, it does not queue a
second computation) is also put in that client's queue, so it cannot wait behind the first
asker's backlog. Whichever queue reaches it first takes it; the other finds it gone and skips.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence

TURNS_PER_BATCH = 4  # a client's turn: at most this fraction of a batch's texts and tokens


class FairQueue:
    """Keys waiting to be computed, with their texts, queued per client; see the module doc."""

    def __init__(self, cost: Callable[[str], int]) -> None:
        self._cost = cost  # a text's estimated share of a forward (tokens)
        self._waiting: dict[bytes, tuple[str, int]] = {}  # every key waiting, once: its text and cost
        self._clients: OrderedDict[Hashable, deque[bytes]] = OrderedDict()  # in turn order
        self.queued_cost = 0  # estimated tokens of every text waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, client: Hashable, keys: Sequence[bytes], texts: Sequence[str]) -> None:
        """Queue keys nobody has queued yet (the caller's single-flight claim), in order."""
        queue = self._queue_of(client)
        for key, text in zip(keys, texts, strict=True):
            cost = self._cost(text)
            self._waiting[key] = (text, cost)
            self.queued_cost += cost
            queue.append(key)

    def also_wanted(self, client: Hashable, keys: Sequence[bytes]) -> None:
        """``client`` waits for these keys too: those still waiting join its queue as well."""
        waiting = [key for key in keys if key in self._waiting]
        if waiting:
            self._queue_of(client).extend(waiting)

    def take(self, max_texts: int, max_cost: int) -> tuple[list[bytes], list[str]]:
        """One batch: a turn of each client in order, until ``max_texts`` or ``max_cost``.

        The first text is always taken, even when it alone costs more than ``max_cost``.
        """
        turn_texts = max(1, max_texts // TURNS_PER_BATCH)
        turn_cost = max(1, max_cost // TURNS_PER_BATCH)
        keys: list[bytes] = []
        texts: list[str] = []
        cost = 0
        full = False
        round_left = len(self._clients)  # turns left in this round
        someone_answered = False  # a client's queue emptied in this round: no next round for a backlog
        while self._clients and not full:
            if not round_left:
                everything_fits = len(keys) + len(self._waiting) <= max_texts and self.queued_cost <= max_cost
                if someone_answered and not everything_fits:
                    break
                round_left = len(self._clients)
            round_left -= 1
            client, queue = next(iter(self._clients.items()))
            given = given_cost = 0
            while queue:
                key = queue[0]
                found = self._waiting.get(key)
                if found is None:  # taken already, from another client's queue
                    queue.popleft()
                    continue
                text, one = found
                if len(keys) >= max_texts or (keys and cost + one > max_cost):
                    full = True
                    break
                if given and (given >= turn_texts or given_cost + one > turn_cost):
                    break  # this client's turn is over
                queue.popleft()
                del self._waiting[key]
                keys.append(key)
                texts.append(text)
                cost += one
                given += 1
                given_cost += one
            if not queue:
                del self._clients[client]
                someone_answered = True
            elif given:
                self._clients.move_to_end(client)  # the next client's turn
        self.queued_cost -= cost
        return keys, texts

    def _queue_of(self, client: Hashable) -> deque[bytes]:
        queue = self._clients.get(client)
        if queue is None:
            queue = self._clients[client] = deque()
        return queue
