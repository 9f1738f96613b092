"""What an evaluation method is, and the machinery the batched baselines share.

A method (:class:`EvalMethod`) turns questions into trajectories over one Generator and one Retriever, and
declares what the config, runner and report need to know about it: its ``name`` (the config and CLI key), its
``title`` (the report's row), whether it ``retrieves``, its ``position`` among the table's rows, and its own
``Settings`` (a section of :class:`~r3rag.evaluation.config.EvalConfig`). The registry finds every method of
this package, so a new method is one new module.

All methods share what makes a comparison fair: the same model and retriever, the same system turn, greedy
decoding by default, the same top-k, and the same step budget for every iterative method. Like the agent, the
batched methods (:class:`BatchedMethod`) advance all their questions together: each step is one batched
``generate`` call for the questions still open and one batched ``search`` for those that retrieve, so the
embedded model runs at batch speed.

Every method records its work as a :class:`~r3rag.schema.Trajectory`, so one scorer reads them all:

- a :class:`~r3rag.schema.Step` is one model generation (``raw``, ``analysis``, and ``answer`` when it gave
  one) with the retrieval that went with it (``query``, ``passages``), whether the method retrieves before
  generating (RAG, ITER-RETGEN, FLARE's re-generation) or after (IRCoT, Self-Ask, ReAct, Search-R1, R3-RAG);
  ``index 0`` is a retrieval before the first generation (IRCoT's retrieval with the question);
- the answer that counts at step budget ``t`` is the latest answer given at a step ``<= t``. Only ITER-RETGEN
  gives an answer at every step (each iteration ends in one); the others stop at their first answer. A method
  therefore behaves at budget ``t`` exactly as the first ``t`` steps of a run with a larger budget, which is
  what lets one run give the accuracy of every budget (the paper's max-steps figure; official
  ``cal_metric.py``). Nothing happens at the end of the budget that would not happen before it: a method
  that has not answered when the steps run out ends ``out-of-steps``, as R3-RAG does.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from r3rag.config import StageConfig
from r3rag.evaluation.prompts import (
    clean_answer,
    direct_answer_prompt,
    extract_answer,
    first_line,
    reasoning_prompt,
)
from r3rag.llm.base import Completion, Generator, SamplingParams
from r3rag.retrieval.base import Retriever
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus

if TYPE_CHECKING:
    from r3rag.evaluation.config import EvalConfigBase

NO_ANSWER_LINE = "no answer line; answered by the direct-answer prompt"
NO_ANSWER = "no answer, even from the direct-answer prompt"
EMPTY_SENTENCE = "empty sentence"


class MethodSettings(StageConfig):
    """A method's own settings: its section of the eval config (``ircot: {max_passages: 15}``).

    Every method has a per-call token budget sized to what it writes in one call, so ``max_new_tokens`` has no
    default here: each method's ``Settings`` declares its own, with the reason for it.
    """

    max_new_tokens: int = Field(ge=1, description="Tokens per generation call.")


class ReasoningSettings(MethodSettings):
    """The settings of the methods that reason to an answer line in one call (CoT, RAG with CoT,
    ITER-RETGEN), with a short direct-answer call when that line is missing."""

    max_new_tokens: int = Field(256, ge=1, description="Tokens per reasoning call (a whole reasoning).")
    answer_tokens: int = Field(
        32, ge=1, description="Tokens of the direct-answer call, made when a reasoning has no answer line."
    )


class EvalMethod(ABC):
    """One row of the evaluation table: questions in, one trajectory per question out, in order.

    A concrete subclass in a module of this package is registered under its ``name``; the config gets a
    section named after it (hyphens become underscores) holding its ``Settings``.
    """

    name: ClassVar[str]
    """The config and CLI key (``rag-cot``)."""
    title: ClassVar[str]
    """The report's name for it (``RAG with CoT``)."""
    retrieves: ClassVar[bool] = True
    """False for a method that never searches: it needs no retriever and runs at no top-k."""
    position: ClassVar[int] = 1000
    """Where its row goes in the report: the paper's Table 1 order (prompted baselines, then fine-tuned ones,
    then R3-RAG); methods without one come last, by name."""
    by_default: ClassVar[bool] = True
    """Whether ``r3rag eval`` runs it when no methods are named (False for a protocol meant for other
    checkpoints than the run's model)."""
    Settings: ClassVar[type[MethodSettings]]
    """Its own settings model."""

    def __init__(
        self, generator: Generator, retriever: Retriever | None, config: EvalConfigBase, top_k: int | None
    ):
        if self.retrieves and top_k is None:
            raise ValueError(f"{self.name} retrieves: it needs a top_k")
        if self.retrieves and retriever is None:
            raise ValueError(f"{self.name} retrieves: it needs a Retriever")
        self.generator = generator
        self.retriever = retriever
        self.config = config
        self.top_k = top_k or 0
        self.settings = config.settings(self.name)

    @classmethod
    def main_top_k(cls, config: EvalConfigBase) -> int | None:
        """The top-k of the method's row in the main table: the shared top-k, none if it does not retrieve."""
        return config.top_k if cls.retrieves else None

    @abstractmethod
    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]:
        """One trajectory per example, in order, with ``metadata["method"]`` set to the method's name."""


@dataclass(slots=True)
class Row:
    """One question in flight."""

    example: QAExample
    trajectory: Trajectory


@dataclass(frozen=True, slots=True)
class Action:
    """What one reply of an acting method does: answer (with the answer), search (with the query), or
    nothing readable."""

    kind: Literal["answer", "search", "none"]
    thought: str
    argument: str = ""


class BatchedMethod(EvalMethod):
    """Batched generation and retrieval for the rows still open, with token and error accounting."""

    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]:
        rows = [Row(ex, Trajectory(example_id=ex.id, question=ex.question)) for ex in examples]
        for row in rows:
            row.trajectory.metadata["method"] = self.name
        if rows:
            self._run(rows)
        return [row.trajectory for row in rows]

    @abstractmethod
    def _run(self, rows: list[Row]) -> None:
        """Advance every row until it ends; each method's own loop."""

    def _generate(
        self,
        rows: Sequence[Row],
        prompts: Sequence[str],
        call: str,
        *,
        max_new_tokens: int | None = None,
        stop: tuple[str, ...] = (),
        logprobs: bool = False,
    ) -> list[Completion]:
        """One batched call; ``call`` names it (with the step) so each row gets its own sampling seed."""
        c = self.config
        system = [] if c.system_prompt is None else [{"role": "system", "content": c.system_prompt}]
        sampling = [
            SamplingParams(
                temperature=c.temperature,
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                stop=stop,
                seed=None if c.seed is None else derive_seed(c.seed, row.example.id, call),
                logprobs=logprobs,
            )
            for row in rows
        ]
        completions = self.generator.generate(
            [[*system, {"role": "user", "content": prompt}] for prompt in prompts], sampling
        )
        for row, completion in zip(rows, completions, strict=True):
            row.trajectory.prompt_tokens += completion.prompt_tokens
            row.trajectory.completion_tokens += completion.completion_tokens
            if completion.finish_reason == "error":
                row.trajectory.metadata.setdefault("errors", []).append(
                    completion.error or "generation error"
                )
        return completions

    def _search(self, queries: Sequence[str]) -> list[list[Passage]]:
        assert self.retriever is not None
        return self.retriever.search(list(queries), self.top_k) if queries else []

    def _search_last_queries(self, rows: Sequence[Row]) -> None:
        """Search each row's latest query (one batched call) and attach the passages to that step, where the
        next prompt shows them: turn-based methods (Self-Ask, ReAct, Search-R1) retrieve after they ask."""
        queries = []
        for row in rows:
            query = row.trajectory.steps[-1].query
            assert query is not None, "only rows whose latest step asks a query retrieve"
            queries.append(query)
        for row, found in zip(rows, self._search(queries), strict=True):
            row.trajectory.steps[-1].passages = found

    def _take_actions(
        self,
        rows: Sequence[Row],
        completions: Sequence[Completion],
        actions: Sequence[Action],
        index: int,
        no_action: str,
    ) -> list[Row]:
        """One turn of an acting method (ReAct, Search-R1): each reply answers (the trajectory ends), searches
        (its query is run) or does neither (noted with ``no_action``; it costs its step and the trajectory
        goes on). Returns the rows still open."""
        still_open, retrieving = [], []
        for row, completion, action in zip(rows, completions, actions, strict=True):
            if action.kind == "answer":
                self._answered(
                    row,
                    Step(index=index, analysis=action.thought, answer=action.argument, raw=completion.text),
                )
                continue
            if action.kind == "search":
                step = Step(index=index, analysis=action.thought, query=action.argument, raw=completion.text)
                retrieving.append(row)
            else:
                step = Step(
                    index=index, analysis=action.thought, raw=completion.text, valid=False, issues=[no_action]
                )
            row.trajectory.steps.append(step)
            still_open.append(row)
        self._search_last_queries(retrieving)
        return still_open

    @staticmethod
    def _answered(row: Row, step: Step) -> None:
        row.trajectory.steps.append(step)
        row.trajectory.status = TrajectoryStatus.ANSWERED
        row.trajectory.final_answer = step.answer

    @staticmethod
    def _failed(row: Row, index: int, raw: str, issue: str) -> None:
        row.trajectory.steps.append(Step(index=index, raw=raw, valid=False, issues=[issue]))
        row.trajectory.status = TrajectoryStatus.FORMAT_ERROR


class ReasoningMethod(BatchedMethod):
    """A method whose steps are CoT-style reasonings to an answer line (CoT, RAG with CoT, ITER-RETGEN)."""

    settings: ReasoningSettings

    def _reason(
        self,
        rows: Sequence[Row],
        passages: Sequence[list[Passage]],
        queries: Sequence[str | None],
        index: int,
    ) -> None:
        """One reasoning step per row (over ``passages``): the answer line, or else the direct-answer
        fallback. Appends the step; the caller decides what it means for the trajectory."""
        prompts = [reasoning_prompt(r.example.question, docs) for r, docs in zip(rows, passages, strict=True)]
        completions = self._generate(rows, prompts, f"{index}:reason")
        steps = [
            Step(
                index=index,
                analysis=c.text.strip(),
                query=q,
                passages=docs,
                raw=c.text,
                answer=extract_answer(c.text),
            )
            for c, q, docs in zip(completions, queries, passages, strict=True)
        ]
        missing = [n for n, step in enumerate(steps) if step.answer is None]
        fallback = (
            self._generate(
                [rows[n] for n in missing],
                [direct_answer_prompt(rows[n].example.question, passages[n]) for n in missing],
                f"{index}:direct",
                max_new_tokens=self.settings.answer_tokens,
            )
            if missing
            else []
        )
        for n, completion in zip(missing, fallback, strict=True):
            steps[n].answer = (
                extract_answer(completion.text) or clean_answer(first_line(completion.text)) or None
            )
            steps[n].issues.append(NO_ANSWER_LINE if steps[n].answer else NO_ANSWER)
            steps[n].valid = steps[n].answer is not None
            rows[n].trajectory.metadata["direct_answer_fallbacks"] = (
                rows[n].trajectory.metadata.get("direct_answer_fallbacks", 0) + 1
            )
        for row, step in zip(rows, steps, strict=True):
            row.trajectory.steps.append(step)


def finish_single(row: Row) -> None:
    """CoT and RAG with CoT: one step, answered or not."""
    step = row.trajectory.steps[-1]
    if step.answer is None:
        row.trajectory.status = TrajectoryStatus.FORMAT_ERROR
    else:
        row.trajectory.status = TrajectoryStatus.ANSWERED
        row.trajectory.final_answer = step.answer


def sentences(trajectory: Trajectory) -> list[str]:
    """The reasoning sentences written so far (IRCoT, FLARE): every generated step's analysis."""
    return [s.analysis for s in trajectory.steps if s.index >= 1 and s.analysis]


def derive_seed(seed: int, example_id: str, call: str) -> int:
    """A seed per (run seed, question, call): the same whatever else is in the batch."""
    digest = hashlib.sha256(f"{seed}:{example_id}:{call}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
