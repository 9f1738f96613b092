"""The PPO trainer end to end on the tiny Llama: it learns a toy reward, and a resumed run is the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from r3rag.config import AgentConfig
from r3rag.packing import Sample
from r3rag.rl.losses import adaptive_kl_coef
from r3rag.rl.ppo import snapshot_folder
from r3rag.runs import checkpoints
from rl_fixtures import ToyScorer, tiny_config, tiny_trainer
from tiny_llm import tiny_model

TIMING = ("time/", "memory/", "tokens_per_s")


def comparable(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock figures, which differ between any two runs."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in records]


def test_before_the_first_update_the_policy_is_the_rollout_policy_and_the_reference(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, ppo_epochs=1, minibatch_size=10_000)  # one optimizer step per iteration
    metrics = tiny_trainer(config).iteration(1)
    assert metrics["ppo/optimizer_steps"] == 1
    assert metrics["ppo/clip_fraction"] == 0.0 and metrics["ppo/approx_kl_old"] == 0.0  # ratio == 1 exactly
    assert metrics["ppo/kl"] == 0.0  # the actor is still the reference
    assert metrics["ppo/value_mean"] == 0.0 and metrics["samples"] == 12  # 6 questions x 2, one step each
    assert metrics["rollout/format_error"] == 1.0  # the random tiny model never writes a valid step


def bandit_run(out: Path, **overrides: object) -> tuple[list[dict], list[float]]:
    """A one-token bandit: reward 1 when the token is in TARGET_IDS (about 1 in 5 tokens at the start), 12
    questions x 4 samples per iteration; returns the records and the mean step reward of each iteration."""
    rollout = {"max_steps": 1, "max_format_retries": 0, "max_new_tokens": 1}
    settings: dict = {
        "iterations": 3,
        "questions_per_iteration": 12,
        "samples_per_question": 4,
        "rollout": rollout,
        "ppo_epochs": 1,
        "minibatch_size": 12,
        "eval_questions": 1,
    }
    records = tiny_trainer(tiny_config(out, **(settings | overrides))).train(progress=False)
    return records, [r["reward/step_mean"] for r in records if r["iteration"] > 0]


def test_mean_reward_rises_on_a_toy_reward(tmp_path: Path) -> None:
    records, rewards = bandit_run(tmp_path)
    assert rewards[0] < 0.3 and rewards[-1] > rewards[0] + 0.4, rewards
    assert records[-1]["ppo/kl"] > 0  # it moved away from the reference to get there


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_resumed_run_continues_with_identical_state(tmp_path: Path, lora_rank: int) -> None:
    if lora_rank:
        pytest.importorskip("peft")
    straight = tiny_trainer(tiny_config(tmp_path / "a", lora_rank=lora_rank))
    expected = straight.train(progress=False)

    crashed = tiny_trainer(  # dies in iteration 2's rollout
        tiny_config(tmp_path / "b", lora_rank=lora_rank), ToyScorer(fail_on=2)
    )
    with pytest.raises(KeyboardInterrupt):
        crashed.train(progress=False)
    assert [p.name for p in checkpoints(tmp_path / "b" / "checkpoints", "iter")] == ["iter-00001"]
    with open(tmp_path / "b" / "metrics.jsonl", "a") as metrics:  # killed while writing a line
        metrics.write('{"iteration": 2, "reward/step_me')

    resumed = tiny_trainer(tiny_config(tmp_path / "b", lora_rank=lora_rank))
    records = resumed.train(progress=False)
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert comparable(records) == comparable(expected)
    on_disk = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert comparable(on_disk) == comparable(expected)
    for (name, p), (_, q) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name
    assert str(straight.optimizer.state_dict()["state"]) == str(resumed.optimizer.state_dict()["state"])

    run = tmp_path / "a"
    assert {"config.yaml", "metrics.jsonl", "curve.png", "final", "checkpoints", "rollouts", "dev"} <= {
        p.name for p in run.iterdir()
    }
    assert [p.name for p in checkpoints(run / "checkpoints", "iter")] == [
        "iter-00002"
    ]  # keep_checkpoints = 1
    assert sorted(p.name for p in (run / "dev").iterdir()) == ["iter-00000.jsonl", "iter-00002.jsonl"]
    final = AutoModelForCausalLM.from_pretrained(run / "final")  # a plain model, adapters merged
    assert set(final.state_dict()) == set(tiny_model().state_dict())
    trunk = straight.model.actor.get_decoder()  # through a PeftModel with LoRA, .model is not the trunk
    assert torch.equal(final.model.embed_tokens.weight, trunk.embed_tokens.weight)
    agent = AgentConfig.from_yaml(run / "final" / "agent.yaml")  # the settings to run R3-RAG with
    assert agent == straight.config.rollout.model_copy(update={"temperature": 0.0, "record_token_ids": False})
    assert not (run / ".final.tmp").exists()


def test_a_run_folder_refuses_other_settings(tmp_path: Path) -> None:
    tiny_trainer(tiny_config(tmp_path, iterations=1, eval_questions=1)).train(progress=False)
    with pytest.raises(ValueError, match="kl_coef: 0.01 -> 0.5"):
        tiny_trainer(tiny_config(tmp_path, iterations=1, eval_questions=1, kl_coef=0.5)).train(progress=False)
    records = tiny_trainer(tiny_config(tmp_path, iterations=2, eval_questions=1)).train(progress=False)
    assert [r["iteration"] for r in records] == [0, 1, 2]  # more iterations: the run goes on


def test_a_time_budget_stops_the_run_evaluated_and_saved(tmp_path: Path) -> None:
    records = tiny_trainer(tiny_config(tmp_path, iterations=5, max_minutes=1e-4)).train(progress=False)
    assert [r["iteration"] for r in records] == [0, 1]
    assert "dev/accuracy" in records[-1]
    assert (tmp_path / "final" / "config.json").is_file()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_bf16_rollouts_run_on_a_bf16_copy_of_the_current_actor(tmp_path: Path, lora_rank: int) -> None:
    """Under bf16 the rollout generates with a bf16 copy of the actor as it is now (adapters merged), and
    the trained fp32 weights are left as they were."""
    trainer = tiny_trainer(tiny_config(tmp_path, bf16=True, lora_rank=lora_rank))
    actor = trainer.model.actor
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        start = actor(input_ids=ids).logits
        for p in actor.parameters():  # move the trained weights away from the start, as an update would
            if p.requires_grad:
                p.add_(0.05)
        now = actor(input_ids=ids).logits
        generator = trainer._generator()
        copy = generator.model(input_ids=ids).logits.float()
    assert generator.model is not actor and not generator.autocast
    assert {p.dtype for p in generator.model.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in actor.parameters())
    assert (copy - now).abs().max() < 0.1 * (start - now).abs().max()  # today's weights, rounded to bf16
    assert trainer.iteration(1)["samples"] == 12


def test_fp32_rollouts_generate_with_the_trained_model_itself(tmp_path: Path) -> None:
    trainer = tiny_trainer(tiny_config(tmp_path, bf16=False))
    assert trainer._generator().model is trainer.model.actor


def test_fp32_lora_rollouts_generate_with_the_adapters_merged_into_a_copy(tmp_path: Path) -> None:
    """The copy computes what the actor computes now (adapters moved away from zero, as an update would),
    has no adapter layers left, and the actor keeps its adapters to train."""
    pytest.importorskip("peft")
    trainer = tiny_trainer(tiny_config(tmp_path, bf16=False, lora_rank=4))
    actor = trainer.model.actor
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
        now = actor(input_ids=ids).logits
        with actor.disable_adapter():
            without = actor(input_ids=ids).logits
        generator = trainer._generator()
        plain = generator.model(input_ids=ids).logits
    assert generator.model is not actor
    assert not any("lora" in name for name, _ in generator.model.named_parameters())
    assert any("lora_B" in name for name, _ in actor.named_parameters())
    torch.testing.assert_close(plain, now, rtol=1e-3, atol=1e-4)  # W + BA summed once: float rounding
    assert (now - without).abs().max() > 1e-2  # the adapters count


def test_no_gradient_outlives_an_update(tmp_path: Path) -> None:
    """The next rollout (and its bf16 copy of the actor) carries no gradients of the last update."""
    trainer = tiny_trainer(tiny_config(tmp_path))
    trainer.iteration(1)
    assert all(p.grad is None for p in trainer.model.parameters())


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_gradient_checkpointing_changes_memory_not_the_run(tmp_path: Path, critic: str) -> None:
    """The networks stay in eval mode (no dropout) while their layers recompute in the backward pass; the
    metrics and weights of a run are those of the same run without checkpointing."""
    plain = tiny_trainer(tiny_config(tmp_path / "plain", critic=critic))
    checkpointed = tiny_trainer(tiny_config(tmp_path / "ckpt", critic=critic, gradient_checkpointing=True))
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.actor.model.layers)
    if critic == "separate":
        assert all(layer.gradient_checkpointing for layer in checkpointed.model.critic_trunk.layers)
    assert not checkpointed.model.actor.model.layers[0].self_attn.training
    expected, got = plain.train(progress=False), checkpointed.train(progress=False)
    for a, b in zip(comparable(expected), comparable(got), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
            else:
                assert b[key] == a[key], key
    for (name, p), (_, q) in zip(
        plain.model.state_dict().items(), checkpointed.model.state_dict().items(), strict=True
    ):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name


def test_lora_on_a_bf16_base_trains_fp32_adapters(tmp_path: Path) -> None:
    """The 7B-on-one-GPU setting (LoRA, shared critic, bf16): the frozen base stays bf16 as loaded, the
    adapters and the value head train in fp32, and an iteration runs: rollout, update, checkpoint."""
    pytest.importorskip("peft")
    config = tiny_config(tmp_path, lora_rank=4, critic="shared", bf16=True, iterations=1)
    trainer = tiny_trainer(config, actor=tiny_model().to(torch.bfloat16))
    base_before = {n: p.clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    records = trainer.train(progress=False)
    assert records[-1]["ppo/optimizer_steps"] > 0
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    frozen = {n: p for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trained == {torch.float32} and {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert all(torch.equal(base_before[n], p) for n, p in frozen.items())


@pytest.mark.parametrize("native", [True, False])
def test_bf16_left_unset_follows_what_the_device_computes_natively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """Unset, the trainer computes (and generates its rollouts) in bf16 where the device has bf16 arithmetic
    and in fp32 where torch would emulate it."""
    import r3rag.device as dev

    monkeypatch.setattr(dev, "native_bf16", lambda device: native)
    trainer = tiny_trainer(tiny_config(tmp_path, bf16=None))
    assert trainer.bf16 is native
    rollout_weights = {p.dtype for p in trainer._generator().model.parameters()}
    assert rollout_weights == {torch.bfloat16 if native else torch.float32}


@pytest.mark.parametrize("advantage", ["gae-trajectory", "rloo", "grpo", "rloo-to-go"])
def test_each_credit_scheme_learns_the_toy_reward(tmp_path: Path, advantage: str) -> None:
    """The bandit of :func:`bandit_run`, whose 4 samples per question are the group. A group
    whose 4 samples agree teaches nothing: 5 iterations at a higher rate."""
    _, rewards = bandit_run(tmp_path, advantage=advantage, iterations=5, actor_lr=1e-3)
    assert rewards[-1] > rewards[0] + 0.3, rewards


@pytest.mark.parametrize("advantage", ["rloo", "grpo", "rloo-to-go"])
def test_critic_free_runs_learn_no_value_and_build_no_critic(tmp_path: Path, advantage: str) -> None:
    trainer = tiny_trainer(tiny_config(tmp_path, advantage=advantage, critic="separate"))
    assert trainer.model.critic_trunk is None  # no second trunk for a critic nobody trains
    head = [p.detach().clone() for p in trainer.model.value_head.parameters()]
    metrics = trainer.iteration(1)
    assert all(torch.equal(p, q) for p, q in zip(head, trainer.model.value_head.parameters(), strict=True))
    assert not {"ppo/value_loss", "ppo/explained_variance", "ppo/grad_norm_critic"} & metrics.keys()
    assert metrics["ppo/policy_loss"] == metrics["ppo/policy_loss"]  # a number, not NaN


def test_critic_free_token_advantages_are_the_samples_less_the_kl_to_come(tmp_path: Path) -> None:
    """A_t = (the scalar the credit scheme placed) - beta * sum of KL_t' for t' >= t in the step, by hand."""
    config = tiny_config(tmp_path, advantage="rloo", normalize_advantages=False, kl_coef=0.5)
    trainer = tiny_trainer(config)
    trainer.iteration(1)  # moves the actor off the reference: KL != 0 from here on
    samples = [
        Sample((5, 6, 7, 8), (False, True, True, True), (0.0, 0.0, 0.0, 1.5), trajectory=0, step=0),
        Sample((5, 9, 10), (False, True, True), (0.0, 0.0, -0.5), trajectory=1, step=0),
    ]
    buffer, _ = trainer._experience(samples)
    checked = 0
    for e in buffer:
        mask = e.batch.action_mask
        assert e.kl.abs().sum() > 0
        placed = e.batch.rewards.sum(-1, keepdim=True)  # one scalar per sample
        kl_to_come = (e.kl * mask).flip(-1).cumsum(-1).flip(-1)
        torch.testing.assert_close(e.advantages, (placed - 0.5 * kl_to_come) * mask)
        assert torch.equal(e.old_values, torch.zeros_like(e.old_values))
        checked += e.batch.size
    assert checked == 2


def test_the_kl_penalty_follows_the_controller_and_resumes_where_it_was(tmp_path: Path) -> None:
    """Each iteration's beta is the controller's step from the one before, on that iteration's KL and
    samples; a run resumed from a checkpoint goes on with the beta it had, not the first one."""
    settings = {"kl_target": 1e-4, "kl_horizon": 4.0, "iterations": 4, "eval_questions": 1}
    straight = tiny_trainer(tiny_config(tmp_path / "a", **settings)).train(progress=False)
    steps = [r for r in straight if r["iteration"] > 0]
    assert steps[0]["ppo/kl_coef"] == 0.01  # kl_coef is the first beta
    for before, after in zip(steps, steps[1:], strict=False):
        expected = adaptive_kl_coef(
            before["ppo/kl_coef"], before["ppo/kl"], 1e-4, before["samples"], 4.0, floor=0.01
        )
        assert after["ppo/kl_coef"] == pytest.approx(expected)
    # at the reference (KL 0) beta stays at its floor; then the actor moves past the tiny target: beta rises
    assert [r["ppo/kl_coef"] for r in steps][:2] == [0.01, 0.01]
    assert steps[-1]["ppo/kl_coef"] > steps[-2]["ppo/kl_coef"] > 0.01

    with pytest.raises(KeyboardInterrupt):
        tiny_trainer(tiny_config(tmp_path / "b", **settings), ToyScorer(fail_on=3)).train(progress=False)
    resumed = tiny_trainer(tiny_config(tmp_path / "b", **settings)).train(progress=False)
    assert comparable(resumed) == comparable(straight)


def test_a_snapshot_is_the_model_a_shorter_budget_ends_with(tmp_path: Path) -> None:
    """snapshot_minutes M keeps the actor of the iteration a run of max_minutes M stops after (here the
    first: any iteration outlasts the budget); a budget the run never reaches keeps its last iteration."""
    tiny_trainer(tiny_config(tmp_path / "short", iterations=3, max_minutes=1e-4)).train(progress=False)
    long = tiny_trainer(tiny_config(tmp_path / "long", iterations=3, snapshot_minutes=[1e-4, 1e3]))
    records = long.train(progress=False)
    assert records[-1]["iteration"] == 3
    early, whole = snapshot_folder(tmp_path / "long", 1e-4), snapshot_folder(tmp_path / "long", 1e3)
    assert early.name == "0.0001min" and whole.name == "1000min"
    assert json.loads((early / "snapshot.json").read_text())["iteration"] == 1
    assert json.loads((whole / "snapshot.json").read_text())["iteration"] == 3
    short = AutoModelForCausalLM.from_pretrained(tmp_path / "short" / "final").state_dict()
    for name, weights in AutoModelForCausalLM.from_pretrained(early).state_dict().items():
        assert torch.equal(weights, short[name]), name
    assert AgentConfig.from_yaml(early / "agent.yaml") == AgentConfig.from_yaml(
        tmp_path / "short" / "final" / "agent.yaml"
    )
