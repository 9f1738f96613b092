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

The other schemes keep that cut and change only the scalar a step carries (``PPOConfig.advantage``):
:func:`return_to_go_samples` (the step's reward plus every later one's, for GAE),
:func:`group_baseline_samples` (the trajectory's return against its question's other samples, RLOO or GRPO,
for a critic-free update) and :func:`step_baseline_samples` (the step's reward-to-go against the other
samples', critic-free). The trainer only sees the scheme it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from r3rag.config import Advantage
from r3rag.packing import Sample
from r3rag.rewards.shaping import TrajectoryReward
from r3rag.rl.losses import (
    group_normalized_advantages,
    leave_one_out_advantages,
    leave_one_out_step_advantages,
    rewards_to_go,
)
from r3rag.schema import Trajectory

CreditScheme = Callable[[Sequence[Trajectory], Sequence[TrajectoryReward]], list[Sample]]
"""Turns a rollout's trajectories and their per-step rewards into PPO samples."""
GroupBaseline = Callable[[Sequence[float], Sequence[Hashable]], list[float]]
"""Trajectory returns and their group labels -> advantages (:mod:`r3rag.rl.losses`)."""


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


def samples_with_rewards(
    trajectories: Sequence[Trajectory], step_values: Sequence[Sequence[float]]
) -> list[Sample]:
    """One sample per step of every trajectory, ``step_values[t][s]`` on step s's last action token: every
    credit scheme below cuts trajectories the same way and differs only in the scalar a step carries."""
    samples = []
    for t, (trajectory, values) in enumerate(zip(trajectories, step_values, strict=True)):
        for s, (ids, value) in enumerate(zip(step_token_ids(trajectory), values, strict=True)):
            prompt, completion = ids["prompt"], ids["completion"]
            if not prompt or not completion:
                raise ValueError(
                    f"trajectory {trajectory.example_id!r}, step {s + 1}: empty prompt or completion ids"
                )
            logprobs = tuple(ids.get("logprobs", ()))
            if "logprobs" in ids and len(logprobs) != len(completion):
                raise ValueError(
                    f"trajectory {trajectory.example_id!r}, step {s + 1}: {len(logprobs)} log-probs for "
                    f"{len(completion)} completion tokens (a backend that does not report them all)"
                )
            tokens = (*prompt, *completion)
            mask = (False,) * len(prompt) + (True,) * len(completion)
            placed = (0.0,) * (len(tokens) - 1) + (float(value),)
            samples.append(Sample(tokens, mask, placed, trajectory=t, step=s, behaviour_logprobs=logprobs))
    return samples


def uniform_groups(trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]) -> set[str]:
    """The questions whose trajectories all got the same return (to 1e-9: sums of rewards in another order):
    a group baseline gives each of them a zero advantage (``PPOConfig.skip_uniform_groups``). A question
    sampled once is uniform too."""
    _check_lengths(trajectories, rewards)
    returns: dict[str, set[float]] = {}
    for trajectory, reward in zip(trajectories, rewards, strict=True):
        returns.setdefault(trajectory.example_id, set()).add(round(sum(reward.rewards), 9))
    return {question for question, values in returns.items() if len(values) == 1}


def _check_lengths(trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]) -> None:
    if len(trajectories) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(trajectories)} trajectories")


def step_samples(trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]) -> list[Sample]:
    """The paper's credit scheme: one sample per step, its own reward on its last action token."""
    _check_lengths(trajectories, rewards)
    return samples_with_rewards(trajectories, [r.rewards for r in rewards])


def return_to_go_samples(
    trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]
) -> list[Sample]:
    """Trajectory-level returns spread over the steps: each step carries its reward plus every later step's
    (:func:`~r3rag.rl.losses.rewards_to_go`), so a search is credited with the answer it led to, not only
    with lambda_T x Rel."""
    _check_lengths(trajectories, rewards)
    return samples_with_rewards(trajectories, [rewards_to_go(r.rewards) for r in rewards])


def group_baseline_samples(baseline: GroupBaseline) -> CreditScheme:
    """A critic-free scheme: a trajectory's return is the sum of its step rewards, compared with the other
    trajectories of the same question (the rollout's samples of one question are the group) by ``baseline``,
    and every one of its steps carries that advantage on its last action token. The trainer then uses no
    value: with gamma = lambda = 1 each action token's advantage is the trajectory's, less the KL penalty
    still to come in its step."""

    def scheme(trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]) -> list[Sample]:
        _check_lengths(trajectories, rewards)
        advantages = baseline([sum(r.rewards) for r in rewards], [t.example_id for t in trajectories])
        return samples_with_rewards(
            trajectories, [[a] * len(r.rewards) for a, r in zip(advantages, rewards, strict=True)]
        )

    return scheme


def step_baseline_samples(
    trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]
) -> list[Sample]:
    """Critic-free returns-to-go: each step carries its reward-to-go less the mean of the question's other
    samples' at the same step (:func:`~r3rag.rl.losses.leave_one_out_step_advantages`), so a search is
    credited with the answer it led to, against what the other samples still earned from that step on."""
    _check_lengths(trajectories, rewards)
    advantages = leave_one_out_step_advantages(
        [rewards_to_go(r.rewards) for r in rewards], [t.example_id for t in trajectories]
    )
    return samples_with_rewards(trajectories, advantages)


def trajectory_return_samples(
    trajectories: Sequence[Trajectory], rewards: Sequence[TrajectoryReward]
) -> list[Sample]:
    """Every step carries its trajectory's return (the sum of its step rewards), no baseline yet: what a
    trainer that compares the question's samples itself needs (veRL's GRPO, which reads each trajectory's
    last output and gives its advantage to every step; :mod:`r3rag.integrations.verl`). One trajectory's
    samples are all that is at hand where it is scored, so the group baseline cannot be taken there."""
    _check_lengths(trajectories, rewards)
    return samples_with_rewards(trajectories, [[sum(r.rewards)] * len(r.rewards) for r in rewards])


CREDIT_SCHEMES: dict[Advantage, CreditScheme] = {
    "gae": step_samples,
    "gae-trajectory": return_to_go_samples,
    "rloo": group_baseline_samples(leave_one_out_advantages),
    "grpo": group_baseline_samples(group_normalized_advantages),
    "rloo-to-go": step_baseline_samples,
}
"""The credit scheme of each ``PPOConfig.advantage``."""
