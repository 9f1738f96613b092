"""Which questions each RL iteration draws: the paper's plain shuffle, or two-way questions paired by side."""

from __future__ import annotations

import random

import pytest

from r3rag.rl.draws import answer_side, epoch_order, pair_sides
from r3rag.schema import QAExample


def question(qid: int, qtype: str, side: str | None = None, answer: str = "Ada Vale") -> QAExample:
    metadata = {"side": side} if side else {}
    return QAExample(id=f"q{qid}", question="?", answers=[answer], type=qtype, metadata=metadata)


KINDS = [
    ("comparison", "first"),  # 0
    ("comparison", "first"),  # 1
    ("compositional", None),  # 2
    ("bridge_comparison", "second"),  # 3
    ("comparison", "second"),  # 4
    ("comparison", "yes"),  # 5
    ("comparison", "no"),  # 6
    ("bridge_comparison", "first"),  # 7
    ("comparison", "second"),  # 8
    ("comparison", "yes"),  # 9
]
EXAMPLES = [question(i, t, s) for i, (t, s) in enumerate(KINDS)]


def test_each_two_way_question_takes_its_type_s_next_place_after_the_next_of_the_other_side() -> None:
    """By hand. Places 0-9 hold the types bridge, comparison x2, compositional, comparison x2, bridge,
    comparison x3. The comparisons, in order 1 0 5 4 8 6 9 (first first yes second second no yes), become
    1 4 0 8 5 6 9: 1 (first) takes 4 (second), 0 takes 8, 5 (yes) takes 6 (no), 9 has no partner left. The
    bridge comparisons 3 (second) and 7 (first) keep their order: 3 waits for 7, not for the comparison 1
    after it. The compositional question 2, without a side, keeps its place; so does every place's type."""
    order = [3, 1, 0, 2, 5, 4, 7, 8, 6, 9]
    paired = pair_sides(order, EXAMPLES)
    assert paired == [3, 1, 4, 2, 0, 8, 7, 5, 6, 9]
    assert [EXAMPLES[i].type for i in paired] == [EXAMPLES[i].type for i in order]


def test_the_side_comes_from_the_metadata_or_a_yes_no_answer_and_an_unknown_side_is_named() -> None:
    assert answer_side(question(0, "comparison", "second")) == "second"
    assert answer_side(question(1, "comparison", answer=" Yes")) == "yes"  # HotpotQA: no metadata.side
    assert answer_side(question(2, "comparison", answer="Ada Vale")) is None
    with pytest.raises(ValueError, match="question 'q3': metadata.side is 'left'; expected one of first"):
        answer_side(question(3, "comparison", "left"))


def test_without_balance_the_epoch_order_is_the_plain_seeded_shuffle_and_with_it_a_permutation() -> None:
    """Off, a run draws exactly what it drew before the option existed; on, every question still once."""
    plain = list(range(len(EXAMPLES)))
    random.Random(0).shuffle(plain)
    assert epoch_order(EXAMPLES, 0, balance_sides=False) == plain
    balanced = epoch_order(EXAMPLES, 0, balance_sides=True)
    assert balanced == [7, 8, 1, 5, 3, 6, 2, 4, 0, 9]  # plain: 7 8 1 5 3 4 2 0 9 6; 5 (yes) takes 6 (no)
