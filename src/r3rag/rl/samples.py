"""From scored trajectories to PPO samples, and from samples to padded token tensors.

A :class:`Sample` is one token sequence with a mask of the tokens the policy chose (the actions) and the
rewards placed on its tokens. How a trajectory is cut into samples and where its rewards go is the *credit
scheme*, a function with the signature of :data:`CreditScheme`. :func:`step_samples` is the paper's: each
step is its own sample (official ``experience_maker.py``; reference §1.5, §3.3):

- tokens = the step's prompt (system turn, question, earlier steps and the documents they retrieved, the
  chat template's assistant header) + the step's completion, exactly the ids the rollout sampled;
- actions = the completion tokens only, end-of-turn included. Documents are written by the retriever into
  the *next* step's prompt, so they are never actions;
- reward = the step's scalar reward, on its last action token.

A trajectory-level scheme (one sequence per trajectory, rewards at the end of each step, GAE across steps)
fits the same :class:`Sample` (actions need not be contiguous; :func:`collate` gathers them in order) and
would be a second function next to :func:`step_samples`; the trainer only sees the scheme it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from r3rag.rewards.shaping import TrajectoryReward
from r3rag.schema import Trajectory


@dataclass(frozen=True, slots=True)
class Sample:
    """One PPO sample: ``tokens``, and per token whether it is an action and the reward placed on it.

    ``trajectory`` and ``step`` say where it came from (indices into the rollout), for logging.
    """

    tokens: tuple[int, ...]
    action_mask: tuple[bool, ...]
    rewards: tuple[float, ...]
    trajectory: int
    step: int

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.action_mask) == len(self.rewards):
            raise ValueError("tokens, action_mask and rewards must have one entry per token")
        if not any(self.action_mask):
            raise ValueError("a sample needs at least one action token")
        if self.action_mask[0]:
            raise ValueError("the first token cannot be an action: nothing precedes it to predict it")

    @property
    def actions(self) -> int:
        return sum(self.action_mask)


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


@dataclass(frozen=True, slots=True)
class Pack:
    """Samples computed together in one row, sharing the tokens their sequences have in common.

    The first member (the longest) is laid out whole; each other member ``m`` shares its first ``shared[m]``
    tokens with it (its prompt up to where the two prompts part) and only its remaining tokens follow, as a
    branch that attends to the shared prefix and to itself. The step-samples of one trajectory share most of
    their prompts (each step's prompt is the previous one plus a step and its documents), so a trajectory of
    n steps costs about one prompt instead of n, with exactly the same log-probabilities.
    """

    members: tuple[int, ...]
    shared: tuple[int, ...]

    def length(self, samples: Sequence[Sample]) -> int:
        return sum(len(samples[m].tokens) - s for m, s in zip(self.members, self.shared, strict=True))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pack_samples(samples: Sequence[Sample], share_prefixes: bool = True) -> list[Pack]:
    """One :class:`Pack` per trajectory (its longest sample first), or one per sample without sharing."""
    if not share_prefixes:
        return [Pack((i,), (0,)) for i in range(len(samples))]
    by_trajectory: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        by_trajectory.setdefault(sample.trajectory, []).append(i)
    packs = []
    for members in by_trajectory.values():
        trunk = max(members, key=lambda i: len(samples[i].tokens))
        rest = [i for i in members if i != trunk]
        shared = [_common_prefix(samples[i].tokens, samples[trunk].tokens) for i in rest]
        packs.append(Pack((trunk, *rest), (0, *shared)))
    return packs


@dataclass(slots=True)
class Batch:
    """Packs as tensors: ``R`` rows of packed tokens, and the ``N`` samples' action tokens gathered to
    ``[N, A]``.

    ``attention_mask`` is ``[R, 1, T, T]`` (True: may attend), the tree of each pack: a causal trunk, and
    branches that see the trunk's shared prefix and themselves. ``position_ids`` restart each branch where it
    leaves the trunk. ``rows[n]`` and ``positions[n, i]`` locate the token whose output predicts sample n's
    i-th action (the token just before it), so log-probabilities and values are computed only there: a
    49k-vocabulary head over every prompt token would cost more than the rest of the model.
    """

    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, 1, T, T], bool
    rows: torch.Tensor  # [N]
    positions: torch.Tensor  # [N, A]
    action_ids: torch.Tensor  # [N, A]
    action_mask: torch.Tensor  # [N, A], float 0/1
    rewards: torch.Tensor  # [N, A]
    tokens: int  # real (unpadded) tokens in the rows

    @property
    def size(self) -> int:
        """Samples in the batch."""
        return self.rows.shape[0]


def collate(samples: Sequence[Sample], packs: Sequence[Pack], pad_id: int) -> Batch:
    """The rows of ``packs`` (their members index ``samples``) as one padded :class:`Batch`; samples come in
    pack order."""
    lengths = [pack.length(samples) for pack in packs]
    width = max(lengths)
    members = [m for pack in packs for m in pack.members]
    actions = max(samples[m].actions for m in members)
    input_ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(packs), width), dtype=torch.long)
    attention = torch.eye(width, dtype=torch.bool).repeat(len(packs), 1, 1, 1)  # padding sees itself: no NaN
    rows = torch.zeros(len(members), dtype=torch.long)
    positions = torch.zeros((len(members), actions), dtype=torch.long)
    action_ids = torch.full((len(members), actions), pad_id, dtype=torch.long)
    action_mask = torch.zeros((len(members), actions))
    rewards = torch.zeros((len(members), actions))
    n = 0
    for r, pack in enumerate(packs):
        offset = 0
        for m, shared in zip(pack.members, pack.shared, strict=True):
            sample = samples[m]
            own = len(sample.tokens) - shared
            span = slice(offset, offset + own)
            input_ids[r, span] = torch.tensor(sample.tokens[shared:], dtype=torch.long)
            position_ids[r, span] = torch.arange(shared, len(sample.tokens))
            attention[r, 0, span, span] = torch.ones(own, own, dtype=torch.bool).tril()
            attention[r, 0, span, :shared] = True  # the trunk's first `shared` tokens are this sample's too
            # token p of the sample sits at p in the trunk (p < shared) or in its own branch
            where = [p for p, is_action in enumerate(sample.action_mask) if is_action]
            before = [p - 1 if p - 1 < shared else offset + p - 1 - shared for p in where]
            rows[n] = r
            positions[n, : len(where)] = torch.tensor(before)
            action_ids[n, : len(where)] = torch.tensor([sample.tokens[p] for p in where])
            action_mask[n, : len(where)] = 1.0
            rewards[n, : len(where)] = torch.tensor([sample.rewards[p] for p in where])
            offset += own
            n += 1
    return Batch(
        input_ids, position_ids, attention, rows, positions, action_ids, action_mask, rewards, sum(lengths)
    )


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of rows of the given ``lengths`` cut into micro-batches of similar length, each at most
    ``max_tokens`` padded tokens (a row longer than that gets a micro-batch of its own).

    Sorting by length first keeps padding, and the attention computed over it, small.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
