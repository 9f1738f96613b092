"""IRCoT: interleave one reasoning sentence and one retrieval with that sentence as the query."""

from __future__ import annotations

from pydantic import Field

from r3rag.evaluation.methods.base import EMPTY_SENTENCE, BatchedMethod, MethodSettings, Row, sentences
from r3rag.evaluation.prompts import extract_answer, first_line, next_sentence_prompt
from r3rag.schema import Passage, Step, Trajectory, TrajectoryStatus


class IRCoT(BatchedMethod):
    """Retrieve with the question, then alternate one reasoning sentence and a retrieval with that sentence as
    the query, until a sentence gives the answer. The documents accumulate (deduplicated, at most
    ``max_passages`` in the prompt, as IRCoT caps its paragraph set)."""

    name = "ircot"
    title = "IRCoT"
    position = 60

    class Settings(MethodSettings):
        """IRCoT's own settings: its sentence budget and its cap on the documents in the prompt."""

        max_new_tokens: int = Field(64, ge=1, description="Tokens per call (one sentence).")
        max_passages: int = Field(
            15, ge=1, description="Cap on the documents in its prompt (IRCoT paper: 15 paragraphs)."
        )

    settings: Settings

    def _passages(self, trajectory: Trajectory) -> list[Passage]:
        return [p for s in trajectory.steps for p in s.passages][: self.settings.max_passages]

    def _run(self, rows: list[Row]) -> None:
        for row, found in zip(rows, self._search([r.example.question for r in rows]), strict=True):
            row.trajectory.steps.append(Step(index=0, query=row.example.question, passages=found))
        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            prompts = [
                next_sentence_prompt(
                    r.example.question, self._passages(r.trajectory), sentences(r.trajectory)
                )
                for r in open_rows
            ]
            retrieving = []
            for row, completion in zip(
                open_rows, self._generate(open_rows, prompts, f"{index}:next", stop=("\n",)), strict=True
            ):
                sentence = first_line(completion.text)
                answer = extract_answer(sentence)
                if not sentence:
                    self._failed(row, index, completion.text, EMPTY_SENTENCE)
                elif answer is not None:
                    self._answered(
                        row, Step(index=index, analysis=sentence, answer=answer, raw=completion.text)
                    )
                else:
                    row.trajectory.steps.append(
                        Step(index=index, analysis=sentence, query=sentence, raw=completion.text)
                    )
                    retrieving.append(row)
            hits = self._search([r.trajectory.steps[-1].analysis for r in retrieving])
            for row, found in zip(retrieving, hits, strict=True):
                seen = {p.id for s in row.trajectory.steps for p in s.passages}
                row.trajectory.steps[-1].passages = [p for p in found if p.id not in seen]
            open_rows = retrieving
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS
