"""The training curve's dev point: greedy accuracy of the current actor on a fixed dev subset.

Greedy decoding, the rollout's agent settings and the same questions every time, so the points of a run (and
the R3-RAG-CS point before the first update) are comparable. This is a progress check inside training, not
the benchmark: ``r3rag eval`` owns baselines, datasets and budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

from r3rag.agent import Agent
from r3rag.rewards.judges import CorrectnessItem, CorrectnessJudge
from r3rag.rl.rollout import trajectory_metrics
from r3rag.schema import QAExample, Trajectory, TrajectoryStatus


def evaluate(
    agent: Agent, judge: CorrectnessJudge, examples: Sequence[QAExample]
) -> tuple[dict[str, float], list[Trajectory]]:
    """``dev/*`` metrics (accuracy by the correctness judge, endings, retrievals) and the trajectories."""
    trajectories = agent.run(examples)
    answered = [i for i, t in enumerate(trajectories) if t.status == TrajectoryStatus.ANSWERED]
    verdicts = judge.judge_many(
        [
            CorrectnessItem(examples[i].question, trajectories[i].final_answer, tuple(examples[i].answers))
            for i in answered
        ]
    )
    correct: list[bool | None] = [None] * len(trajectories)
    for i, verdict in zip(answered, verdicts, strict=True):
        correct[i] = verdict.correct
        trajectories[i].metadata["correct"] = verdict.correct
    metrics = trajectory_metrics(trajectories, correct)
    return {f"dev/{k}": v for k, v in metrics.items() if k != "regenerations_per_trajectory"}, trajectories
