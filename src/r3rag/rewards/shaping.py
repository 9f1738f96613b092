"""The R3-RAG hybrid reward: one scalar per step of a finished trajectory, with its breakdown.

Every step is its own PPO sample in R3-RAG, so the reward is per step (paper §3, reference §3.2)::

    r(step) = format reward                          if the step is not in the required format
            = outcome (correct 2.0 / wrong 0.0)       on the final-answer step
            = lambda_T x Rel(step's new documents)    on a retrieval step (over the trajectory's number
                                              of retrieval steps with scale "trajectory", over that
                                              or the question's gold hops if more with scale "hops")
      + the search bonus, on a retrieval step (ours, off by default): gold_recall x the share of the gold
        passages the step reached first + bridge_queries x the share of the bridge entities its query
        named first (computed by r3rag.rewards.scoring); with search_bonus_needs_answer, only on a
        trajectory that answered

lambda_T depends on how the whole trajectory ended (1.6 correct, 0.8 wrong, 0.9 out of steps, 1.0 format
error). Since there is no return across steps, lambda_T is the only way the outcome reaches the retrieval
steps. The ``outcome`` and ``process`` modes reproduce the official ablation variants (see RewardConfig).

This module is pure arithmetic on a trajectory and the judges' results; it calls no judge. It is strict
about the shape of its input (a trajectory that is still running, an answer step that is not last, a
format-error trajectory whose last step is valid): those are bugs upstream, and a reward computed from them
would be silently wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from r3rag.config import RewardConfig
from r3rag.schema import Trajectory, TrajectoryStatus


class StepKind(StrEnum):
    RETRIEVAL = "retrieval"
    ANSWER = "answer"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class StepReward:
    """One step's reward and its parts: ``total = format + outcome + process``; ``relevance`` is the raw Rel
    the process part was computed from (None on steps that retrieved nothing); ``process`` also holds the
    step's search bonus (``RewardConfig.gold_recall``, ``RewardConfig.bridge_queries``) when one is paid."""

    index: int
    kind: StepKind
    format: float
    outcome: float
    process: float
    relevance: float | None
    total: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind.value,
            "format": self.format,
            "outcome": self.outcome,
            "process": self.process,
            "relevance": self.relevance,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class TrajectoryReward:
    """The rewards of one trajectory, step by step, with what they were computed from (for the training log).

    ``lambda_t`` is the trajectory's lambda_T (None in outcome-only mode, which pays no Rel); Rel was
    multiplied by it, or by it over the retrieval steps with ``RewardConfig.scale`` "trajectory".
    """

    status: TrajectoryStatus
    correct: bool | None
    lambda_t: float | None
    steps: tuple[StepReward, ...]

    @property
    def rewards(self) -> list[float]:
        """One scalar per step, in step order: what the trainer puts on each step's last token."""
        return [s.total for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "correct": self.correct,
            "lambda_t": self.lambda_t,
            "rewards": self.rewards,
            "steps": [s.to_dict() for s in self.steps],
        }


def lambda_t(status: TrajectoryStatus, correct: bool | None, config: RewardConfig) -> float:
    """The trajectory factor on Rel: by outcome in hybrid mode, 1 in process-only mode."""
    if config.mode == "process":
        return 1.0
    if status == TrajectoryStatus.ANSWERED:
        return config.lambda_correct if correct else config.lambda_wrong
    if status == TrajectoryStatus.OUT_OF_STEPS:
        return config.lambda_out_of_steps
    if status == TrajectoryStatus.FORMAT_ERROR:
        return config.lambda_format_error
    raise ValueError(f"no reward for a trajectory with status {status.value!r}")


def _check(
    trajectory: Trajectory, correct: bool | None, n_relevances: int | None, n_bonuses: int | None
) -> None:
    """Refuse trajectories whose shape contradicts their status (see the module docstring), and per-search
    scores (Rel, search bonuses) that are not one per retrieval step."""
    status, steps = trajectory.status, trajectory.steps
    retrievals = sum(s.is_retrieval for s in steps)
    problem = ""
    if status == TrajectoryStatus.RUNNING:
        problem = "it is still running"
    elif not steps:
        problem = "it has no steps"
    elif (status == TrajectoryStatus.ANSWERED) != (correct is not None):
        problem = "a correctness verdict must be given exactly for answered trajectories"
    elif status == TrajectoryStatus.ANSWERED and not steps[-1].is_answer:
        problem = "it is answered but does not end with an answer step"
    elif any(s.valid and not (s.is_answer or s.is_retrieval) for s in steps):
        problem = "a valid step has neither a query nor an answer"
    elif any(s.is_answer for s in steps[:-1]):
        problem = "an answer step comes before the last step"
    elif status == TrajectoryStatus.FORMAT_ERROR and steps[-1].valid:
        problem = "it ended in a format error but its last step is valid"
    elif n_relevances is not None and n_relevances != retrievals:
        problem = f"{n_relevances} relevance scores for {retrievals} retrieval steps"
    elif n_bonuses is not None and n_bonuses != retrievals:
        problem = f"{n_bonuses} search bonuses for {retrievals} retrieval steps"
    if problem:
        raise ValueError(f"cannot reward trajectory {trajectory.example_id!r}: {problem}")


def shape_rewards(
    trajectory: Trajectory,
    correct: bool | None,
    relevances: Sequence[float] | None,
    config: RewardConfig,
    search_bonuses: Sequence[float] | None = None,
    hops: int = 0,
) -> TrajectoryReward:
    """Per-step rewards of a finished trajectory.

    ``correct`` is the correctness verdict for an answered trajectory and None otherwise. ``relevances`` holds
    Rel in [0, 1] for each valid retrieval step, in order; it may be None only in outcome-only mode.
    ``search_bonuses`` holds, likewise, each retrieval step's bonus, already weighted
    (:meth:`~r3rag.rewards.scoring.TrajectoryScorer.search_bonuses`), needed when ``config`` pays one
    (:attr:`~r3rag.config.RewardConfig.pays_search_bonus`); it is part of the step's ``process`` reward
    (under ``RewardConfig.search_bonus_needs_answer``, only on a trajectory that answered).
    ``hops``, the question's number of gold hops, is what ``RewardConfig.scale`` "hops" spreads Rel over at
    least.
    """
    if config.scale == "hops" and hops < 1:
        raise ValueError(f"reward.scale 'hops' needs the question's gold hop count, got {hops}")
    if relevances is None and config.mode != "outcome":
        raise ValueError(f"mode {config.mode!r} needs a relevance score for every retrieval step")
    if search_bonuses is None and config.pays_search_bonus:
        raise ValueError("reward.gold_recall / reward.bridge_queries need a bonus for every retrieval step")
    _check(
        trajectory,
        correct,
        None if relevances is None else len(relevances),
        None if search_bonuses is None else len(search_bonuses),
    )
    if relevances is not None and any(not 0.0 <= r <= 1.0 for r in relevances):
        raise ValueError(f"relevance scores must lie in [0, 1], got {list(relevances)}")

    factor = None if config.mode == "outcome" else lambda_t(trajectory.status, correct, config)
    # What one unit of Rel earns on a step: lambda_T, or lambda_T over the retrieval steps (mean Rel), or
    # over the gold hops while the trajectory searched no more often than the question needs.
    per_trajectory = config.scale != "step"
    least = hops if config.scale == "hops" else 1
    spread = max(len(relevances or ()), least) if per_trajectory else 1
    per_rel = None if factor is None else factor / spread
    outcome = config.correct_reward if correct else config.wrong_reward
    # Outcome-only mode pays the outcome on every valid step (or its share of it, so that the trajectory's
    # sum is the outcome once); trajectories without an answer earn none.
    valid_steps = sum(step.valid for step in trajectory.steps) if per_trajectory else 1
    outcome_every_step = outcome / valid_steps if trajectory.status == TrajectoryStatus.ANSWERED else 0.0
    pays_bonus = trajectory.status == TrajectoryStatus.ANSWERED or not config.search_bonus_needs_answer
    pending = iter(relevances or ())
    bonuses = iter((search_bonuses or ()) if pays_bonus else ())  # withheld: every step's next() is 0.0

    def rounded(x: float) -> float:
        return x if config.round_digits is None else round(x, config.round_digits)

    steps: list[StepReward] = []
    for step in trajectory.steps:
        fmt = out = proc = 0.0
        relevance: float | None = None
        if not step.valid:
            kind, fmt = StepKind.INVALID, config.format_reward
        elif step.is_answer:
            kind = StepKind.ANSWER
            out = {"hybrid": outcome, "outcome": outcome_every_step, "process": 0.0}[config.mode]
        else:
            kind = StepKind.RETRIEVAL
            relevance = next(pending, None)
            if per_rel is not None and relevance is not None:
                proc = per_rel * relevance
            proc += next(bonuses, 0.0)
            if config.mode == "outcome":
                out = outcome_every_step
        steps.append(
            StepReward(
                index=step.index,
                kind=kind,
                format=rounded(fmt),
                outcome=rounded(out),
                process=rounded(proc),
                relevance=relevance,
                total=rounded(fmt + out + proc),
            )
        )
    return TrajectoryReward(trajectory.status, correct, factor, tuple(steps))
