"""The paired test of two systems on the same questions, against hand-computed binomial tails."""

from __future__ import annotations

import pytest

from r3rag.evaluation.paired import compare, mcnemar_exact


@pytest.mark.parametrize(
    ("gained", "lost", "p"),
    [
        (0, 0, 1.0),  # no disagreement: no evidence
        (1, 1, 1.0),
        (5, 0, 2 / 2**5),  # 0.0625: five of five one way
        (3, 9, 2 * (1 + 12 + 66 + 220) / 2**12),  # 0.1460
        (28, 11, 0.009475304279476404),  # the README's 50-minute PPO run vs R3-RAG-CS (p = 0.009)
    ],
)
def test_exact_mcnemar_is_twice_the_binomial_tail(gained: int, lost: int, p: float) -> None:
    assert mcnemar_exact(gained, lost) == pytest.approx(p)
    assert mcnemar_exact(lost, gained) == pytest.approx(p)  # two-sided: symmetric


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_compare_pairs_by_question_id_over_the_shared_ones() -> None:
    first = {"a": True, "b": False, "c": False, "d": True, "only-first": True}
    second = {"a": True, "b": True, "c": True, "d": False, "only-second": False}
    result = compare(first, second)
    assert (result.questions, result.gained, result.lost) == (4, 2, 1)
    assert result.difference == pytest.approx(0.25)
    assert result.p_value == pytest.approx(1.0)  # 2 x P(X <= 1), X ~ Bin(3, 1/2) = 2 x 0.5
