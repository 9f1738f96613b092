"""Actor, critic and reference on the tiny Llama: log-probs, values, LoRA and the reference it gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from r3rag.packing import Sample, collate, pack_samples
from r3rag.rl.models import ActorCritic, ReferencePolicy
from r3rag.rl.samples import step_samples
from rl_fixtures import ANSWER, QUERY, scripted_rollout
from tiny_llm import tiny_model, tiny_tokenizer

TARGETS = ("q_proj", "v_proj", "down_proj")


SAMPLES = [
    Sample(tuple(range(5, 17)), (False,) * 8 + (True,) * 4, (0.0,) * 12, 0, 0),
    Sample(tuple(range(40, 47)), (False,) * 3 + (True,) * 4, (0.0,) * 7, 1, 0),
]


def batch():
    return collate(SAMPLES, pack_samples(SAMPLES), pad_id=0)


def reference_logprobs(model, samples=SAMPLES) -> torch.Tensor:
    """Each sample alone through the full model, log softmax read at its action tokens: the obvious way."""
    out = torch.zeros(len(samples), max(s.actions for s in samples))
    for n, sample in enumerate(samples):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([sample.tokens])).logits[0]
        logp = torch.log_softmax(logits, -1)
        where = [p for p, a in enumerate(sample.action_mask) if a]
        out[n, : len(where)] = torch.stack([logp[p - 1, sample.tokens[p]] for p in where])
    return out


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_log_probs_match_the_full_model_and_values_start_at_zero(critic: str) -> None:
    plain = tiny_model()
    model = ActorCritic(tiny_model(), critic)  # type: ignore[arg-type]
    b = batch()
    with torch.no_grad():
        out = model(b, bf16=False)
    assert torch.allclose(out.logprobs * b.action_mask, reference_logprobs(plain), atol=1e-5)
    assert out.values is not None and torch.equal(out.values, torch.zeros_like(out.values))
    assert bool((out.entropy > 0).all())
    assert (model.critic_trunk is None) == (critic == "shared")


def test_the_reference_starts_equal_and_stays_frozen() -> None:
    model = ActorCritic(tiny_model(), "separate")
    reference = ReferencePolicy(model)
    b = batch()
    assert torch.equal(reference.logprobs(b, bf16=False), model(b, bf16=False).logprobs.detach())
    with torch.no_grad():
        for p in model.actor.parameters():
            p.add_(0.01)
    assert torch.allclose(
        reference.logprobs(b, bf16=False) * b.action_mask, reference_logprobs(tiny_model()), atol=1e-5
    )


def test_separate_critic_has_its_own_trunk_and_learning_rate_groups() -> None:
    model = ActorCritic(tiny_model(), "separate")
    actor_ids = {id(p) for p in model.actor_parameters()}
    critic_ids = {id(p) for p in model.critic_parameters()}
    assert not actor_ids & critic_ids
    shared = ActorCritic(tiny_model(), "shared")
    assert len(shared.critic_parameters()) == 2  # the value head's weight and bias only


def test_lora_trains_adapters_only_and_the_reference_is_the_actor_without_them(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    model = ActorCritic(tiny_model(), "shared", lora_rank=4, lora_alpha=8, lora_targets=TARGETS)
    assert sum(isinstance(m, LoraLayer) for m in model.actor.modules()) == 2 * len(TARGETS)  # 2 layers
    trainable = [n for n, p in model.actor.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    reference = ReferencePolicy(model)
    assert reference._model is None  # no second copy of the weights
    b = batch()
    before = reference.logprobs(b, bf16=False)
    assert torch.equal(before, model(b, bf16=False).logprobs.detach())  # B = 0: no change yet
    assert torch.allclose(before * b.action_mask, reference_logprobs(tiny_model()), atol=1e-5)
    with torch.no_grad():
        for name, p in model.actor.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.5)
    moved = model(b, bf16=False).logprobs.detach()
    assert not torch.allclose(moved, before)
    assert torch.equal(reference.logprobs(b, bf16=False), before)
    with model.actor.disable_adapter():
        assert torch.equal(model(b, bf16=False).logprobs.detach(), before)
    assert torch.equal(model(b, bf16=False).logprobs.detach(), moved)  # adapters back on after the reference
    model.save_actor(tmp_path, tiny_tokenizer())  # what final/ holds
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(merged) is type(tiny_model()) and set(merged.state_dict()) == set(tiny_model().state_dict())
    assert torch.allclose(reference_logprobs(merged) * b.action_mask, moved * b.action_mask, atol=1e-5)
    assert torch.equal(reference.logprobs(b, bf16=False), before)  # saving merged a copy, not the actor


def test_lora_targets_must_match_something() -> None:
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="not found in the base model"):
        ActorCritic(tiny_model(), "shared", lora_rank=4, lora_targets=("nope",))


def test_models_that_rescale_logits_are_refused() -> None:
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="rescales its logits"):
        ActorCritic(model)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_trajectory_gives_the_log_probs_of_its_steps_computed_alone(attention: str) -> None:
    _, trajectories, rewards = scripted_rollout(
        {"q": [QUERY, QUERY.replace("1", "2"), ANSWER.replace("2", "3")]}
    )
    samples = step_samples(trajectories, rewards)
    assert len(samples) == 3
    actor = tiny_model()
    actor.set_attn_implementation(attention)
    model = ActorCritic(actor, "shared")
    packed = collate(samples, pack_samples(samples), pad_id=0)
    alone = collate(samples, pack_samples(samples, share_prefixes=False), pad_id=0)
    assert packed.input_ids.shape[0] == 1 and packed.tokens < 0.75 * alone.tokens
    with torch.no_grad():
        logp_packed = model(packed, bf16=False).logprobs * packed.action_mask
        logp_alone = model(alone, bf16=False).logprobs * alone.action_mask
    order = [samples.index(samples[m]) for m in pack_samples(samples)[0].members]
    assert torch.allclose(logp_packed, logp_alone[order], atol=1e-5)
    assert torch.allclose(logp_alone, reference_logprobs(tiny_model(), samples), atol=1e-5)
