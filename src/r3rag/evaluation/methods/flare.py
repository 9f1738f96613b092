"""FLARE (direct): retrieve only when the model is unsure of the sentence it is about to write.

FLARE needs the probability of each token it generates. :class:`~r3rag.llm.base.SamplingParams` asks for them
(``logprobs``): local models give them exactly, OpenAI-compatible servers where they support it. The
look-ahead sentence is judged by its least likely token; when a backend returns no probabilities the sentence
counts as unsure, so FLARE then retrieves at every step (recorded as ``confidence: None``). The query is the
look-ahead sentence itself (FLARE's direct query), without masking its unsure tokens: masking needs the text
of each token, which the Generator protocol does not carry.
"""

from __future__ import annotations

import math

from pydantic import Field

from r3rag.evaluation.methods.base import EMPTY_SENTENCE, BatchedMethod, MethodSettings, Row, sentences
from r3rag.evaluation.prompts import extract_answer, first_line, next_sentence_prompt
from r3rag.schema import Passage, Step, Trajectory, TrajectoryStatus


class FLARE(BatchedMethod):
    """Write the next sentence ahead; if any of its tokens is less likely than ``threshold``, retrieve with
    that sentence and write it again over the documents found. The latest documents stay in the prompt for the
    sentences after. Ends at the first sentence giving the answer."""

    name = "flare"
    title = "FLARE"
    position = 70

    class Settings(MethodSettings):
        """FLARE's own settings: its sentence budget and the confidence below which it retrieves."""

        max_new_tokens: int = Field(64, ge=1, description="Tokens per call (one sentence).")
        threshold: float = Field(
            0.4,
            ge=0,
            le=1,
            description="Retrieve when a look-ahead token is less likely than this (our choice; FLARE tunes "
            "it per dataset).",
        )

    settings: Settings

    @staticmethod
    def _documents(trajectory: Trajectory) -> list[Passage]:
        return next((s.passages for s in reversed(trajectory.steps) if s.query is not None), [])

    def _prompt(self, row: Row, passages: list[Passage]) -> str:
        return next_sentence_prompt(row.example.question, passages, sentences(row.trajectory))

    def _accept(self, row: Row, step: Step, open_rows: list[Row]) -> None:
        step.answer = extract_answer(step.analysis)
        if step.answer is not None:
            self._answered(row, step)
        else:
            row.trajectory.steps.append(step)
            open_rows.append(row)

    def _run(self, rows: list[Row]) -> None:
        for row in rows:
            row.trajectory.metadata["confidence"] = []
        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            still_open: list[Row] = []
            unsure: list[tuple[Row, str]] = []
            ahead = self._generate(
                open_rows,
                [self._prompt(r, self._documents(r.trajectory)) for r in open_rows],
                f"{index}:ahead",
                stop=("\n",),
                logprobs=True,
            )
            for row, completion in zip(open_rows, ahead, strict=True):
                sentence = first_line(completion.text)
                confidence = math.exp(min(completion.token_logprobs)) if completion.token_logprobs else None
                row.trajectory.metadata["confidence"].append(confidence)
                if not sentence:
                    self._failed(row, index, completion.text, EMPTY_SENTENCE)
                elif confidence is not None and confidence >= self.settings.threshold:
                    self._accept(row, Step(index=index, analysis=sentence, raw=completion.text), still_open)
                else:
                    unsure.append((row, sentence))
            hits = self._search([sentence for _, sentence in unsure])
            again = self._generate(
                [row for row, _ in unsure],
                [self._prompt(row, found) for (row, _), found in zip(unsure, hits, strict=True)],
                f"{index}:again",
                stop=("\n",),
            )
            for (row, query), found, completion in zip(unsure, hits, again, strict=True):
                sentence = first_line(completion.text)
                if not sentence:
                    self._failed(row, index, completion.text, EMPTY_SENTENCE)
                    row.trajectory.steps[-1].query, row.trajectory.steps[-1].passages = query, found
                else:
                    step = Step(
                        index=index, analysis=sentence, query=query, passages=found, raw=completion.text
                    )
                    self._accept(row, step, still_open)
            open_rows = still_open
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS
