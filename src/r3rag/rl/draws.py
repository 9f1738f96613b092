"""Which training questions each RL iteration draws: the training set in a seeded order, epoch after epoch.

A critic-free update (RLOO, GRPO) learns from the spread inside each question's group of samples. On a
two-way question ("which of A and B...", "are A and B both...") a group split between the two answers pays
the right side and charges the wrong one, so a run whose draws hold more questions answered "first" than
"second" is pushed towards answering "first" *whatever the question*; once every sample of a group takes the
same side the group's spread is zero and nothing pushes back. On the CPU budget (8 questions an iteration,
~9 iterations an hour) a run sees 30-40 two-way questions and learnt a side from that imbalance alone
(docs/results.md, "The balanced default world"). :func:`pair_sides` puts every two-way question beside one
of the same type answered by the other side, so the side each iteration rewards is cancelled by its partner.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from r3rag.schema import QAExample

OPPOSITE_SIDES = {"first": "second", "second": "first", "yes": "no", "no": "yes"}
"""The answer side of a two-way question and the side that cancels it."""


def answer_side(example: QAExample) -> str | None:
    """The side a two-way question's answer takes: ``metadata.side`` where the data names it (the world's
    comparisons), else "yes" or "no" for a yes/no answer (HotpotQA's comparisons); ``None`` otherwise."""
    side = example.metadata.get("side")
    if side is None and example.answers and example.answers[0].strip().lower() in ("yes", "no"):
        side = example.answers[0].strip().lower()
    if side is not None and side not in OPPOSITE_SIDES:
        raise ValueError(
            f"question {example.id!r}: metadata.side is {side!r}; expected one of {', '.join(OPPOSITE_SIDES)}"
        )
    return side


def pair_sides(order: Sequence[int], examples: Sequence[QAExample]) -> list[int]:
    """``order`` with the two-way questions of each type rearranged among the places that type holds: each
    one is followed, at its type's next place, by the next one of ``order`` that the other side answers
    (pulled forward from later). Every place keeps the type it had, so the types an iteration draws are the
    plain shuffle's; a question without a side, or with no partner left, keeps the order it had."""
    sided: dict[str, list[tuple[int, str]]] = {}  # type -> (place, side) of its questions with a side
    for place, index in enumerate(order):
        side = answer_side(examples[index])
        if side is not None:
            sided.setdefault(examples[index].type, []).append((place, side))
    paired = list(order)
    for places in sided.values():
        for place, taken in zip((p for p, _ in places), _side_pairs(places), strict=True):
            paired[place] = order[taken]
    return paired


def _side_pairs(places: Sequence[tuple[int, str]]) -> list[int]:
    """The ``(place, side)`` places in order, each followed by the next place of the other side."""
    units: list[list[int]] = []
    waiting: dict[str, list[list[int]]] = {}
    for place, side in places:
        partners = waiting.get(OPPOSITE_SIDES[side])
        if partners:
            partners.pop(0).append(place)
        else:
            unit = [place]
            units.append(unit)
            waiting.setdefault(side, []).append(unit)
    return [place for unit in units for place in unit]


def epoch_order(examples: Sequence[QAExample], seed: int, balance_sides: bool) -> list[int]:
    """One epoch's order of ``examples``: shuffled by ``seed``, then (``balance_sides``) side-paired."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return pair_sides(order, examples) if balance_sides else order
