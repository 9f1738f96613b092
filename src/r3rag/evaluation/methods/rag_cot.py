"""RAG with CoT: one retrieval with the question, the top-k documents in the prompt, then chain of thought
(paper Table 1: "RAG with CoT", top-16 documents)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from r3rag.evaluation.methods.base import ReasoningMethod, ReasoningSettings, Row, finish_single

if TYPE_CHECKING:
    from r3rag.evaluation.config import EvalConfigBase


class RAGCoT(ReasoningMethod):
    """Retrieve once with the question at its own top-k, then reason to an answer over the documents."""

    name = "rag-cot"
    title = "RAG with CoT"
    position = 20

    class Settings(ReasoningSettings):
        """RAG with CoT's own settings: its budgets and the top-k of its one retrieval."""

        top_k: int = Field(
            16, ge=1, description="Passages of its one retrieval (paper: 16; official scripts: 17)."
        )

    settings: Settings

    @classmethod
    def main_top_k(cls, config: EvalConfigBase) -> int | None:
        """Its row in the main table reads its own top-k, more documents than R3-RAG reads on average."""
        settings = config.settings(cls.name)
        assert isinstance(settings, cls.Settings)
        return settings.top_k

    def _run(self, rows: list[Row]) -> None:
        questions = [row.example.question for row in rows]
        self._reason(rows, self._search(questions), questions, index=1)
        for row in rows:
            finish_single(row)
