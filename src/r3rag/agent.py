"""The reason-retrieve loop: questions worked through step by step by a policy and a retriever.

A question's loop is written once, as :meth:`Agent._episode`: a Python generator that yields what it needs
next (a completion, a search, a moment to report its step) and is sent the answer. Two drivers run it:

- :meth:`Agent.run` (local models, RL rollouts): a batch in lockstep. Each round serves the requests of the
  lowest step any question is at: all its generations in one batched ``generate`` call (re-generations of
  malformed steps come back as further rounds of the same step), then all its searches in one batched
  ``search`` call, so throughput grows with the batch instead of being paid per question.
- :meth:`Agent.arun` (a remote endpoint, an :class:`~r3rag.llm.base.AsyncGenerator`): one question on its own,
  each completion awaited on the endpoint's scheduler, so that with many questions in flight a slow one holds
  no other (:meth:`~r3rag.llm.scheduler.Scheduler.map` runs them).

Both send the same prompts with the same seeds, parse, re-generate, force and deduplicate the same way, so a
question gets the same trajectory from either. The loop knows nothing of the backend or the retriever beyond
their protocols, nor of rewards or trainers: a PPO trainer, the evaluation runner or a veRL adapter wrap it.

A question ends when its step gives a final answer (``answered``), when a step stays malformed after the
allowed re-generations (``format-error``; a backend error counts as one, with the message in
``metadata["errors"]``, and a trajectory ended by one also has ``metadata["failed_call"]``: see
:func:`failed_call`), or when the step budget runs out (``out-of-steps``; optionally one more turn asks for
the final answer, and a valid one makes the trajectory ``answered`` with ``metadata["forced_answer"]``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from collections.abc import Generator as Episode
from dataclasses import dataclass, field

from r3rag.config import AgentConfig
from r3rag.llm.base import AsyncGenerator, Completion, Conversation, Generator, SamplingParams
from r3rag.retrieval.base import Retriever
from r3rag.runs import derive_seed
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.steps import build_messages, parse_step

StepCallback = Callable[[Trajectory, Step], None]
"""Called once per finished step (after its retrieval), in batch order; ``r3rag ask`` prints with it."""

FORCED_NOT_ANSWER = "the forced final step did not give a final answer"


@dataclass(slots=True)
class _Row:
    """One question in flight."""

    position: int
    trajectory: Trajectory
    temperature: float
    occurrence: int  # earlier rows with the same example id (an RL rollout repeats each question)
    seen: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Generate:
    """An episode needs a completion of ``conversation`` for its step ``index``."""

    index: int
    conversation: Conversation
    sampling: SamplingParams


@dataclass(frozen=True, slots=True)
class _Search:
    """An episode needs the ranking of ``query`` for its step ``index``: ``top_k`` new passages, after the
    ``seen`` ones it may already hold."""

    index: int
    query: str
    seen: int


@dataclass(frozen=True, slots=True)
class _Report:
    """An episode finished its step ``index``: the batch driver reports steps in batch order, after every
    search of that step."""

    index: int
    trajectory: Trajectory
    step: Step


_Request = _Generate | _Search | _Report
_PHASE = {_Generate: 0, _Search: 1, _Report: 2}  # within a step: generate, then search, then report


def failed_call(trajectory: Trajectory) -> str | None:
    """The error of the model call that ended ``trajectory`` (still failing after the endpoint's retries),
    None when it ended otherwise. Such a question is not done: a rerun should ask again."""
    error = trajectory.metadata.get("failed_call")
    return error if isinstance(error, str) else None


class Agent:
    """Runs questions through ``generator`` (the policy) and ``retriever``, as :class:`AgentConfig` says."""

    def __init__(self, generator: Generator, retriever: Retriever, config: AgentConfig | None = None):
        self.generator = generator
        self.retriever = retriever
        self.config = config or AgentConfig()
        self._searching = asyncio.Lock()  # one search at a time off the event loop: retrievers need no locks

    def run(
        self,
        examples: Sequence[QAExample],
        temperatures: Sequence[float] | None = None,
        on_step: StepCallback | None = None,
    ) -> list[Trajectory]:
        """One trajectory per example, in order, the batch advancing in lockstep.

        ``temperatures`` gives each example its own sampling temperature (an RL rollout repeats each question
        at 0.1/0.4/0.7/1.0); by default all use ``config.temperature``.
        """
        if temperatures is not None and len(temperatures) != len(examples):
            raise ValueError(f"{len(temperatures)} temperatures for {len(examples)} examples")
        occurrences: Counter[str] = Counter()
        rows = []
        for n, ex in enumerate(examples):
            temperature = self.config.temperature if temperatures is None else float(temperatures[n])
            rows.append(self._row(n, ex, temperature, occurrences[ex.id]))
            occurrences[ex.id] += 1
        episodes = {row.position: self._episode(row) for row in rows}
        waiting: dict[int, _Request] = {position: next(episode) for position, episode in episodes.items()}
        while waiting:
            first = min((r.index, _PHASE[type(r)]) for r in waiting.values())
            due = sorted(p for p, r in waiting.items() if (r.index, _PHASE[type(r)]) == first)
            for position, answer in zip(due, self._serve([waiting[p] for p in due], on_step), strict=True):
                try:
                    waiting[position] = episodes[position].send(answer)
                except StopIteration:
                    del waiting[position]
        return [row.trajectory for row in rows]

    def _serve(
        self, requests: list[_Request], on_step: StepCallback | None
    ) -> list[Completion | list[Passage] | None]:
        """Answer one round of requests of one kind: one batched call for all of them."""
        if isinstance(requests[0], _Generate):
            generations = [r for r in requests if isinstance(r, _Generate)]
            return list(
                self.generator.generate(
                    [r.conversation for r in generations], [r.sampling for r in generations]
                )
            )
        if isinstance(requests[0], _Search):
            searches = [r for r in requests if isinstance(r, _Search)]
            extra = max(r.seen for r in searches)
            return list(self.retriever.search([r.query for r in searches], self.config.top_k + extra))
        if on_step is not None:
            for request in requests:
                assert isinstance(request, _Report)
                on_step(request.trajectory, request.step)
        return [None] * len(requests)

    async def arun(
        self, example: QAExample, temperature: float | None = None, occurrence: int = 0
    ) -> Trajectory:
        """One question on its own, on the event loop of the generator's scheduler (an AsyncGenerator):
        the trajectory :meth:`run` would give it, whatever else is in flight."""
        generator = self.generator
        if not isinstance(generator, AsyncGenerator):
            raise TypeError(
                f"{type(generator).__name__} cannot complete one conversation at a time (not async)"
            )
        row = self._row(
            0, example, self.config.temperature if temperature is None else temperature, occurrence
        )
        episode = self._episode(row)
        answer: Completion | list[Passage] | None = None
        while True:
            try:
                request = episode.send(answer)
            except StopIteration:
                return row.trajectory
            if isinstance(request, _Generate):
                answer = await generator.complete(request.conversation, request.sampling)
            elif isinstance(request, _Search):
                async with self._searching:
                    (answer,) = await asyncio.to_thread(
                        self.retriever.search, [request.query], self.config.top_k + request.seen
                    )
            else:
                answer = None

    def _row(self, position: int, example: QAExample, temperature: float, occurrence: int) -> _Row:
        trajectory = Trajectory(example_id=example.id, question=example.question)
        trajectory.metadata.update(temperature=temperature, regenerations=0)
        if self.config.record_token_ids:
            trajectory.metadata["step_token_ids"] = []
        return _Row(position, trajectory, temperature, occurrence)

    def _episode(self, row: _Row) -> Episode[_Request, Completion | list[Passage] | None, None]:
        """One question from its first step to its end, as requests for the driver (see the module)."""
        c = self.config
        trajectory = row.trajectory
        for index in range(1, c.max_steps + 1):
            step = yield from self._step(row, index, forced=False)
            trajectory.steps.append(step)
            if not step.valid:
                trajectory.status = TrajectoryStatus.FORMAT_ERROR
            elif step.is_answer:
                trajectory.status = TrajectoryStatus.ANSWERED
                trajectory.final_answer = step.answer
            else:
                seen = len(row.seen) if c.dedup_passages else 0
                hits = yield _Search(index, step.query or "", seen)
                assert isinstance(hits, list)
                step.passages = select_passages(hits, row.seen, c.top_k, c.dedup_passages)
                row.seen |= {p.id for p in step.passages}
            yield _Report(index, trajectory, step)
            if not step.valid or step.is_answer:
                return
        if not c.force_answer:
            trajectory.status = TrajectoryStatus.OUT_OF_STEPS
            return
        index = c.max_steps + 1
        step = yield from self._step(row, index, forced=True)
        trajectory.metadata["forced_answer"] = step.valid
        if step.valid:
            trajectory.steps.append(step)
            trajectory.status = TrajectoryStatus.ANSWERED
            trajectory.final_answer = step.answer
            yield _Report(index, trajectory, step)
        else:
            trajectory.status = TrajectoryStatus.OUT_OF_STEPS
            trajectory.metadata["forced_answer_raw"] = step.raw

    def _step(
        self, row: _Row, index: int, forced: bool
    ) -> Episode[_Request, Completion | list[Passage] | None, Step]:
        """Step ``index``: a completion, re-generated while malformed; the last attempt (``valid=False``)
        when every one was. A step lost to a failed call marks the trajectory (:func:`failed_call`)."""
        trajectory = row.trajectory
        last = self.config.max_format_retries
        for attempt in range(last + 1):
            if attempt:
                trajectory.metadata["regenerations"] += 1
            completion = yield _Generate(
                index, self._messages(row, forced), self._sampling(row, index, attempt)
            )
            assert isinstance(completion, Completion)
            trajectory.prompt_tokens += completion.prompt_tokens
            trajectory.completion_tokens += completion.completion_tokens
            step = self._to_step(completion, index, forced, trajectory)
            if step.valid or attempt == last:
                self._accept(trajectory, completion, step, forced)
                return step
        raise AssertionError("the last attempt is always accepted")

    def _accept(self, trajectory: Trajectory, completion: Completion, step: Step, forced: bool) -> None:
        """Note what the step's last completion leaves on the trajectory: the call that failed, if it did;
        its token ids, for RL."""
        if completion.finish_reason == "error":
            trajectory.metadata["failed_call"] = completion.error or "unknown generation error"
        if self.config.record_token_ids and (not forced or step.valid):
            ids: dict[str, list[int] | list[float]] = {
                "prompt": completion.prompt_token_ids,
                "completion": completion.completion_token_ids,
            }
            if self.config.record_logprobs:
                ids["logprobs"] = completion.token_logprobs
            trajectory.metadata["step_token_ids"].append(ids)

    @staticmethod
    def _to_step(completion: Completion, index: int, forced: bool, trajectory: Trajectory) -> Step:
        if completion.finish_reason == "error":
            trajectory.metadata.setdefault("errors", []).append(
                completion.error or "unknown generation error"
            )
            return Step(index=index, valid=False, issues=[f"generation error: {completion.error}"])
        step = parse_step(completion.text, expected_index=index)
        if forced and step.valid and not step.is_answer:
            step.valid = False
            step.issues.append(FORCED_NOT_ANSWER)
        return step

    def _messages(self, row: _Row, forced: bool) -> Conversation:
        c = self.config
        messages = build_messages(
            row.trajectory.question, row.trajectory.steps, c.system_prompt, c.max_doc_chars
        )
        if forced:  # the step format itself has no "answer now" turn; the instruction rides on the user turn
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n{c.force_answer_prompt}"}
        return messages

    def _sampling(self, row: _Row, index: int, attempt: int) -> SamplingParams:
        c = self.config
        temperature = row.temperature if attempt == 0 else max(row.temperature, c.retry_temperature)
        return SamplingParams(
            temperature=temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            stop=(*c.stop, f"\nStep {index + 1}:"),
            seed=None if c.seed is None else _row_seed(c.seed, row, index, attempt),
            logprobs=c.record_token_ids and c.record_logprobs,
        )


def select_passages(hits: Sequence[Passage], seen: set[str], k: int, dedup: bool) -> list[Passage]:
    """What a retrieval step keeps of a ranking: the first ``k`` distinct hits, minus those already ``seen``
    in the trajectory when ``dedup``. The oracle teacher retrieves through this too, so its trajectories
    hold exactly the documents the agent would have put in front of the policy."""
    chosen: list[Passage] = []
    ids: set[str] = set()
    for passage in hits:
        if passage.id in ids or (dedup and passage.id in seen):
            continue
        chosen.append(passage)
        ids.add(passage.id)
        if len(chosen) == k:
            break
    return chosen


def _row_seed(seed: int, row: _Row, index: int, attempt: int) -> int:
    """A seed per (run seed, example, repeat, step, attempt): different for every retry, and the same whatever
    else is in the batch, so a question samples the same trajectory at batch size 1 and 32."""
    return derive_seed(seed, row.trajectory.example_id, row.occurrence, index, attempt)
