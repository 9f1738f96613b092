"""ITER-RETGEN: retrieval and generation in turns, each retrieval with the previous generation."""

from __future__ import annotations

from r3rag.evaluation.methods.base import ReasoningMethod, ReasoningSettings, Row
from r3rag.schema import TrajectoryStatus


class IterRetGen(ReasoningMethod):
    """Each iteration retrieves with the question plus the previous iteration's generation, then reasons to an
    answer over the new documents. It always runs the whole budget; the answer at each budget is the latest
    iteration's (an iteration without one keeps the previous answer)."""

    name = "iter-retgen"
    title = "ITER-RETGEN"
    position = 50

    class Settings(ReasoningSettings):
        """ITER-RETGEN's own settings: the budgets of each iteration's reasoning and direct answer."""

    def _run(self, rows: list[Row]) -> None:
        for index in range(1, self.config.max_steps + 1):
            queries = [
                row.example.question
                if index == 1
                else f"{row.example.question} {row.trajectory.steps[-1].raw.strip()}".strip()
                for row in rows
            ]
            self._reason(rows, self._search(queries), queries, index)
        for row in rows:
            answers = [s.answer for s in row.trajectory.steps if s.answer is not None]
            row.trajectory.final_answer = answers[-1] if answers else None
            row.trajectory.status = TrajectoryStatus.ANSWERED if answers else TrajectoryStatus.FORMAT_ERROR
