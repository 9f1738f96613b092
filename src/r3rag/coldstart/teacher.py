"""The LLM teacher: any Generator writes trajectories in the step format, filtered by rejection sampling.

The paper's cold-start data comes from DeepSeek-V3 working step by step against the live retriever; only
trajectories whose final answer is judged correct are kept. Here the teacher is the ordinary
:class:`~r3rag.agent.Agent` loop with the teacher's system prompt (:mod:`~r3rag.coldstart.prompts`) in place
of the policy's, so it batches questions, re-prompts malformed steps, deduplicates and cuts documents exactly
as the policy's rollouts will, and the steps it writes are SFT targets as they are. The user turn is the
policy's, so only the system turn differs between what the teacher saw and what the policy is trained on.

Rejection sampling as in the official code: attempt 1 is greedy, attempts 2..N sample at a higher
temperature (defaults 7 attempts, 0.9); the first attempt the correctness judge accepts is kept, and every
failed attempt is recorded with its reason. All questions of a batch advance together: each round runs the
questions still unsolved through one ``Agent.run``, and a question's result is yielded (and appended to the
output file by :func:`~r3rag.coldstart.records.run_teacher`) as soon as it is solved or out of attempts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from r3rag.agent import Agent
from r3rag.coldstart.prompts import teacher_system_prompt
from r3rag.coldstart.records import Attempt, TeacherResult
from r3rag.config import AgentConfig, ColdStartConfig
from r3rag.llm.base import Generator
from r3rag.retrieval.base import Retriever
from r3rag.rewards.judges import CorrectnessItem, CorrectnessJudge, Verdict
from r3rag.schema import QAExample, Trajectory, TrajectoryStatus


class LLMTeacher:
    """Rejection-sampled trajectories from ``generator``; ``label`` names the teacher in the output file."""

    def __init__(
        self,
        generator: Generator,
        retriever: Retriever,
        config: ColdStartConfig,
        judge: CorrectnessJudge,
        label: str = "llm",
    ):
        self.generator, self.retriever, self.config, self.judge = generator, retriever, config, judge
        self.label = label

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

    def solve(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]:
        attempts: list[list[Attempt]] = [[] for _ in examples]
        pending = list(range(len(examples)))
        last = self.config.attempts - 1
        for number in range(self.config.attempts):
            if not pending:
                break
            temperature = self.config.first_temperature if number == 0 else self.config.retry_temperature
            agent = Agent(self.generator, self.retriever, self.agent_config(number))
            trajectories = agent.run(
                [examples[i] for i in pending], temperatures=[temperature] * len(pending)
            )
            verdicts = self._judge([examples[i] for i in pending], trajectories)
            unsolved = []
            for i, trajectory, verdict in zip(pending, trajectories, verdicts, strict=True):
                reason = failure_reason(trajectory, verdict, examples[i])
                attempts[i].append(
                    Attempt(
                        number,
                        temperature,
                        trajectory.status.value,
                        trajectory.final_answer,
                        reason,
                        trajectory,
                    )
                )
                if not reason:
                    yield TeacherResult(examples[i], self.label, trajectory, attempts[i])
                elif number == last:
                    yield TeacherResult(examples[i], self.label, None, attempts[i])
                else:
                    unsolved.append(i)
            pending = unsolved

    def _judge(self, examples: list[QAExample], trajectories: list[Trajectory]) -> list[Verdict | None]:
        """One batch of correctness verdicts for the answered trajectories; None for the others."""
        answered = [n for n, t in enumerate(trajectories) if t.status is TrajectoryStatus.ANSWERED]
        items = [
            CorrectnessItem(examples[n].question, trajectories[n].final_answer, tuple(examples[n].answers))
            for n in answered
        ]
        verdicts: list[Verdict | None] = [None] * len(trajectories)
        for n, verdict in zip(answered, self.judge.judge_many(items), strict=True):
            verdicts[n] = verdict
        return verdicts


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
