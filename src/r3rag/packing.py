"""Token sequences with action masks, packed into rows of tensors, and the log-probabilities a causal LM
gives their action tokens: the one packing and log-prob code path of the cold start (SFT) and of PPO.

A :class:`Sample` is one token sequence with a mask of the tokens the model is trained on (the actions: a
step's completion) and the rewards placed on its tokens (zero for SFT). :func:`pack_samples` groups the
samples of one trajectory into a row that shares their common prompt, :func:`collate` lays packs out as a
:class:`Batch`, and :func:`action_logprobs` computes log pi(a) at the batch's action tokens only. How a
trajectory is cut into samples and where its rewards go is PPO's business (:mod:`r3rag.rl.samples`); the SFT
loop makes one sample per step example (:mod:`r3rag.coldstart.sft`).

Only the positions that predict action tokens go through the LM head, and the head runs in fp32: the trunk
runs under bf16 autocast when asked, but log-probabilities are small differences of large numbers, where
bf16's 8 bits of mantissa show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from r3rag.device import autocast, full_precision, module_device

_LOGIT_RESCALING = ("final_logit_softcapping", "logit_scale", "logits_scaling")

CausalLM = Any
"""A Hugging Face causal LM, or a peft ``PeftModel`` wrapping one: reached only through ``config``,
``get_decoder()`` and ``get_output_embeddings()``, which the wrapper forwards but no common base declares."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample (a PPO step sample, an SFT step example): ``tokens``, and per token whether it is an action
    and the reward placed on it.

    ``trajectory`` and ``step`` say where it came from (indices into the rollout), for logging.
    ``behaviour_logprobs``, when the rollout recorded them, are the sampling policy's log-probabilities of the
    action tokens, in order (empty: not recorded).
    """

    tokens: tuple[int, ...]
    action_mask: tuple[bool, ...]
    rewards: tuple[float, ...]
    trajectory: int
    step: int
    behaviour_logprobs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.action_mask) == len(self.rewards):
            raise ValueError("tokens, action_mask and rewards must have one entry per token")
        if self.behaviour_logprobs and len(self.behaviour_logprobs) != self.actions:
            raise ValueError(
                f"{len(self.behaviour_logprobs)} behaviour log-probs for {self.actions} action tokens"
            )
        if not any(self.action_mask):
            raise ValueError("a sample needs at least one action token")
        if self.action_mask[0]:
            raise ValueError("the first token cannot be an action: nothing precedes it to predict it")

    @property
    def actions(self) -> int:
        return sum(self.action_mask)


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


def training_rows(samples: list[Sample], share_prefixes: bool) -> list[list[int]]:
    """The units batches are made of: the samples' indices of each pack (per question when sharing, else
    one per sample), in order."""
    return [sorted(pack.members) for pack in pack_samples(samples, share_prefixes)]


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
    behaviour_logprobs: torch.Tensor  # [N, A], 0 where the samples carry none
    tokens: int  # real (unpadded) tokens in the rows

    @property
    def size(self) -> int:
        """Samples in the batch."""
        return self.rows.shape[0]

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device`` (it is laid out on the host, where its Python loops run)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids),
            move(self.position_ids),
            move(self.attention_mask),
            move(self.rows),
            move(self.positions),
            move(self.action_ids),
            move(self.action_mask),
            move(self.rewards),
            move(self.behaviour_logprobs),
            self.tokens,
        )


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
    behaviour = torch.zeros((len(members), actions))
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
            if sample.behaviour_logprobs:
                behaviour[n, : len(where)] = torch.tensor(sample.behaviour_logprobs)
            offset += own
            n += 1
    return Batch(
        input_ids,
        position_ids,
        attention,
        rows,
        positions,
        action_ids,
        action_mask,
        rewards,
        behaviour,
        sum(lengths),
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


def check_plain_head(model: CausalLM) -> None:
    """Log-probs are computed as head(trunk(x)); models that rescale or cap logits after the head would get
    wrong ones silently, so they are refused."""
    for name in _LOGIT_RESCALING:
        value = getattr(model.config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__} rescales its logits ({name}={value}); not supported")
    if not isinstance(model.get_output_embeddings(), nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear output head")


def action_hidden(trunk: CausalLM, batch: Batch, bf16: bool) -> torch.Tensor:
    """The trunk's last hidden states at the tokens that predict the batch's actions: ``[N, A, H]``, fp32."""
    mask = batch.attention_mask
    if trunk.config._attn_implementation != "sdpa":  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    with autocast(mask.device, enabled=bf16):
        hidden = trunk(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
    return hidden[batch.rows[:, None], batch.positions].float()


def head_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head over fp32 hidden states, in fp32; a head kept in bf16 (a LoRA run's frozen base) is cast
    for the product (a transient copy: the head runs at action positions only)."""
    with full_precision(hidden.device):
        if head.weight.dtype == hidden.dtype:
            return head(hidden)
        bias = None if head.bias is None else head.bias.to(hidden.dtype)
        return nn.functional.linear(hidden, head.weight.to(hidden.dtype), bias)


def token_logprobs(logits: torch.Tensor, action_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[a] = logit_a - logsumexp(logits), without materialising the whole log-softmax."""
    return logits.gather(-1, action_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def action_logprobs(model: CausalLM, batch: Batch, bf16: bool) -> torch.Tensor:
    """log pi(a) of a causal LM for each of the batch's action tokens: ``[N, A]`` (padding included; mask it
    with ``batch.action_mask``). The reference policy's pass, and the SFT loss's."""
    hidden = action_hidden(model.get_decoder(), batch, bf16)
    return token_logprobs(head_logits(model.get_output_embeddings(), hidden), batch.action_ids)


class ActionLogprobs(nn.Module):
    """:func:`action_logprobs` of a causal LM as a module whose ``forward`` takes a :class:`Batch`: the root
    unit when the LM is sharded over processes (:func:`r3rag.parallel.shard`), since FSDP gathers a root's
    weights (embeddings, final norm, head) in its ``forward``, which calling the trunk directly would skip."""

    def __init__(self, model: CausalLM, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, batch: Batch) -> torch.Tensor:
        return action_logprobs(self.model, batch, self.bf16)


def loss_sum(
    model: Any, samples: list[Sample], share_prefixes: bool, pad_id: int, bf16: bool
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the target tokens of ``samples`` (computed in packed rows when sharing, on
    the model's device), and their count. ``model`` is a causal LM, or the :class:`ActionLogprobs` root of
    one sharded with FSDP."""
    batch = collate(samples, pack_samples(samples, share_prefixes), pad_id).to(module_device(model))
    logprobs = model(batch) if isinstance(model, ActionLogprobs) else action_logprobs(model, batch, bf16)
    return -(logprobs * batch.action_mask).sum(), int(batch.action_mask.sum())
