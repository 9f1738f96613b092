"""The PPO formulas against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from r3rag.rl.losses import (
    adaptive_kl_coef,
    approx_kl,
    explained_variance,
    gae,
    group_normalized_advantages,
    leave_one_out_advantages,
    leave_one_out_step_advantages,
    policy_loss,
    rewards_to_go,
    sample_mean,
    token_rewards,
    value_loss,
    whiten,
)
from r3rag.rl.ppo import minibatches, progress_schedule, schedule_to

# two samples: 3 action tokens, and 2 action tokens + one padding slot (garbage values that must not leak)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
VALUES = torch.tensor([[0.5, 0.2, 0.8], [0.1, -0.3, 9.0]])
REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, -1.0, 5.0]])
ONE = torch.ones(1)


def test_gae_with_gamma_and_lambda_one_is_reward_minus_value() -> None:
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    # sample 1: A_t = 1 - V_t; sample 2: A_t = -1 - V_t; the padding slot gets nothing
    expected = torch.tensor([[0.5, 0.8, 0.2], [-1.1, -0.7, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]]))


def test_gae_with_discount_by_hand() -> None:
    advantages, returns = gae(REWARDS[:1], VALUES[:1], MASK[:1], gamma=0.9, lam=0.5)
    # delta_2 = 1 - 0.8 = 0.2;  delta_1 = 0.9*0.8 - 0.2 = 0.52;  delta_0 = 0.9*0.2 - 0.5 = -0.32
    a2 = 0.2
    a1 = 0.52 + 0.45 * a2
    a0 = -0.32 + 0.45 * a1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.8]]))


def test_token_rewards_put_the_kl_penalty_on_every_token_and_the_reward_where_it_was_placed() -> None:
    kl = torch.tensor([[0.1, -0.2, 0.3]])
    rewards = token_rewards(torch.tensor([[0.0, 0.0, 2.0]]), kl, kl_coef=0.01, mask=torch.ones(1, 3))
    assert torch.allclose(rewards, torch.tensor([[-0.001, 0.002, 2.0 - 0.003]]))


def test_whiten_uses_the_statistics_of_every_tensor_together() -> None:
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 100.0]])
    mask_b = torch.tensor([[1.0, 0.0]])  # the 100 is padding
    wa, wb = whiten([a, b], [torch.ones(1, 2), mask_b])
    std = math.sqrt(2 / 3)  # of 1, 2, 3
    assert torch.allclose(wa, torch.tensor([[-1 / std, 0.0]]), atol=1e-6)
    assert torch.allclose(wb, torch.tensor([[1 / std, 0.0]]), atol=1e-6)


def test_clipped_policy_loss_on_a_hand_made_batch() -> None:
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0]])
    old = torch.zeros(1, 5)
    loss, ratio = policy_loss(ratios.log(), old, advantages, torch.ones(1, 5), clip=0.2)
    # min(r A, clip(r) A): 1.5*1 -> clipped 1.2; 1.5*-1 -> -1.5 (the clip would be optimistic);
    # 0.5*1 -> 0.5 (unclipped is lower); 0.5*-1 -> clipped -0.8; 1.1*2 inside the range -> 2.2
    assert torch.allclose(loss, -torch.tensor([[1.2, -1.5, 0.5, -0.8, 2.2]]))
    assert torch.allclose(ratio, ratios)


def test_clipped_value_loss_on_a_hand_made_batch() -> None:
    new = torch.tensor([[0.5, 0.1, -0.5, 0.9]])
    old = torch.zeros(1, 4)
    returns = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    loss = value_loss(new, old, returns, torch.ones(1, 4), clip=0.2)
    # V_clip = 0.2, 0.1, -0.2, 0.2; loss = 0.5 * max((V - R)^2, (V_clip - R)^2)
    expected = 0.5 * torch.tensor([[max(0.25, 0.64), 0.81, max(0.25, 0.64), max(0.81, 0.04)]])
    assert torch.allclose(loss, expected)


def test_masked_positions_contribute_nothing() -> None:
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = policy_loss(
        torch.tensor([[0.0, 5.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), mask, 0.2
    )
    assert loss[0, 1] == 0
    assert value_loss(torch.tensor([[0.0, 7.0]]), torch.zeros(1, 2), torch.zeros(1, 2), mask, 0.2)[0, 1] == 0


def test_sample_mean_weighs_samples_equally_and_accumulates() -> None:
    x = torch.tensor([[1.0, 3.0, 50.0], [10.0, -7.0, 99.0]])  # garbage at padding
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(sample_mean(x, mask)) == pytest.approx((2.0 + 10.0) / 2)
    # two micro-batches of one sample each, divided by the minibatch's 2 samples, add up to the same
    halves = sample_mean(x[:1], mask[:1], samples=2) + sample_mean(x[1:], mask[1:], samples=2)
    assert float(halves) == pytest.approx(6.0)


def test_k1_and_k3_on_one_token() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert float(approx_kl(logp, ref, ONE, "k1")) == pytest.approx(math.log(2))
    # k3 = r - 1 - log r with r = pi_ref / pi = 0.5
    assert float(approx_kl(logp, ref, ONE, "k3")) == pytest.approx(0.5 - 1 - math.log(0.5))
    with pytest.raises(ValueError, match="k2"):
        approx_kl(logp, ref, ONE, "k2")  # type: ignore[arg-type]


def test_k1_and_k3_are_unbiased_estimates_of_the_kl() -> None:
    pi = torch.tensor([0.6, 0.3, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    exact = float((pi * (pi / ref).log()).sum())
    for estimator in ("k1", "k3"):
        per_token = approx_kl(pi.log(), ref.log(), torch.ones(3), estimator)
        assert float((pi * per_token).sum()) == pytest.approx(exact)  # expectation under pi
    assert bool((approx_kl(pi.log(), ref.log(), torch.ones(3), "k3") >= 0).all())
    assert bool(
        (approx_kl(pi.log(), ref.log(), torch.ones(3), "k1") < 0).any()
    )  # k1 can be negative per token


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_a_huge_log_ratio_on_padding_leaves_the_kl_finite_and_unchanged(estimator: str) -> None:
    """exp(-1000) is 0 and exp(1000) inf: masked after the exponential, inf * 0 would be NaN at padding."""
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = approx_kl(logprobs, ref, mask, estimator)  # type: ignore[arg-type]
    for padding in (1000.0, -1000.0):
        huge = ref.clone()
        huge[0, 2] = padding  # log pi - log pi_ref = -1000 or 1000 at the padding slot
        kl = approx_kl(logprobs, huge, mask, estimator)  # type: ignore[arg-type]
        assert torch.isfinite(kl).all() and torch.equal(kl, expected)
    assert expected[0, 2] == 0.0


def test_a_huge_log_ratio_on_padding_leaves_the_policy_loss_finite_and_unchanged() -> None:
    """The ratio exponentiates log pi - log pi_old: at padding it must be 1, not exp(1000) = inf."""
    logprobs = torch.tensor([[-0.5, -1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-0.7, -0.9, 0.0]])
    advantages = torch.tensor([[1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected, expected_ratio = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    huge = old.clone()
    huge[0, 2] = -1000.0
    loss, ratio = policy_loss(logprobs, huge, advantages, mask, clip=0.2)
    assert torch.isfinite(loss).all() and torch.equal(loss, expected)
    assert torch.equal(ratio, expected_ratio) and ratio[0, 2] == 1.0
    loss.sum().backward()
    assert logprobs.grad is not None and torch.isfinite(logprobs.grad).all() and logprobs.grad[0, 2] == 0.0


def test_explained_variance() -> None:
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    assert explained_variance(returns + 1.0, returns) == pytest.approx(
        1.0
    )  # a constant offset is not variance
    assert math.isnan(explained_variance(torch.zeros(3), torch.ones(3)))


def _lr_at(progress: float, warmup_ratio: float, min_lr_ratio: float) -> float:
    """The trainer's schedule at ``progress``, for a group whose peak learning rate is 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = progress_schedule(optimizer, warmup_ratio, min_lr_ratio)
    schedule_to(scheduler, progress)
    return optimizer.param_groups[0]["lr"]


def test_learning_rate_schedule() -> None:
    assert _lr_at(0.05, warmup_ratio=0.1, min_lr_ratio=0.1) == pytest.approx(0.5)
    assert _lr_at(0.1, 0.1, 0.1) == pytest.approx(1.0)
    assert _lr_at(0.55, 0.1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert _lr_at(1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert _lr_at(0.0, 0.0, 0.1) == pytest.approx(1.0)


def test_minibatches_accumulate_micro_batches_up_to_the_size() -> None:
    assert minibatches([2, 0, 1, 3], sizes=[3, 2, 4, 1], minibatch_size=4) == [[2], [0, 1], [3]]
    assert minibatches([0, 1, 2, 3], sizes=[1, 1, 1, 1], minibatch_size=8) == [[0, 1, 2, 3]]


# ------------------------------------------------------------------ returns over steps and group baselines


def test_rewards_to_go_add_every_later_step() -> None:
    assert rewards_to_go([0.8, 0.5, 2.0]) == pytest.approx([3.3, 2.5, 2.0])
    assert rewards_to_go([-1.0]) == [-1.0] and rewards_to_go([]) == []


def test_leave_one_out_compares_each_trajectory_with_its_siblings_only() -> None:
    # group a: returns 2, 0, 1, 1 -> baselines (0+1+1)/3, (2+1+1)/3, (2+0+1)/3, (2+0+1)/3; b is alone
    advantages = leave_one_out_advantages([2.0, 0.0, 1.0, 1.0, 3.0], ["a", "a", "a", "a", "b"])
    assert advantages == pytest.approx([2 - 2 / 3, 0 - 4 / 3, 0.0, 0.0, 0.0])
    # the identity A = K/(K-1) (G - group mean), K = 4, mean 1
    assert advantages[:4] == pytest.approx([4 / 3 * (g - 1) for g in (2.0, 0.0, 1.0, 1.0)])


def test_leave_one_out_on_returns_to_go_compares_each_step_with_the_same_step_of_the_siblings() -> None:
    # group a, rewards-to-go per step: [3, 2], [1], [4, 0.5, 0.5]; an ended trajectory has 0 still to earn
    # step totals 8, 2.5, 0.5; each baseline is (total - own) / 2 others; b is alone
    advantages = leave_one_out_step_advantages([[3.0, 2.0], [1.0], [4.0, 0.5, 0.5], [2.0]], list("aaab"))
    assert advantages[0] == pytest.approx([3 - 5 / 2, 2 - 0.5 / 2])
    assert advantages[1] == pytest.approx([1 - 7 / 2])
    assert advantages[2] == pytest.approx([4 - 4 / 2, 0.5 - 2 / 2, 0.5 - 0 / 2])
    assert advantages[3] == [0.0]
    # one step each: RLOO on the returns
    returns, groups = [2.0, 0.0, 1.0, 1.0, 3.0], list("aaaab")
    assert [a for (a,) in leave_one_out_step_advantages([[g] for g in returns], groups)] == pytest.approx(
        leave_one_out_advantages(returns, groups)
    )
    with pytest.raises(ValueError, match="2 trajectories for 1 group labels"):
        leave_one_out_step_advantages([[1.0], [2.0]], ["a"])


def test_group_normalised_advantages_use_the_group_mean_and_sample_std() -> None:
    # group a: mean 1, sample std sqrt((1 + 1 + 0 + 0) / 3) = 0.81650; group b all equal; c alone
    std = math.sqrt(2 / 3)
    advantages = group_normalized_advantages(
        [2.0, 0.0, 1.0, 1.0, 0.5, 0.5, 7.0], ["a", "a", "a", "a", "b", "b", "c"], eps=1e-4
    )
    assert advantages == pytest.approx([1 / (std + 1e-4), -1 / (std + 1e-4), 0.0, 0.0, 0.0, 0.0, 0.0])


def test_group_baselines_refuse_unlabelled_returns() -> None:
    with pytest.raises(ValueError, match="2 returns for 1 group labels"):
        leave_one_out_advantages([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="2 returns for 1 group labels"):
        group_normalized_advantages([1.0, 2.0], ["a"])


def test_the_adaptive_kl_controller_by_hand() -> None:
    step = {"target": 0.03, "samples": 32, "horizon": 16, "floor": 0.01}
    # KL twice the target: error clipped to +0.2, 32 samples over a horizon of 16: x (1 + 0.4)
    assert adaptive_kl_coef(0.1, kl=0.06, **step) == pytest.approx(0.14)
    # KL 10% under: error -0.1 -> x (1 - 0.2)
    assert adaptive_kl_coef(0.1, kl=0.027, **step) == pytest.approx(0.08)
    assert adaptive_kl_coef(0.1, kl=0.03, **step) == pytest.approx(0.1)
    # KL 0 at the floor: x 0.6 would be 0.006; the floor holds
    assert adaptive_kl_coef(0.01, kl=0.0, **step) == 0.01
    # veRL's factor would be 1 - 0.2 x 10 = -1 (a negative beta): the floor
    assert adaptive_kl_coef(0.1, kl=0.0, **(step | {"samples": 160})) == 0.01
