"""CoT: chain of thought without retrieval, the model's own knowledge (paper Table 1: "CoT")."""

from __future__ import annotations

from r3rag.evaluation.methods.base import ReasoningMethod, ReasoningSettings, Row, finish_single


class CoT(ReasoningMethod):
    """One reasoning to an answer line, with no documents."""

    name = "cot"
    title = "CoT"
    retrieves = False
    position = 10

    class Settings(ReasoningSettings):
        """CoT's own settings: its reasoning and direct-answer budgets."""

    def _run(self, rows: list[Row]) -> None:
        self._reason(rows, [[] for _ in rows], [None for _ in rows], index=1)
        for row in rows:
            finish_single(row)
