"""How a batch is cut into forwards: little padding, within the budget, every text once, in order."""

from __future__ import annotations

import pytest

from embedshare.embedders.forward_plan import FORWARD_OVERHEAD_TOKENS, plan_forwards


def padded_tokens(lengths: list[int], plan: list[tuple[int, int]]) -> int:
    return sum((end - start) * lengths[start] for start, end in plan)


def check_cover(lengths: list[int], plan: list[tuple[int, int]], budget: int, max_rows: int | None = None) -> None:
    assert [i for start, end in plan for i in range(start, end)] == list(range(len(lengths)))
    for start, end in plan:
        rows = end - start
        assert rows * lengths[start] <= budget or rows == 1
        assert max_rows is None or rows <= max_rows


def test_two_lengths_go_as_two_forwards_without_padding():
    lengths = [20] * 32 + [10] * 32  # the budget-only cut made one forward padded to 20
    plan = plan_forwards(lengths, 2048)
    assert plan == [(0, 32), (32, 64)]
    assert padded_tokens(lengths, plan) == sum(lengths)


def test_one_long_text_among_short_ones_goes_alone():
    lengths = [256] + [12] * 63  # the budget-only cut padded 7 short texts to 256 tokens
    plan = plan_forwards(lengths, 2048)
    assert plan[0] == (0, 1)
    check_cover(lengths, plan, 2048)
    assert padded_tokens(lengths, plan) == sum(lengths)


def test_texts_of_about_one_length_share_a_forward_rather_than_pay_many_overheads():
    lengths = sorted(range(10, 41), reverse=True)  # 31 texts, each of its own length
    plan = plan_forwards(lengths, 2048)
    assert len(plan) < 10  # not a forward each
    cost = len(plan) * FORWARD_OVERHEAD_TOKENS + padded_tokens(lengths, plan)
    one = FORWARD_OVERHEAD_TOKENS + len(lengths) * lengths[0]
    each = len(lengths) * FORWARD_OVERHEAD_TOKENS + sum(lengths)
    assert cost < min(one, each)  # cheaper than both extremes under the cost model


@pytest.mark.parametrize("budget, max_rows", [(256, None), (1000, None), (2048, 8), (4096, 64)])
def test_every_text_once_in_order_and_within_the_budget(budget, max_rows):
    lengths = sorted([3 + (i * 37) % 250 for i in range(300)], reverse=True)
    plan = plan_forwards(lengths, budget, max_rows)
    check_cover(lengths, plan, budget, max_rows)


def test_equal_lengths_are_cut_by_the_budget_alone():
    assert plan_forwards([16] * 300, 2048) == [(0, 128), (128, 256), (256, 300)]


def test_unsorted_lengths_are_refused_and_no_texts_make_no_forwards():
    with pytest.raises(ValueError, match="sorted longest first"):
        plan_forwards([3, 5], 2048)
    assert plan_forwards([], 2048) == []
