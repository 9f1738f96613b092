"""Paired comparison of two systems on the same questions: did one get right what the other got wrong more
often than chance allows?

Accuracy differences between two models on a few hundred questions are often noise; the paired test looks
only at the questions where they disagree (``gained``: right only for the second system, ``lost``: right only
for the first). Under the null hypothesis each disagreement goes either way with probability 1/2, so the
exact McNemar test is a two-sided binomial test on ``gained`` out of ``gained + lost``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import comb


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Questions both systems answered, and how their verdicts differ; ``p_value`` is McNemar's exact one."""

    questions: int
    gained: int
    lost: int
    p_value: float

    @property
    def difference(self) -> float:
        """Accuracy of the second system minus the first's, over the shared questions."""
        return (self.gained - self.lost) / self.questions if self.questions else 0.0


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: twice the binomial(n, 1/2) tail at the smaller count, capped at 1."""
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be >= 0, got {gained} and {lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare(first: Mapping[str, bool], second: Mapping[str, bool]) -> PairedComparison:
    """Compare two systems' verdicts by question id, over the ids both have (the others are not paired)."""
    shared = first.keys() & second.keys()
    gained = sum(1 for q in shared if second[q] and not first[q])
    lost = sum(1 for q in shared if first[q] and not second[q])
    return PairedComparison(len(shared), gained, lost, mcnemar_exact(gained, lost))
