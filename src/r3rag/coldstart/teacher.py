"""The LLM teacher: any Generator writes trajectories in the step format, filtered by rejection sampling.

The paper's cold-start data comes from DeepSeek-V3 working step by step against the live retriever; only
trajectories whose final answer is judged correct are kept. Here the teacher is the ordinary
:class:`~r3rag.agent.Agent` loop with the teacher's system prompt (:mod:`~r3rag.coldstart.prompts`) in place
of the policy's, so it re-prompts malformed steps, deduplicates and cuts documents exactly as the policy's
rollouts will, and the steps it writes are SFT targets as they are. The user turn is the policy's, so only the
system turn differs between what the teacher saw and what the policy is trained on.

Rejection sampling as in the official code: attempt 1 is greedy, attempts 2..N sample at a higher
temperature (defaults 7 attempts, 0.9); the first attempt the correctness judge accepts is kept, and every
failed attempt is recorded with its reason. A question's result is yielded (and appended to the output file by
:func:`~r3rag.coldstart.records.run_teacher`) as soon as it is solved or out of attempts. How questions
advance depends on the generator:

- through an endpoint (an :class:`~r3rag.llm.base.AsyncGenerator`), every question runs its own attempts on
  the endpoint's scheduler, ``questions_in_flight`` at once, with no round that waits for the slowest;
- a local model advances ``batch_size`` questions in lockstep: each round runs the questions still unsolved
  through one batched ``Agent.run``.

Only a trajectory judged wrong (or without an answer) counts against a question. When a model call still fails
after the endpoint's retries (or the judge cannot be asked), the question stops there and its result is
*failed*: written aside, not as done, so a rerun asks again (:func:`~r3rag.coldstart.records.run_teacher`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from r3rag.agent import Agent, failed_call
from r3rag.coldstart.prompts import teacher_system_prompt
from r3rag.coldstart.records import Attempt, TeacherResult
from r3rag.config import AgentConfig, ColdStartConfig
from r3rag.llm.base import AsyncGenerator, Generator
from r3rag.retrieval.base import Retriever
from r3rag.rewards.judges import CorrectnessItem, CorrectnessJudge, Verdict, failed_judgement
from r3rag.schema import QAExample, Trajectory, TrajectoryStatus


class LLMTeacher:
    """Rejection-sampled trajectories from ``generator``; ``label`` names the teacher in the output file.
    ``questions_in_flight`` bounds the questions worked on at once through an endpoint."""

    def __init__(
        self,
        generator: Generator,
        retriever: Retriever,
        config: ColdStartConfig,
        judge: CorrectnessJudge,
        label: str = "llm",
        questions_in_flight: int = 128,
    ):
        self.generator, self.retriever, self.config, self.judge = generator, retriever, config, judge
        self.label = label
        self.questions_in_flight = questions_in_flight
        self._agents = [Agent(generator, retriever, self.agent_config(n)) for n in range(config.attempts)]

    def agent_config(self, attempt: int) -> AgentConfig:
        """The policy's settings with the teacher's prompt, budgets and a seed of its own per attempt."""
        c = self.config
        seed = c.agent.seed
        return c.agent.model_copy(
            update={
                "system_prompt": teacher_system_prompt(),
                "max_steps": c.teacher_max_steps or c.agent.max_steps,
                "max_format_retries": c.format_retries,
                "max_new_tokens": c.teacher_max_new_tokens,
                "force_answer": False,
                "record_token_ids": False,
                "seed": None if seed is None else seed + attempt,
            }
        )

    def temperature(self, attempt: int) -> float:
        return self.config.first_temperature if attempt == 0 else self.config.retry_temperature

    def solve(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]:
        """Every question's result, as each is done (per question through an endpoint, else by batches)."""
        generator = self.generator
        if isinstance(generator, AsyncGenerator):
            for _, result in generator.scheduler.map(examples, self.asolve, self.questions_in_flight):
                yield result
            return
        size = self.config.batch_size
        for start in range(0, len(examples), size):
            yield from self._solve_batch(examples[start : start + size])

    async def asolve(self, example: QAExample) -> TeacherResult:
        """One question's attempts, one after another, on the endpoint's scheduler."""
        attempts: list[Attempt] = []
        for number, agent in enumerate(self._agents):
            trajectory = await agent.arun(example, self.temperature(number))
            verdict = None
            if trajectory.status is TrajectoryStatus.ANSWERED:
                (verdict,) = await self.judge.ajudge_many([_item(example, trajectory)])
            result = self._record(example, attempts, number, trajectory, verdict)
            if result is not None:
                return result
        raise AssertionError("the last attempt always concludes")

    def _solve_batch(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]:
        """A batch in lockstep rounds: each round runs the questions still unsolved through one Agent.run."""
        attempts: list[list[Attempt]] = [[] for _ in examples]
        pending = list(range(len(examples)))
        for number, agent in enumerate(self._agents):
            if not pending:
                break
            trajectories = agent.run(
                [examples[i] for i in pending], temperatures=[self.temperature(number)] * len(pending)
            )
            verdicts = self._judge([examples[i] for i in pending], trajectories)
            unsolved = []
            for i, trajectory, verdict in zip(pending, trajectories, verdicts, strict=True):
                result = self._record(examples[i], attempts[i], number, trajectory, verdict)
                if result is None:
                    unsolved.append(i)
                else:
                    yield result
            pending = unsolved

    def _record(
        self,
        example: QAExample,
        attempts: list[Attempt],
        number: int,
        trajectory: Trajectory,
        verdict: Verdict | None,
    ) -> TeacherResult | None:
        """Record attempt ``number``; the question's result when it is concluded (kept, failed, or out of
        attempts), None when another attempt follows."""
        reason = failure_reason(trajectory, verdict, example)
        status, answer = trajectory.status.value, trajectory.final_answer
        attempts.append(Attempt(number, self.temperature(number), status, answer, reason, trajectory))
        error = failed_call(trajectory)
        if error is None and verdict is not None and failed_judgement(verdict):
            error = f"correctness judge: {verdict.fallback_reason}"
        if error is not None:
            return TeacherResult(example, self.label, None, attempts, failed=error)
        if not reason:
            return TeacherResult(example, self.label, trajectory, attempts)
        if number == self.config.attempts - 1:
            return TeacherResult(example, self.label, None, attempts)
        return None

    def _judge(self, examples: list[QAExample], trajectories: list[Trajectory]) -> list[Verdict | None]:
        """One batch of correctness verdicts for the answered trajectories; None for the others."""
        answered = [n for n, t in enumerate(trajectories) if t.status is TrajectoryStatus.ANSWERED]
        items = [_item(examples[n], trajectories[n]) for n in answered]
        verdicts: list[Verdict | None] = [None] * len(trajectories)
        for n, verdict in zip(answered, self.judge.judge_many(items), strict=True):
            verdicts[n] = verdict
        return verdicts


def _item(example: QAExample, trajectory: Trajectory) -> CorrectnessItem:
    return CorrectnessItem(example.question, trajectory.final_answer, tuple(example.answers))


def failure_reason(trajectory: Trajectory, verdict: Verdict | None, example: QAExample) -> str:
    """Why an attempt is not kept; empty when it is."""
    if trajectory.status is TrajectoryStatus.FORMAT_ERROR:
        errors = trajectory.metadata.get("errors")
        if errors:
            return f"generation error: {errors[-1]}"
        issues = trajectory.steps[-1].issues if trajectory.steps else []
        return f"format error in step {len(trajectory.steps)}: {'; '.join(issues)}"
    if trajectory.status is not TrajectoryStatus.ANSWERED:
        return f"out of steps: no final answer within {len(trajectory.steps)} steps"
    if verdict is None or not verdict.correct:
        how = f" ({verdict.source}: {verdict.fallback_reason})" if verdict and verdict.fallback_reason else ""
        return f"wrong answer: {trajectory.final_answer!r}, gold {example.answers[0]!r}{how}"
    return ""
