"""From scored trajectories to PPO samples (packed into token tensors by :mod:`r3rag.packing`).

A :class:`~r3rag.packing.Sample` is one token sequence with a mask of the tokens the policy chose (the
actions) and the rewards placed on its tokens. How a trajectory is cut into samples and where its rewards go
is the *credit scheme*, a function with the signature of :data:`CreditScheme`. :func:`step_samples` is the
paper's: each step is its own sample (official ``experience_maker.py``; reference §1.5, §3.3):

- tokens = the step's prompt (system turn, question, earlier steps and the documents they retrieved, the
  chat template's assistant header) + the step's completion, exactly the ids the rollout sampled;
- actions = the completion tokens only, end-of-turn included. Documents are written by the retriever into
  the *next* step's prompt, so they are never actions;
- reward = the step's scalar reward, on its last action token.

A trajectory-level scheme (one sequence per trajectory, rewards at the end of each step, GAE across steps)
fits the same :class:`~r3rag.packing.Sample` (actions need not be contiguous; :func:`~r3rag.packing.collate`
gathers them in order) and would be a second function next to :func:`step_samples`; the trainer only sees
the scheme it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from r3rag.packing import Sample
from r3rag.rewards.shaping import TrajectoryReward
from r3rag.schema import Trajectory

CreditScheme = Callable[[Sequence[Trajectory], Sequence[TrajectoryReward]], list[Sample]]
"""Turns a rollout's trajectories and their per-step rewards into PPO samples."""


def step_token_ids(trajectory: Trajectory) -> list[dict[str, list[int]]]:
    """The prompt and completion ids of every step, checked against the steps they belong to."""
    recorded = trajectory.metadata.get("step_token_ids")
    if recorded is None:
        raise ValueError(
            f"trajectory {trajectory.example_id!r} has no token ids: run the agent with "
            "AgentConfig(record_token_ids=True) and a backend that returns them"
        )
    if len(recorded) != len(trajectory.steps):
        raise ValueError(
            f"trajectory {trajectory.example_id!r}: token ids of {len(recorded)} steps, "
            f"but {len(trajectory.steps)} steps"
        )
    return recorded


def step_samples(trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]) -> list[Sample]:
    """The paper's credit scheme: one sample per step, its reward on its last action token."""
    if len(trajectories) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(trajectories)} trajectories")
    samples = []
    for t, (trajectory, reward) in enumerate(zip(trajectories, rewards, strict=True)):
        for s, (ids, step_reward) in enumerate(zip(step_token_ids(trajectory), reward.rewards, strict=True)):
            prompt, completion = ids["prompt"], ids["completion"]
            if not prompt or not completion:
                raise ValueError(
                    f"trajectory {trajectory.example_id!r}, step {s + 1}: empty prompt or completion ids"
                )
            tokens = (*prompt, *completion)
            mask = (False,) * len(prompt) + (True,) * len(completion)
            placed = (0.0,) * (len(tokens) - 1) + (float(step_reward),)
            samples.append(Sample(tokens, mask, placed, trajectory=t, step=s))
    return samples
