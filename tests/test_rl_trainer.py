"""The trainer's use of the PPO formulas, on fixed hand-made batches: which log-probs go where, the KL
penalty's sign, the ratio at a second update (where the current policy is no longer the rollout's), the loss
normalisation over a minibatch, and the official defaults.

``tests/test_rl_losses.py`` checks each formula alone; a trainer can still feed it the wrong tensors (the
reference's log-probs as the old policy's, the penalty with the wrong sign) and pass every one of those tests,
and its end-to-end test (a toy reward rising) as well. These tests catch that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from r3rag.config import PPOConfig
from r3rag.packing import Batch, Sample
from r3rag.rl.losses import sample_mean
from r3rag.rl.models import PolicyOutput
from r3rag.rl.ppo import Experience, PPOTrainer
from rl_fixtures import tiny_config, tiny_trainer

PAD_LOGPROB = -1000.0
"""The reference's log-prob at padding slots: k3 would take exp(1000) = inf there if it were not masked."""


@dataclass
class TablePolicy:
    """A policy and critic whose log pi(a) and V are looked up by the action's token id (padding included),
    so the experience of a batch can be computed by hand. Unknown ids (the pad id) get ``pad`` and
    ``pad_value``: what a model gives padding is arbitrary, and the buffer must hold 0 there whatever it
    is."""

    logprobs: dict[int, float]
    values: dict[int, float]
    pad: float = 0.0
    pad_value: float = 0.0

    @staticmethod
    def _lookup(table: dict[int, float], ids: torch.Tensor, default: float) -> torch.Tensor:
        return torch.tensor([[table.get(int(t), default) for t in row] for row in ids])

    def __call__(self, batch: Batch, bf16: bool, values: bool = True, **_: object) -> PolicyOutput:
        logprobs = self.logprobs_of(batch, bf16)
        value = self._lookup(self.values, batch.action_ids, self.pad_value)
        return PolicyOutput(logprobs, torch.zeros_like(logprobs), value)

    def logprobs_of(self, batch: Batch, bf16: bool) -> torch.Tensor:
        return self._lookup(self.logprobs, batch.action_ids, self.pad)


@dataclass
class TableReference:
    table: TablePolicy

    def logprobs(self, batch: Batch, bf16: bool) -> torch.Tensor:
        return self.table.logprobs_of(batch, bf16)


# Two step-samples: A has actions 13, 14 and reward 1.0 on 14; B has one action, 23, with reward -0.5, so B's
# second action slot is padding.
SAMPLES = [
    Sample((11, 12, 13, 14), (False, False, True, True), (0.0, 0.0, 0.0, 1.0), trajectory=0, step=0),
    Sample((21, 22, 23), (False, False, True), (0.0, 0.0, -0.5), trajectory=1, step=0),
]
OLD = TablePolicy({13: -1.0, 14: -2.0, 23: -0.5}, {13: 0.2, 14: 0.4, 23: -0.1}, pad=0.0, pad_value=7.0)
REFERENCE = TablePolicy({13: -1.5, 14: -1.0, 23: -0.7}, {}, pad=PAD_LOGPROB)


FIELDS = ("old_logprobs", "old_values", "kl", "advantages", "returns")


def experience(
    tmp_path: Path, **overrides: object
) -> tuple[dict[int, dict[str, list[float]]], dict[str, float]]:
    """``_experience`` of SAMPLES under the table policies: per sample (keyed by its first action id), each
    field on its action tokens; and the metrics. Padding slots must hold exactly 0."""
    config = tiny_config(tmp_path, **({"kl_coef": 0.1, "normalize_advantages": False} | overrides))
    trainer = tiny_trainer(config)
    trainer.model, trainer.reference = OLD, TableReference(REFERENCE)  # type: ignore[assignment]
    buffer, metrics = trainer._experience(SAMPLES)
    rows: dict[int, dict[str, list[float]]] = {}
    for e in buffer:
        mask = e.batch.action_mask.bool()
        for field in FIELDS:
            assert (getattr(e, field)[~mask] == 0).all() or field == "old_logprobs", field
        for n in range(e.batch.size):
            key = int(e.batch.action_ids[n, 0])
            rows[key] = {f: getattr(e, f)[n][mask[n]].tolist() for f in FIELDS}
    return rows, metrics


# ---------------------------------------------------------------- defaults (first: config mutants fail fast)

OFFICIAL = {  # examples/RLHF.sh on OpenRLHF 0.5.7 and the defaults it ran with (reference §1.5)
    "iterations": 512,  # 4 episodes x 8,192 questions / 64 per rollout
    "questions_per_iteration": 64,  # rollout_batch_size
    "samples_per_question": 4,  # n_samples_per_prompt
    "temperatures": [0.1, 0.4, 0.7, 1.0],  # 0.1 + 0.3 i
    "critic": "separate",
    "kl_coef": 0.01,  # init_kl_coef, fixed controller
    "kl_estimator": "k1",  # use_kl_estimator_k3 off
    "gamma": 1.0,
    "lam": 1.0,
    "normalize_advantages": True,
    "clip_ratio": 0.2,  # eps_clip
    "value_clip": 0.2,
    "ent_coef": 0.0,
    "max_grad_norm": 1.0,  # max_norm
    "actor_lr": 5e-7,
    "critic_lr": 9e-6,
    "adam_betas": (0.9, 0.95),
    "weight_decay": 0.0,
    "warmup_ratio": 0.03,
    "min_lr_ratio": 0.1,
    "ppo_epochs": 1,  # max_epochs
    "minibatch_size": 64,  # train_batch_size
    "lora_rank": 0,  # all weights
}


def test_ppo_defaults_are_the_official_values() -> None:
    config = PPOConfig(model="m", train=Path("t.jsonl"), index="i", out=Path("o"))
    assert {field: getattr(config, field) for field in OFFICIAL} == OFFICIAL
    rollout = config.rollout  # the official RL rollout: top-2, 512 characters, 5 steps, 3 re-generations
    assert (rollout.top_k, rollout.max_doc_chars, rollout.max_steps, rollout.max_format_retries) == (
        2,
        512,
        5,
        3,
    )
    assert rollout.max_new_tokens == 512


# ------------------------------------------------------------------------------------ experience by hand


def test_experience_puts_minus_beta_kl_on_every_token_with_kl_from_old_minus_reference(
    tmp_path: Path,
) -> None:
    """k1, beta = 0.1, gamma = lambda = 1. A: KL = old - ref = (-1 + 1.5, -2 + 1) = (0.5, -1.0); r = -0.1 KL
    plus 1.0 on the last token = (-0.05, 1.1); A_t = (sum of r from t) - V_t = (1.05 - 0.2, 1.1 - 0.4).
    B: KL = -0.5 + 0.7 = 0.2; r = -0.02 - 0.5 = -0.52; A = -0.52 + 0.1."""
    rows, metrics = experience(tmp_path)
    a, b = rows[13], rows[23]
    assert a["old_logprobs"] == [-1.0, -2.0] and b["old_logprobs"] == [-0.5]  # the rollout policy's
    assert a["old_values"] == pytest.approx([0.2, 0.4]) and b["old_values"] == pytest.approx([-0.1])
    assert a["kl"] == pytest.approx([0.5, -1.0]) and b["kl"] == pytest.approx([0.2])
    assert a["advantages"] == pytest.approx([0.85, 0.7]) and b["advantages"] == pytest.approx([-0.42])
    assert a["returns"] == pytest.approx([1.05, 1.1]) and b["returns"] == pytest.approx([-0.52])
    assert metrics["ppo/kl"] == pytest.approx((0.5 - 1.0 + 0.2) / 3)
    assert metrics["ppo/kl_per_sample"] == pytest.approx((-0.5 + 0.2) / 2)
    assert metrics["ppo/advantage_raw_mean"] == pytest.approx((0.85 + 0.7 - 0.42) / 3)
    assert metrics["ppo/return_mean"] == pytest.approx((1.05 + 1.1 - 0.52) / 3)
    assert metrics["ppo/value_mean"] == pytest.approx((0.2 + 0.4 - 0.1) / 3)
    assert (metrics["samples"], metrics["samples/action_tokens"]) == (2.0, 3.0)


def test_experience_with_k3_is_finite_despite_a_huge_padding_log_ratio(tmp_path: Path) -> None:
    """k3 = exp(l) - 1 - l with l = log pi_ref - log pi_old: A (-0.5, 1.0), B (-0.2). B's padding slot has
    l = -1000 - 0 there, which must not turn into NaN and spread through GAE and whitening."""
    rows, _ = experience(tmp_path, kl_estimator="k3")
    k3 = [math.exp(x) - 1 - x for x in (-0.5, 1.0, -0.2)]
    assert rows[13]["kl"] == pytest.approx(k3[:2]) and rows[23]["kl"] == pytest.approx(k3[2:])
    rewards = [-0.1 * k3[0], -0.1 * k3[1] + 1.0]
    assert rows[13]["advantages"] == pytest.approx([sum(rewards) - 0.2, rewards[1] - 0.4])
    assert rows[23]["advantages"] == pytest.approx([-0.1 * k3[2] - 0.5 + 0.1])
    whitened, _ = experience(tmp_path / "whitened", kl_estimator="k3", normalize_advantages=True)
    assert all(math.isfinite(x) for row in whitened.values() for x in row["advantages"])


def test_experience_discounts_with_gamma_and_lambda_as_configured(tmp_path: Path) -> None:
    """gamma 0.5, lambda 0.8 on A: delta_1 = 1.1 - 0.4 = 0.7; delta_0 = -0.05 + 0.5 * 0.4 - 0.2 = -0.05;
    A_0 = delta_0 + 0.5 * 0.8 * A_1 = -0.05 + 0.28."""
    rows, _ = experience(tmp_path, gamma=0.5, lam=0.8)
    assert rows[13]["advantages"] == pytest.approx([-0.05 + 0.4 * 0.7, 0.7])
    assert rows[13]["returns"] == pytest.approx([-0.05 + 0.4 * 0.7 + 0.2, 1.1])


def test_advantages_are_whitened_over_the_whole_buffer(tmp_path: Path) -> None:
    """Raw advantages 0.85, 0.7, -0.42 (above), one micro-batch per sample: the mean and std are those of
    all three tokens together, not of each micro-batch."""
    rows, metrics = experience(tmp_path, normalize_advantages=True, micro_batch_tokens=1)
    raw = [0.85, 0.7, -0.42]
    mean = sum(raw) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in raw) / 3)
    assert rows[13]["advantages"] == pytest.approx([(0.85 - mean) / std, (0.7 - mean) / std], rel=1e-5)
    assert rows[23]["advantages"] == pytest.approx([(-0.42 - mean) / std], rel=1e-5)
    assert metrics["ppo/advantage_raw_mean"] == pytest.approx(mean)  # logged before whitening


# ---------------------------------------------------------------------------------- updates, real model

# Four step-samples of different lengths and action counts on the tiny model: padding in every micro-batch.
REAL = [
    Sample(
        tuple(range(100 + 20 * i, 100 + 20 * i + length)),
        (False,) * (length - actions) + (True,) * actions,
        (0.0,) * (length - 1) + (reward,),
        trajectory=i,
        step=0,
    )
    for i, (length, actions, reward) in enumerate([(8, 3, 1.0), (7, 2, -1.0), (9, 4, 0.5), (6, 1, 0.0)])
]


def moved_trainer(tmp_path: Path, **overrides: object) -> PPOTrainer:
    """A trainer whose actor took one update already, so the rollout policy is no longer the reference."""
    values: dict[str, object] = {
        "ppo_epochs": 1,
        "minibatch_size": 10_000,
        "clip_ratio": 0.6,  # about 7 of the 10 ratios leave [0.4, 1.6] at the second update
        "value_clip": 0.1,  # far from clip_ratio, so using one for the other shows
    }
    trainer = tiny_trainer(tiny_config(tmp_path, **(values | overrides)))
    trainer._update(trainer._experience(REAL)[0], 1)
    return trainer


def expected_update(trainer: PPOTrainer, buffer: list[Experience]) -> dict[str, float]:
    """The update's metrics, from the current actor and the buffer's *old* log-probs, before it steps."""
    c = trainer.config
    n = sum(e.batch.size for e in buffer)
    out = {"clip_fraction": 0.0, "approx_kl_old": 0.0, "policy_loss": 0.0, "value_loss": 0.0}
    for e in buffer:
        mask = e.batch.action_mask
        with torch.no_grad():
            new = trainer.model(e.batch, trainer.bf16, values=True)
        assert new.values is not None
        ratio = (new.logprobs - e.old_logprobs).exp()
        v_clipped = e.old_values + (new.values - e.old_values).clamp(-c.value_clip, c.value_clip)
        v_loss = 0.5 * torch.max((new.values - e.returns) ** 2, (v_clipped - e.returns) ** 2)
        out["value_loss"] += float(sample_mean(v_loss, mask, n))
        clipped = ratio.clamp(1 - c.clip_ratio, 1 + c.clip_ratio)
        loss = -torch.min(ratio * e.advantages, clipped * e.advantages)
        out["clip_fraction"] += float(sample_mean(((ratio - 1).abs() > c.clip_ratio).float(), mask, n))
        out["approx_kl_old"] += float(sample_mean(ratio - 1 - ratio.log(), mask, n))
        out["policy_loss"] += float(sample_mean(loss, mask, n))
    return out


def test_old_log_probs_are_the_rollout_policy_s_not_the_reference_s(tmp_path: Path) -> None:
    trainer = moved_trainer(tmp_path)
    buffer, metrics = trainer._experience(REAL)
    for e in buffer:
        mask = e.batch.action_mask.bool()
        with torch.no_grad():
            current = trainer.model(e.batch, False, values=True).logprobs
        reference = trainer.reference.logprobs(e.batch, False)
        assert torch.equal(e.old_logprobs[mask], current[mask])
        assert (e.old_logprobs - reference)[mask].abs().max() > 1e-3  # they differ, so the test can tell
        assert torch.allclose(e.kl[mask], (current - reference)[mask])  # k1 = log pi_old - log pi_ref
    assert metrics["ppo/kl"] != 0.0
    first = trainer._update(buffer, 1)
    assert first["ppo/clip_fraction"] == 0.0 and first["ppo/approx_kl_old"] == 0.0  # ratio = pi / pi_old = 1


def test_ratio_and_clip_fraction_at_a_second_update(tmp_path: Path) -> None:
    """After one step on a buffer, the current policy differs from the buffer's old one: the second update's
    ratio, clip fraction, KL(old || new) and policy loss follow from pi / pi_old of the current actor."""
    trainer = moved_trainer(tmp_path)
    buffer, _ = trainer._experience(REAL)
    trainer._update(buffer, 1)
    expected = expected_update(trainer, buffer)
    second = trainer._update(buffer, 1)
    assert 0 < expected["clip_fraction"] < 1 and expected["approx_kl_old"] > 0  # the policies differ
    for name, value in expected.items():
        assert second[f"ppo/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-7), name


def gradients(tmp_path: Path, micro_batch_tokens: int, critic: str) -> tuple[int, list[torch.Tensor]]:
    """How many micro-batches REAL makes, and the gradients of the one optimizer step over them (no clip)."""
    config = tiny_config(
        tmp_path,
        micro_batch_tokens=micro_batch_tokens,
        minibatch_size=10_000,
        ppo_epochs=1,
        max_grad_norm=1e9,
        critic=critic,
    )
    trainer = tiny_trainer(config)
    buffer, _ = trainer._experience(REAL)
    recorded: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def record_then_step(*args: object, **kwargs: object) -> object:
        groups = trainer.optimizer.param_groups
        recorded.extend(p.grad.clone() for g in groups for p in g["params"] if p.grad is not None)
        return step(*args, **kwargs)

    trainer.optimizer.step = record_then_step  # type: ignore[method-assign]
    assert trainer._update(buffer, 1)["ppo/optimizer_steps"] == 1.0
    return len(buffer), recorded


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_gradients_do_not_depend_on_the_micro_batch_size(tmp_path: Path, critic: str) -> None:
    """One micro-batch per sample or one for all: each micro-batch's loss is divided by the minibatch's
    sample count, so the accumulated gradient is the same."""
    single, whole = gradients(tmp_path / "one", 1, critic), gradients(tmp_path / "all", 100_000, critic)
    assert (single[0], whole[0]) == (len(REAL), 1)
    assert len(single[1]) == len(whole[1]) > 0
    for a, b in zip(single[1], whole[1], strict=True):  # equal up to float summation order (~1e-5 of the max)
        assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-8
    assert any(float(g.abs().max()) > 0 for g in whole[1])
