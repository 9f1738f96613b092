"""One rollout: questions through the agent at several temperatures, the hybrid reward on every step.

The agent loop and the reward know nothing of PPO; this module only wires them together for the trainer
and summarises what happened (accuracy, format, retrievals, reward parts) for the training log.

A trajectory cut short by a *backend* error (the generator failed; the agent records it as a format-error
step with the message in ``metadata["errors"]``) is dropped before scoring, and counted: nothing was sampled
for that step, and the trajectory's ending (hence lambda_T for its earlier steps) says nothing about the
policy. A step the policy itself wrote in a wrong format is kept and gets the format penalty.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from r3rag.agent import Agent
from r3rag.rewards.shaping import TrajectoryReward
from r3rag.schema import QAExample, Trajectory, TrajectoryStatus


class Scorer(Protocol):
    """What the trainer needs of :class:`~r3rag.rewards.TrajectoryScorer` (tests pass toy rewards)."""

    def score(
        self, examples: Sequence[QAExample], trajectories: Sequence[Trajectory]
    ) -> list[TrajectoryReward]: ...

    def stats(self) -> dict[str, int]: ...


@dataclass(slots=True)
class Rollout:
    """Scored trajectories, each with the example it answers, and what the rollout cost."""

    examples: list[QAExample]
    trajectories: list[Trajectory]
    rewards: list[TrajectoryReward]
    dropped: int
    generate_seconds: float
    score_seconds: float
    judge_stats: dict[str, int]


def repeat(
    examples: Sequence[QAExample], samples: int, temperatures: Sequence[float]
) -> tuple[list[QAExample], list[float]]:
    """Each question ``samples`` times, the i-th repeat at ``temperatures[i % len]`` (the paper's 4 samples at
    0.1/0.4/0.7/1.0)."""
    repeated = [ex for ex in examples for _ in range(samples)]
    temps = [float(temperatures[i % len(temperatures)]) for _ in examples for i in range(samples)]
    return repeated, temps


def collect(
    agent: Agent, scorer: Scorer, examples: Sequence[QAExample], temperatures: Sequence[float]
) -> Rollout:
    """Run ``examples`` (already repeated) at their ``temperatures`` and score what came back."""
    started = time.perf_counter()
    trajectories = agent.run(examples, temperatures=temperatures)
    generated = time.perf_counter()
    kept = [i for i, t in enumerate(trajectories) if not t.metadata.get("errors")]
    kept_examples = [examples[i] for i in kept]
    kept_trajectories = [trajectories[i] for i in kept]
    before = scorer.stats()
    rewards = scorer.score(kept_examples, kept_trajectories) if kept else []
    after = scorer.stats()
    return Rollout(
        examples=kept_examples,
        trajectories=kept_trajectories,
        rewards=rewards,
        dropped=len(trajectories) - len(kept),
        generate_seconds=generated - started,
        score_seconds=time.perf_counter() - generated,
        judge_stats={key: value - before.get(key, 0) for key, value in after.items()},
    )


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def trajectory_metrics(
    trajectories: Sequence[Trajectory], correct: Sequence[bool | None]
) -> dict[str, float]:
    """How the trajectories went: accuracy, endings, format validity, retrievals and tokens."""
    steps = [s for t in trajectories for s in t.steps]
    n = len(trajectories)
    ended = {
        status: sum(t.status == status for t in trajectories) / n if n else 0.0 for status in TrajectoryStatus
    }
    return {
        "accuracy": _mean([float(bool(c)) for c in correct]),
        "answered": ended[TrajectoryStatus.ANSWERED],
        "out_of_steps": ended[TrajectoryStatus.OUT_OF_STEPS],
        "format_error": ended[TrajectoryStatus.FORMAT_ERROR],
        "step_valid": _mean([float(s.valid) for s in steps]),
        "steps_per_trajectory": _mean([len(t.steps) for t in trajectories]),
        "retrievals_per_trajectory": _mean([len(t.retrieval_steps) for t in trajectories]),
        "regenerations_per_trajectory": _mean([t.metadata.get("regenerations", 0) for t in trajectories]),
        "generated_tokens": float(sum(t.completion_tokens for t in trajectories)),
    }


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """The training log's view of a rollout: ``rollout/*`` and the reward with its parts (``reward/*``)."""
    out = {
        f"rollout/{k}": v
        for k, v in trajectory_metrics(rollout.trajectories, [r.correct for r in rollout.rewards]).items()
    }
    out["rollout/trajectories"] = float(len(rollout.trajectories))
    out["rollout/dropped_backend_errors"] = float(rollout.dropped)
    out["rollout/tokens_per_s"] = out["rollout/generated_tokens"] / max(rollout.generate_seconds, 1e-9)
    steps = [s for r in rollout.rewards for s in r.steps]
    out["reward/step_mean"] = _mean([s.total for s in steps])
    out["reward/trajectory_mean"] = _mean([sum(r.rewards) for r in rollout.rewards])
    for part in ("format", "outcome", "process"):
        out[f"reward/{part}"] = _mean([getattr(s, part) for s in steps])
    out["reward/relevance"] = _mean([s.relevance for s in steps if s.relevance is not None])
    out.update({f"judge/{k}": float(v) for k, v in rollout.judge_stats.items()})
    return out
