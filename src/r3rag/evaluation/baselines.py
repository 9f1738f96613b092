"""The methods of the paper's Table 1 over one Generator and one Retriever: questions in, trajectories out.

CoT, RAG with CoT, ReAct, Self-Ask, ITER-RETGEN, IRCoT and FLARE, with our own prompts
(:mod:`r3rag.evaluation.prompts`), and R3-RAG itself (the :class:`~r3rag.agent.Agent`). They share what makes
a comparison fair: the same model and retriever, the same system turn, greedy decoding by default, the same
top-k, and the same step budget for every iterative method. Like the agent, every method advances all its
questions together: each step is one batched ``generate`` call for the questions still open and one batched
``search`` for those that retrieve, so the embedded model runs at batch speed.

Every method records its work as a :class:`~r3rag.schema.Trajectory`, so one scorer reads them all:

- a :class:`~r3rag.schema.Step` is one model generation (``raw``, ``analysis``, and ``answer`` when it gave
  one) with the retrieval that went with it (``query``, ``passages``), whether the method retrieves before
  generating (RAG, ITER-RETGEN, FLARE's re-generation) or after (IRCoT, Self-Ask, ReAct, R3-RAG);
  ``index 0`` is a retrieval before the first generation (IRCoT's retrieval with the question);
- the answer that counts at step budget ``t`` is the latest answer given at a step ``<= t``. Only ITER-RETGEN
  gives an answer at every step (each iteration ends in one); the others stop at their first answer. A method
  therefore behaves at budget ``t`` exactly as the first ``t`` steps of a run with a larger budget, which is
  what lets one run give the accuracy of every budget (the paper's max-steps figure; official
  ``cal_metric.py``). Nothing happens at the end of the budget that would not happen before it: a method
  that has not answered when the steps run out ends ``out-of-steps``, as R3-RAG does.

FLARE needs the probability of each token it generates. :class:`~r3rag.llm.base.SamplingParams` asks for
them (``logprobs``): local models give them exactly, OpenAI-compatible servers where they support it. The
look-ahead sentence is judged by its least likely token; when a backend returns no probabilities the
sentence counts as unsure, so FLARE then retrieves at every step (recorded as ``confidence: None``). The
query is the look-ahead sentence itself (FLARE's direct query), without masking its unsure tokens: masking
needs the text of each token, which the Generator protocol does not carry.
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from r3rag.agent import Agent
from r3rag.config import AgentConfig, EvalConfig
from r3rag.evaluation.prompts import (
    INVALID_ACTION,
    SELF_ASK_STOP,
    ReActTurn,
    SelfAskTurn,
    clean_answer,
    direct_answer_prompt,
    extract_answer,
    first_line,
    format_passages,
    next_sentence_prompt,
    parse_react,
    parse_self_ask,
    react_prompt,
    react_stop,
    reasoning_prompt,
    self_ask_prompt,
)
from r3rag.llm.base import Completion, Generator, SamplingParams
from r3rag.retrieval.base import Retriever
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.steps import DEFAULT_SYSTEM_PROMPT

METHODS = ("cot", "rag-cot", "react", "self-ask", "iter-retgen", "ircot", "flare", "r3rag")
"""Every method, in the order of the paper's Table 1."""

NO_ANSWER_LINE = "no answer line; answered by the direct-answer prompt"
NO_ANSWER = "no answer, even from the direct-answer prompt"
EMPTY_SENTENCE = "empty sentence"
NO_DECISION = "no follow-up question or final answer"
NO_ACTION = "no Search[...] or Finish[...] action"
_ACTION_LINE = re.compile(r"(?i)action\s*\d*\s*:[ \t]*([^\n]*)")


class Method(Protocol):
    """A question-answering method: one trajectory per example, in order."""

    name: str

    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """What every baseline shares with R3-RAG (budgets, sampling, system turn) plus its own token budget."""

    max_steps: int = 5
    top_k: int = 5
    max_new_tokens: int = 256
    answer_tokens: int = 32
    temperature: float = 0.0
    seed: int | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT


@dataclass(slots=True)
class _Row:
    example: QAExample
    trajectory: Trajectory


class _Baseline(ABC):
    """Batched generation and retrieval for the rows still open, with token and error accounting."""

    name: ClassVar[str]
    retrieves: ClassVar[bool] = True

    def __init__(self, generator: Generator, retriever: Retriever | None, settings: Settings):
        if self.retrieves and retriever is None:
            raise ValueError(f"{self.name} retrieves: it needs a Retriever")
        self.generator = generator
        self.retriever = retriever
        self.settings = settings

    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]:
        rows = [_Row(ex, Trajectory(example_id=ex.id, question=ex.question)) for ex in examples]
        for row in rows:
            row.trajectory.metadata["method"] = self.name
        if rows:
            self._run(rows)
        return [row.trajectory for row in rows]

    @abstractmethod
    def _run(self, rows: list[_Row]) -> None:
        """Advance every row until it ends; each method's own loop."""

    def _generate(
        self,
        rows: Sequence[_Row],
        prompts: Sequence[str],
        call: str,
        *,
        max_new_tokens: int | None = None,
        stop: tuple[str, ...] = (),
        logprobs: bool = False,
    ) -> list[Completion]:
        """One batched call; ``call`` names it (with the step) so each row gets its own sampling seed."""
        s = self.settings
        system = [] if s.system_prompt is None else [{"role": "system", "content": s.system_prompt}]
        sampling = [
            SamplingParams(
                temperature=s.temperature,
                max_new_tokens=max_new_tokens or s.max_new_tokens,
                stop=stop,
                seed=None if s.seed is None else _derive_seed(s.seed, row.example.id, call),
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
        return self.retriever.search(list(queries), self.settings.top_k) if queries else []

    def _search_last_queries(self, rows: Sequence[_Row]) -> None:
        """Search each row's latest query (one batched call) and attach the passages to that step, where the
        next prompt shows them: the turn-based methods (Self-Ask, ReAct) retrieve after they ask."""
        for row, found in zip(rows, self._search([r.trajectory.steps[-1].query for r in rows]), strict=True):
            row.trajectory.steps[-1].passages = found

    @staticmethod
    def _answered(row: _Row, step: Step) -> None:
        row.trajectory.steps.append(step)
        row.trajectory.status = TrajectoryStatus.ANSWERED
        row.trajectory.final_answer = step.answer

    @staticmethod
    def _failed(row: _Row, index: int, raw: str, issue: str) -> None:
        row.trajectory.steps.append(Step(index=index, raw=raw, valid=False, issues=[issue]))
        row.trajectory.status = TrajectoryStatus.FORMAT_ERROR

    def _reason(
        self,
        rows: Sequence[_Row],
        passages: Sequence[list[Passage]],
        queries: Sequence[str | None],
        index: int,
    ) -> None:
        """One reasoning step per row (CoT-style, over ``passages``): the answer line, or else the
        direct-answer fallback. Appends the step; the caller decides what it means for the trajectory."""
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


def _sentences(trajectory: Trajectory) -> list[str]:
    return [s.analysis for s in trajectory.steps if s.index >= 1 and s.analysis]


def _finish_single(row: _Row) -> None:
    """CoT and RAG with CoT: one step, answered or not."""
    step = row.trajectory.steps[-1]
    if step.answer is None:
        row.trajectory.status = TrajectoryStatus.FORMAT_ERROR
    else:
        row.trajectory.status = TrajectoryStatus.ANSWERED
        row.trajectory.final_answer = step.answer


class CoT(_Baseline):
    """Chain of thought without retrieval: the model's own knowledge (paper: "CoT")."""

    name = "cot"
    retrieves = False

    def _run(self, rows: list[_Row]) -> None:
        self._reason(rows, [[] for _ in rows], [None for _ in rows], index=1)
        for row in rows:
            _finish_single(row)


class RAGCoT(_Baseline):
    """One retrieval with the question, the top-k documents in the prompt, then chain of thought (paper:
    "RAG with CoT", top-16 documents)."""

    name = "rag-cot"

    def _run(self, rows: list[_Row]) -> None:
        questions = [row.example.question for row in rows]
        self._reason(rows, self._search(questions), questions, index=1)
        for row in rows:
            _finish_single(row)


class IterRetGen(_Baseline):
    """ITER-RETGEN: each iteration retrieves with the question plus the previous iteration's generation, then
    reasons to an answer over the new documents. It always runs the whole budget; the answer at each budget
    is the latest iteration's (an iteration without one keeps the previous answer)."""

    name = "iter-retgen"

    def _run(self, rows: list[_Row]) -> None:
        for index in range(1, self.settings.max_steps + 1):
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


class IRCoT(_Baseline):
    """IRCoT: retrieve with the question, then alternate one reasoning sentence and a retrieval with that
    sentence as the query, until a sentence gives the answer. The documents accumulate (deduplicated, at
    most ``max_passages`` in the prompt, as IRCoT caps its paragraph set)."""

    name = "ircot"

    def __init__(
        self, generator: Generator, retriever: Retriever | None, settings: Settings, max_passages: int = 15
    ):
        super().__init__(generator, retriever, settings)
        self.max_passages = max_passages

    def _passages(self, trajectory: Trajectory) -> list[Passage]:
        return [p for s in trajectory.steps for p in s.passages][: self.max_passages]

    def _run(self, rows: list[_Row]) -> None:
        for row, found in zip(rows, self._search([r.example.question for r in rows]), strict=True):
            row.trajectory.steps.append(Step(index=0, query=row.example.question, passages=found))
        open_rows = rows
        for index in range(1, self.settings.max_steps + 1):
            prompts = [
                next_sentence_prompt(
                    r.example.question, self._passages(r.trajectory), _sentences(r.trajectory)
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


class FLARE(_Baseline):
    """FLARE (direct): write the next sentence ahead; if any of its tokens is less likely than
    ``threshold``, retrieve with that sentence and write it again over the documents found. The latest
    documents stay in the prompt for the sentences after. Ends at the first sentence giving the answer."""

    name = "flare"

    def __init__(
        self, generator: Generator, retriever: Retriever | None, settings: Settings, threshold: float = 0.4
    ):
        super().__init__(generator, retriever, settings)
        self.threshold = threshold

    @staticmethod
    def _documents(trajectory: Trajectory) -> list[Passage]:
        return next((s.passages for s in reversed(trajectory.steps) if s.query is not None), [])

    def _prompt(self, row: _Row, passages: list[Passage]) -> str:
        return next_sentence_prompt(row.example.question, passages, _sentences(row.trajectory))

    def _accept(self, row: _Row, step: Step, open_rows: list[_Row]) -> None:
        step.answer = extract_answer(step.analysis)
        if step.answer is not None:
            self._answered(row, step)
        else:
            row.trajectory.steps.append(step)
            open_rows.append(row)

    def _run(self, rows: list[_Row]) -> None:
        for row in rows:
            row.trajectory.metadata["confidence"] = []
        open_rows = rows
        for index in range(1, self.settings.max_steps + 1):
            still_open: list[_Row] = []
            unsure: list[tuple[_Row, str]] = []
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
                elif confidence is not None and confidence >= self.threshold:
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


class SelfAsk(_Baseline):
    """Self-Ask: the model asks itself follow-up questions; each is searched and its documents shown, the
    model writes the intermediate answer and the next follow-up, until ``So the final answer is:``."""

    name = "self-ask"

    @staticmethod
    def _turns(trajectory: Trajectory) -> list[SelfAskTurn]:
        return [SelfAskTurn(s.analysis, s.query, s.passages) for s in trajectory.steps if s.query is not None]

    def _run(self, rows: list[_Row]) -> None:
        open_rows = rows
        for index in range(1, self.settings.max_steps + 1):
            prompts = [self_ask_prompt(r.example.question, self._turns(r.trajectory)) for r in open_rows]
            retrieving = []
            for row, completion in zip(
                open_rows, self._generate(open_rows, prompts, f"{index}:ask", stop=SELF_ASK_STOP), strict=True
            ):
                reply = parse_self_ask(completion.text)
                if reply is None:
                    self._failed(row, index, completion.text, NO_DECISION)
                elif reply.answer is not None:
                    self._answered(
                        row, Step(index=index, analysis=reply.lead, answer=reply.answer, raw=completion.text)
                    )
                else:
                    row.trajectory.steps.append(
                        Step(index=index, analysis=reply.lead, query=reply.follow_up, raw=completion.text)
                    )
                    retrieving.append(row)
            self._search_last_queries(retrieving)
            open_rows = retrieving
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS


class ReAct(_Baseline):
    """ReAct: Thought, then ``Search[query]`` (the results are the next Observation) or ``Finish[answer]``.
    A turn without a readable action is answered with an "invalid action" observation and costs its step,
    as in ReAct's own loop; the trajectory goes on."""

    name = "react"

    @staticmethod
    def _turns(trajectory: Trajectory) -> list[ReActTurn]:
        turns = []
        for step in trajectory.steps:
            if step.query is not None:
                observation = format_passages(step.passages) or "(no documents found)"
                turns.append(ReActTurn(step.analysis, f"Search[{step.query}]", observation))
            else:
                written = _ACTION_LINE.search(step.raw)
                turns.append(
                    ReActTurn(step.analysis, written.group(1).strip() if written else "", INVALID_ACTION)
                )
        return turns

    def _run(self, rows: list[_Row]) -> None:
        open_rows = rows
        for index in range(1, self.settings.max_steps + 1):
            prompts = [react_prompt(r.example.question, self._turns(r.trajectory)) for r in open_rows]
            still_open, retrieving = [], []
            for row, completion in zip(
                open_rows,
                self._generate(open_rows, prompts, f"{index}:act", stop=react_stop(index)),
                strict=True,
            ):
                reply = parse_react(completion.text)
                if reply.kind == "finish":
                    answer = clean_answer(reply.argument)
                    self._answered(
                        row, Step(index=index, analysis=reply.thought, answer=answer, raw=completion.text)
                    )
                    continue
                if reply.kind == "search":
                    step = Step(
                        index=index, analysis=reply.thought, query=reply.argument, raw=completion.text
                    )
                    retrieving.append(row)
                else:
                    step = Step(
                        index=index,
                        analysis=reply.thought,
                        raw=completion.text,
                        valid=False,
                        issues=[NO_ACTION],
                    )
                row.trajectory.steps.append(step)
                still_open.append(row)
            self._search_last_queries(retrieving)
            open_rows = still_open
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS


class R3RAG:
    """R3-RAG itself: the reason-retrieve agent in the paper's step format."""

    name = "r3rag"

    def __init__(self, generator: Generator, retriever: Retriever, config: AgentConfig):
        self.agent = Agent(generator, retriever, config)

    def run(self, examples: Sequence[QAExample]) -> list[Trajectory]:
        trajectories = self.agent.run(examples)
        for trajectory in trajectories:
            trajectory.metadata["method"] = self.name
        return trajectories


def build_method(
    name: str, generator: Generator, retriever: Retriever | None, config: EvalConfig, top_k: int | None
) -> Method:
    """The method ``name`` as ``config`` sets it up, retrieving ``top_k`` passages per search."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if name != "cot" and top_k is None:
        raise ValueError(f"{name} retrieves: it needs a top_k")
    if name == "r3rag":
        if retriever is None:
            raise ValueError("r3rag retrieves: it needs a Retriever")
        agent_config = AgentConfig(
            max_steps=config.max_steps,
            top_k=top_k,
            max_format_retries=config.r3rag_format_retries,
            temperature=config.temperature,
            seed=config.seed,
            max_new_tokens=config.max_new_tokens["r3rag"],
            max_doc_chars=config.r3rag_max_doc_chars,
            system_prompt=config.system_prompt,
        )
        return R3RAG(generator, retriever, agent_config)
    settings = Settings(
        max_steps=config.max_steps,
        top_k=top_k or 0,
        max_new_tokens=config.max_new_tokens[name],
        answer_tokens=config.answer_tokens,
        temperature=config.temperature,
        seed=config.seed,
        system_prompt=config.system_prompt,
    )
    if name == "ircot":
        return IRCoT(generator, retriever, settings, max_passages=config.ircot_max_passages)
    if name == "flare":
        return FLARE(generator, retriever, settings, threshold=config.flare_threshold)
    classes: dict[str, type[_Baseline]] = {
        "cot": CoT,
        "rag-cot": RAGCoT,
        "iter-retgen": IterRetGen,
        "self-ask": SelfAsk,
        "react": ReAct,
    }
    return classes[name](generator, retriever, settings)


def _derive_seed(seed: int, example_id: str, call: str) -> int:
    """A seed per (run seed, question, call): the same whatever else is in the batch."""
    digest = hashlib.sha256(f"{seed}:{example_id}:{call}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
