"""What an update can leave out: the pass that recomputes the rollout's log-probs (``old_logprobs: rollout``,
the same gradient), the reference model when there is no KL penalty (``kl_coef: 0``), and the questions whose
trajectories tie under a group baseline (``skip_uniform_groups``: their advantage is zero)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from r3rag.config import PPOConfig, VerlPrepareConfig
from r3rag.packing import Sample
from r3rag.rewards.shaping import StepKind, StepReward, TrajectoryReward
from r3rag.rl.ppo import PPOTrainer
from r3rag.rl.samples import step_samples, uniform_groups
from r3rag.schema import Step, Trajectory, TrajectoryStatus
from rl_fixtures import tiny_config, tiny_trainer

Captured = tuple[list[Any], list[list[torch.Tensor]], list[int], list[list[torch.Tensor]]]


def captured_update(trainer: PPOTrainer) -> Captured:
    """Patch ``trainer`` to record the rollout buffer its update gets, the actor's gradient at each optimizer
    step, how many forward passes of the actor-critic ran before the update, and the log-probs a pass over
    the buffer computes just before the update (what ``recompute`` would use)."""
    buffers: list[Any] = []
    recomputed: list[list[torch.Tensor]] = []
    gradients: list[list[torch.Tensor]] = []
    passes_before_update: list[int] = []
    forward_calls = [0]
    forward, update, step = trainer.model.forward, trainer._update, trainer.optimizer.step

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        forward_calls[0] += 1
        return forward(*args, **kwargs)

    def recording_update(buffer: list[Any], iteration: int) -> dict[str, float]:
        buffers.append(buffer)
        passes_before_update.append(forward_calls[0])
        with torch.no_grad():
            recomputed.append([forward(e.batch, False, values=False).logprobs for e in buffer])
        return update(buffer, iteration)

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        gradients.append([p.grad.clone() for p in trainer.model.actor_parameters()])
        return step(*args, **kwargs)

    trainer.model.forward = counting_forward  # type: ignore[method-assign]
    trainer._update = recording_update  # type: ignore[method-assign]
    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    return buffers, gradients, passes_before_update, recomputed


def one_step_config(tmp_path: Path, **overrides: object) -> PPOConfig:
    """RLOO, every sample in one optimizer step, two samples per question at two temperatures."""
    settings: dict = {
        "advantage": "rloo",
        "samples_per_question": 2,
        "temperatures": [0.3, 1.0],
        "ppo_epochs": 1,
        "minibatch_size": 10_000,
    }
    return tiny_config(tmp_path, **(settings | overrides))


def test_the_rollout_s_log_probs_are_the_ones_a_pass_over_its_samples_computes(tmp_path: Path) -> None:
    trainer = tiny_trainer(one_step_config(tmp_path, old_logprobs="rollout"))
    buffers, _, _, passes = captured_update(trainer)
    trainer.iteration(1)
    for experience, recomputed in zip(buffers[0], passes[0], strict=True):
        mask = experience.batch.action_mask.bool()
        assert experience.old_logprobs[mask].abs().min() > 0  # recorded, not the batch's zero padding
        # at temperature 1 whatever the row sampled at (0.3 or 1.0): PPO's ratio is of the policy itself
        torch.testing.assert_close(experience.old_logprobs[mask], recomputed[mask], rtol=1e-5, atol=1e-5)


def test_rollout_log_probs_drop_the_passes_and_leave_the_gradient_as_it_was(tmp_path: Path) -> None:
    runs = {}
    for source in ("recompute", "rollout"):
        trainer = tiny_trainer(one_step_config(tmp_path / source, old_logprobs=source, kl_coef=0.0))
        runs[source] = (captured_update(trainer), trainer.iteration(1))
    (_, recomputed_gradients, recompute_passes, _), recompute_metrics = runs["recompute"]
    (_, rollout_gradients, rollout_passes, _), rollout_metrics = runs["rollout"]
    assert recompute_passes[0] > 0 and rollout_passes == [0]  # rloo: no value either, so no pass at all
    assert "passes/tokens_per_s" in recompute_metrics and "passes/tokens_per_s" not in rollout_metrics
    assert rollout_metrics["samples"] == recompute_metrics["samples"] == 12  # the same rollout
    recomputed = torch.cat([g.flatten() for g in recomputed_gradients[0]])
    from_rollout = torch.cat([g.flatten() for g in rollout_gradients[0]])
    assert recomputed.norm() > 0
    # the ratio differs from 1 by the decode's rounding (1e-5 in a log-prob): so does the gradient
    assert (from_rollout - recomputed).norm() / recomputed.norm() < 1e-4


def test_with_a_critic_the_pass_still_runs_for_the_values(tmp_path: Path) -> None:
    trainer = tiny_trainer(tiny_config(tmp_path, old_logprobs="rollout", kl_coef=0.0, critic="shared"))
    _, _, passes, _ = captured_update(trainer)
    metrics = trainer.iteration(1)
    assert passes[0] > 0 and "ppo/explained_variance" in metrics


def test_without_a_kl_penalty_no_reference_is_kept_and_no_kl_is_logged(tmp_path: Path) -> None:
    penalised = tiny_trainer(tiny_config(tmp_path / "a", kl_coef=0.01))
    free = tiny_trainer(tiny_config(tmp_path / "b", kl_coef=0.0))
    assert penalised.reference is not None and free.reference is None
    metrics = free.iteration(1)
    assert not any(key.startswith("ppo/kl") for key in metrics)
    assert metrics["time/reference_pass"] == 0.0 and metrics["ppo/optimizer_steps"] > 0
    assert "ppo/kl" in penalised.iteration(1)


def scored(example_id: str, step_rewards: list[float]) -> tuple[Trajectory, TrajectoryReward]:
    trajectory = Trajectory(example_id=example_id, question=example_id)
    trajectory.steps = [Step(index=i + 1) for i in range(len(step_rewards))]
    steps = tuple(
        StepReward(i + 1, StepKind.RETRIEVAL, 0.0, 0.0, r, None, r) for i, r in enumerate(step_rewards)
    )
    return trajectory, TrajectoryReward(TrajectoryStatus.ANSWERED, None, None, steps)


def test_uniform_groups_are_the_questions_whose_returns_tie() -> None:
    pairs = [
        scored("tie", [1.0]),
        scored("tie", [0.5, 0.5]),  # the same return over more steps
        scored("rounding", [0.1, 0.2]),
        scored("rounding", [0.3]),  # 0.1 + 0.2 != 0.3 in floating point, to 6e-17
        scored("split", [1.0]),
        scored("split", [0.0]),
        scored("alone", [0.7]),
    ]
    trajectories, rewards = zip(*pairs, strict=True)
    assert uniform_groups(trajectories, rewards) == {"tie", "rounding", "alone"}


def test_uniform_questions_are_left_out_of_the_update(tmp_path: Path) -> None:
    trainer = tiny_trainer(one_step_config(tmp_path, skip_uniform_groups=True, kl_coef=0.0))
    buffers, _, _, _ = captured_update(trainer)
    metrics = trainer.iteration(1)
    returns: dict[str, list[float]] = {}
    with open(tmp_path / "rollouts" / "iter-00001.jsonl") as rollout:
        for line in rollout:
            record = json.loads(line)
            returns.setdefault(record["example_id"], []).append(sum(record["reward"]["rewards"]))
    tied = [q for q, values in returns.items() if len(set(values)) == 1]
    assert 0 < len(tied) < len(returns)  # the toy reward: some questions tie, some do not
    assert metrics["samples/uniform_questions"] == len(tied)
    assert metrics["samples"] == 2 * (len(returns) - len(tied))  # one step per trajectory, two per question
    assert sum(e.batch.size for e in buffers[0]) == metrics["samples"]


class ZeroScorer:
    """Every step of every trajectory rewarded 0: every question ties."""

    def score(self, examples: Any, trajectories: list[Trajectory]) -> list[TrajectoryReward]:
        return [scored(t.example_id, [0.0] * len(t.steps))[1] for t in trajectories]

    def stats(self) -> dict[str, int]:
        return {}


def test_a_rollout_of_tied_questions_only_leaves_the_policy_as_it_was(tmp_path: Path) -> None:
    trainer = tiny_trainer(one_step_config(tmp_path, skip_uniform_groups=True), ZeroScorer())  # type: ignore[arg-type]
    before = [p.detach().clone() for p in trainer.model.actor_parameters()]
    metrics = trainer.iteration(1)
    assert metrics["samples"] == 0 and metrics["samples/uniform_questions"] == 6
    assert not any(key.startswith(("ppo/", "time/update")) for key in metrics)
    for old, new in zip(before, trainer.model.actor_parameters(), strict=True):
        assert torch.equal(old, new)


def verl_required(tmp_path: Path) -> dict[str, Any]:
    """The fields `r3rag verl prepare` cannot default, for configs that only test validation."""
    return {"model": "m", "train": tmp_path / "t.jsonl", "index": "i", "out": tmp_path}


def test_an_adaptive_penalty_needs_a_first_beta_above_zero(tmp_path: Path) -> None:
    """In the in-process trainer and in veRL's launch (its controller multiplies beta the same way)."""
    with pytest.raises(ValidationError, match="kl_coef 0 would keep it at 0"):
        tiny_config(tmp_path, kl_coef=0.0, kl_target=0.1)
    verl = verl_required(tmp_path)
    with pytest.raises(ValidationError, match="kl_coef 0 would keep it at 0"):
        VerlPrepareConfig(**verl, kl_coef=0.0, kl_target=0.1)
    assert VerlPrepareConfig(**verl, kl_coef=0.0).kl_target is None  # no penalty at all: allowed
    with pytest.raises(ValidationError, match="veRL puts the penalty in the actor's loss"):
        VerlPrepareConfig(**verl, advantage="rloo", kl_target=0.1)  # critic-free: no adaptive controller


def test_rollout_logprobs_on_verl_are_vllms_only(tmp_path: Path) -> None:
    """veRL asks vLLM for its raw (temperature-1) log-probs; what SGLang returns is not checked."""
    verl = verl_required(tmp_path)
    with pytest.raises(ValidationError, match="sglang's are not checked"):
        VerlPrepareConfig(**verl, old_logprobs="rollout", rollout_engine="sglang")
    assert VerlPrepareConfig(**verl, old_logprobs="rollout").rollout_engine == "vllm"
    assert VerlPrepareConfig(**verl, rollout_engine="sglang").old_logprobs == "recompute"


def test_a_baseline_per_step_of_the_group_is_refused_on_verl(tmp_path: Path) -> None:
    """veRL's GRPO compares whole trajectories: no estimator of veRL would take rloo-to-go's baseline."""
    verl = verl_required(tmp_path)
    with pytest.raises(ValidationError, match="advantage"):
        VerlPrepareConfig(**verl, advantage="rloo-to-go")
    assert tiny_config(tmp_path, advantage="rloo-to-go").advantage == "rloo-to-go"  # the local trainer's


@pytest.mark.parametrize("advantage", ["gae", "rloo-to-go"])
def test_skipping_uniform_groups_needs_whole_trajectory_baselines(tmp_path: Path, advantage: str) -> None:
    """rloo-to-go compares steps: tied returns can still differ step by step, so their advantage is not 0."""
    with pytest.raises(ValidationError, match="skip_uniform_groups needs a baseline of whole trajectories"):
        tiny_config(tmp_path, advantage=advantage, skip_uniform_groups=True)


def test_recorded_log_probs_must_match_the_completion(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 behaviour log-probs for 1 action tokens"):
        Sample((1, 2), (False, True), (0.0, 1.0), 0, 0, behaviour_logprobs=(-0.1, -0.2))
    trajectory, reward = scored("q", [1.0])
    trajectory.metadata["step_token_ids"] = [{"prompt": [1, 2], "completion": [3, 4], "logprobs": [-0.5]}]
    with pytest.raises(ValueError, match="step 1: 1 log-probs for 2 completion tokens"):
        step_samples([trajectory], [reward])
    del trajectory.metadata["step_token_ids"][0]["logprobs"]  # not recorded: a sample without them
    (sample,) = step_samples([trajectory], [reward])
    assert sample.behaviour_logprobs == ()


def test_rollout_log_probs_the_rollout_did_not_record_are_refused(tmp_path: Path) -> None:
    trainer = tiny_trainer(one_step_config(tmp_path, old_logprobs="rollout"))
    unrecorded = Sample((1, 2, 3), (False, True, True), (0.0, 0.0, 1.0), 0, 0)
    with pytest.raises(ValueError, match="recorded no log-probs for some steps"):
        trainer._experience([unrecorded])


def test_rollout_log_probs_under_bf16_are_warned_about(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="old_logprobs: rollout under bf16"):
        tiny_trainer(one_step_config(tmp_path, old_logprobs="rollout", bf16=True))
