"""How a batch of tokenised texts is cut into forwards: as little padding as the forwards allow.

A forward pads every text to its longest one, so a batch of texts of 15 to 18 tokens cut as
one forward computes 18 tokens for each; and every forward also costs a fixed amount (ONNX
Runtime's per-node dispatch and thread wake-ups). Measured on the 2-core machine
(bench/README.md, "Issue 20, the close"): a forward's time is close to
``overhead + rows x width`` token-times, the overhead about 20 tokens' worth. So, with the
texts sorted by length (longest first), the best cut is a shortest path over the groups of
equal length: each forward runs from one group to a later one, costs the overhead plus its
rows times its first (longest) text's length, and holds at most the token budget. TEI and
Infinity sort by length and cut by count or budget alone; the cost model here is what lets a
batch of mixed lengths go as several tight forwards instead of one padded one, or one long
text among short ones go alone.

Hand-written (no library plans padded batches): a dynamic programme over at most
``max_tokens`` distinct lengths, so at most 256 x 256 steps even for a request of thousands of
texts; typically a few dozen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

# What a forward costs besides its tokens, in token-times: the fit of time(rows, width) against
# rows x width on all-MiniLM-L6-v2 fp32, 2 intra-op threads, gives 17 to 20; small forwards are
# also less efficient a token than the fit says, and 24 is where batches of 4 and 12 short
# texts stopped losing while batches of 64 kept their gain (bench/forward_cuts.py, bench/README.md).
FORWARD_OVERHEAD_TOKENS = 24


def plan_forwards(
    lengths: Sequence[int], max_batch_tokens: int, max_rows: int | None = None, overhead: int = FORWARD_OVERHEAD_TOKENS
) -> list[tuple[int, int]]:
    """The forwards for texts of ``lengths`` (sorted longest first), as ``(start, end)`` slices.

    Each forward holds at most ``max_batch_tokens`` padded tokens (a text longer than the
    budget goes alone) and at most ``max_rows`` texts; within that, the cuts minimise
    ``forwards x overhead + sum(rows x width)``.
    """
    if any(a < b for a, b in itertools.pairwise(lengths)):
        raise ValueError("plan_forwards needs the lengths sorted longest first")
    groups = _group_starts(lengths)  # where each run of equal lengths starts, and len(lengths)
    best = [0.0] + [float("inf")] * (len(groups) - 1)  # best[g]: cost of texts before groups[g]
    cut_from = [0] * len(groups)
    for end in range(1, len(groups)):
        for begin in range(end - 1, -1, -1):
            start, stop = groups[begin], groups[end]
            width = max(1, lengths[start])
            per_forward = _rows_per_forward(width, max_batch_tokens, max_rows)
            forwards = -(-(stop - start) // per_forward)
            cost = best[begin] + forwards * overhead + (stop - start) * width
            if cost < best[end]:
                best[end], cut_from[end] = cost, begin
    return _forwards(lengths, groups, cut_from, max_batch_tokens, max_rows)


def _group_starts(lengths: Sequence[int]) -> list[int]:
    starts = [i for i in range(len(lengths)) if i == 0 or lengths[i] != lengths[i - 1]]
    return [*starts, len(lengths)] if lengths else [0]


def _rows_per_forward(width: int, max_batch_tokens: int, max_rows: int | None) -> int:
    rows = max(1, max_batch_tokens // width)
    return min(rows, max_rows) if max_rows else rows


def _forwards(
    lengths: Sequence[int], groups: list[int], cut_from: list[int], max_batch_tokens: int, max_rows: int | None
) -> list[tuple[int, int]]:
    """The slices of the chosen spans, each span cut into forwards of its width's rows."""
    spans, end = [], len(groups) - 1
    while end > 0:
        spans.append((groups[cut_from[end]], groups[end]))
        end = cut_from[end]
    out = []
    for start, stop in reversed(spans):
        per_forward = _rows_per_forward(max(1, lengths[start]), max_batch_tokens, max_rows)
        out += [(i, min(i + per_forward, stop)) for i in range(start, stop, per_forward)]
    return out
