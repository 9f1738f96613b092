"""The PPO formulas, one pure tensor function each, so every one can be checked against hand-computed values.

All tensors are ``[samples, action tokens]`` with a 0/1 ``mask`` marking real action tokens (a sample's
action tokens are packed to the left, padding to the right). Conventions follow OpenRLHF 0.5.7, which the
official R3-RAG code trains with (reference §1.5, §3.3): per-token KL penalty in the reward, GAE over the
action tokens of one sample, advantages whitened over the whole rollout buffer, losses averaged over each
sample's tokens and then over samples.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (over everything, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def sample_mean(x: torch.Tensor, mask: torch.Tensor, samples: int | None = None) -> torch.Tensor:
    """Per-sample token mean, then the mean over samples (OpenRLHF: ``masked_mean(x, mask, -1).mean()``).

    Every step-sample weighs the same whatever its length, so a long analysis is not worth more than a
    short final answer. ``samples`` is the count to divide by (default: this batch's rows): a minibatch
    accumulated over micro-batches passes its own total, so the micro-batch losses add up to its loss.
    """
    return masked_mean(x, mask, dim=-1).sum() / (x.shape[0] if samples is None else samples)


def masked_log_ratio(logprobs: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(a) - log pi_other(a) on action tokens, exactly 0 on padding.

    Padding log-probs are whatever the model gives a pad token there, and a difference above ~88.7 nats
    overflows ``exp`` to inf; inf * 0 is NaN, which a mask applied afterwards cannot remove (GAE would carry
    it into the sample's real tokens, whitening to the whole buffer). So the log-ratio is masked *before*
    anything exponentiates it (OpenRLHF does the same).
    """
    return torch.where(mask.bool(), logprobs - other, torch.zeros((), dtype=logprobs.dtype))


def approx_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probabilities of the sampled tokens; 0 on padding.

    With ``log_r = log pi_ref(a) - log pi(a)`` (Schulman, "Approximating KL divergence"):

    - k1 = -log_r = log pi(a) - log pi_ref(a): unbiased, can be negative per token (official default);
    - k3 = exp(log_r) - 1 - log_r: unbiased, never negative, lower variance when the policies are close.
    """
    log_ratio = masked_log_ratio(logprobs, ref_logprobs, mask)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        log_r = -log_ratio
        return (log_r.exp() - 1 - log_r) * mask
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def token_rewards(
    step_rewards: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> torch.Tensor:
    """r_t = -beta * KL_t on every action token, plus the sample's own reward where it was placed.

    ``step_rewards`` holds the scalar rewards at their token positions (the paper's scheme: the step's reward
    on its last action token, zero elsewhere).
    """
    return (step_rewards - kl_coef * kl) * mask


def adaptive_kl_coef(
    beta: float, kl: float, target: float, samples: int, horizon: float, floor: float
) -> float:
    """The next beta of Ziegler et al. (2019)'s proportional controller (veRL's ``AdaptiveKLController``),
    never below ``floor``.

    beta <- max(beta * (1 + clip(KL / target - 1, -0.2, 0.2) * samples / horizon), floor): the penalty grows
    while the policy sits further from the reference than ``target`` per token, by at most 20% per
    ``horizon`` samples, and shrinks back while it sits nearer. The floor (the run's first beta) keeps the
    early iterations, where the policy is still the reference, from wearing the penalty down to nothing
    before the policy moves (unfloored, halving per iteration at KL = 0, it would take as many iterations
    to climb back as it took to fall), and beta positive when an iteration holds more than five horizons.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return max(beta * (1.0 + error * samples / horizon), floor)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the action tokens of each sample; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last action token is 0: the sample ends there)
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                     (the value target)

    With the paper's gamma = lam = 1 and the reward on the last token, A_t = (reward - beta * sum of the
    KL from t on) - V_t. Nothing is bootstrapped across samples: each step is its own episode.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def rewards_to_go(rewards: Sequence[float]) -> list[float]:
    """G_s = r_s + r_{s+1} + ... + r_last for every step s of one trajectory (undiscounted, as the paper's
    gamma = 1): what a step is worth when the steps after it count as its consequences."""
    out, running = [], 0.0
    for reward in reversed(rewards):
        running += reward
        out.append(running)
    return out[::-1]


def leave_one_out_advantages(returns: Sequence[float], groups: Sequence[Hashable]) -> list[float]:
    """RLOO (Ahmadian et al. 2024): A_i = G_i - mean of G_j over the *other* trajectories j of i's group.

    The baseline excludes the trajectory itself, so it is independent of its action and the estimate stays
    unbiased; A_i = K/(K-1) (G_i - mean of the group) for a group of K. A trajectory alone in its group
    (its siblings were dropped) has nothing to be compared with: 0.
    """
    if len(returns) != len(groups):
        raise ValueError(f"{len(returns)} returns for {len(groups)} group labels")
    # a trajectory of one step is its return: the per-step estimator below is this one, step by step
    return [a for (a,) in leave_one_out_step_advantages([[g] for g in returns], groups)]


def leave_one_out_step_advantages(
    returns_to_go: Sequence[Sequence[float]], groups: Sequence[Hashable]
) -> list[list[float]]:
    """RLOO on returns-to-go: step s of trajectory i gets A_{i,s} = G_{i,s} - mean of G_{j,s} over the other
    trajectories j of i's group, G_{j,s} = 0 where j had already ended (nothing was left to earn).

    The baseline is the others' worth of the same step index, so it depends on the question and on how far
    the trajectory has gone, never on i's own actions: the estimate stays unbiased, as RLOO's, and a search
    is credited with the answer it led to, as GAE on returns-to-go is, with no value to learn. A trajectory
    alone in its group has nothing to be compared with: 0 on every step.
    """
    if len(returns_to_go) != len(groups):
        raise ValueError(f"{len(returns_to_go)} trajectories for {len(groups)} group labels")
    members: dict[Hashable, list[Sequence[float]]] = defaultdict(list)
    for g, key in zip(returns_to_go, groups, strict=True):
        members[key].append(g)
    totals: dict[Hashable, list[float]] = {}
    for key, trajectories in members.items():
        width = max(len(g) for g in trajectories)
        totals[key] = [sum(g[s] for g in trajectories if s < len(g)) for s in range(width)]
    advantages = []
    for g, key in zip(returns_to_go, groups, strict=True):
        others = len(members[key]) - 1
        advantages.append(
            [0.0 if others == 0 else g_s - (totals[key][s] - g_s) / others for s, g_s in enumerate(g)]
        )
    return advantages


def group_normalized_advantages(
    returns: Sequence[float], groups: Sequence[Hashable], eps: float = 1e-4
) -> list[float]:
    """GRPO (Shao et al. 2024): A_i = (G_i - mean of i's group) / (std of i's group + eps), the sample
    standard deviation (n - 1, as TRL's ``GRPOTrainer``). A group whose returns are all equal, or of one
    trajectory, teaches nothing: 0."""
    if len(returns) != len(groups):
        raise ValueError(f"{len(returns)} returns for {len(groups)} group labels")
    members: dict[Hashable, list[float]] = defaultdict(list)
    for g, key in zip(returns, groups, strict=True):
        members[key].append(g)
    stats = {
        key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for key, v in members.items()
    }
    return [
        0.0 if stats[key][1] == 0 else (g - stats[key][0]) / (stats[key][1] + eps)
        for g, key in zip(returns, groups, strict=True)
    ]


def whiten(
    advantages: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], eps: float = 1e-8
) -> list[torch.Tensor]:
    """(A - mean) / std, with mean and std over every action token of all the tensors given (the whole
    rollout buffer, its micro-batches together, as OpenRLHF does)."""
    flat = torch.cat([a[m.bool()] for a, m in zip(advantages, masks, strict=True)])
    mean, var = flat.mean(), flat.var(unbiased=False)
    return [(a - mean) * torch.rsqrt(var.clamp(min=eps)) * m for a, m in zip(advantages, masks, strict=True)]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate, per token; returns (per-token loss, ratio).

    ratio_t = exp(log pi(a_t) - log pi_old(a_t))   (1 on padding: :func:`masked_log_ratio`)
    loss_t  = -min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t)
    """
    ratio = masked_log_ratio(logprobs, old_logprobs, mask).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    return -torch.min(unclipped, clipped) * mask, ratio


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """The clipped value loss, per token (OpenRLHF ``ValueLoss``; CleanRL's ``clip_vloss``).

    V_clip = V_old + clip(V - V_old, -c, c)
    loss_t = 0.5 * max((V - R)^2, (V_clip - R)^2)
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2) * mask


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p(v) log p(v) per position, in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over action tokens (flat tensors): 1 is a perfect critic, 0 no better than a
    constant, negative worse than one."""
    var_r = returns.var(unbiased=False)
    if returns.numel() < 2 or var_r == 0:
        return float("nan")
    return float(1 - (returns - values).var(unbiased=False) / var_r)
