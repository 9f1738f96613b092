"""The three networks of PPO: the actor, the critic (a value head) and the frozen reference.

- **actor**: the policy, a Hugging Face causal LM started from the cold-start model (R3-RAG-CS); fully
  fine-tuned (official) or through LoRA adapters (peft, :mod:`r3rag.lora`). With LoRA it is a
  ``PeftModel``, which passes ``config``, ``get_decoder()`` and ``get_output_embeddings()`` on to the wrapped
  model; the code here reaches the trunk and the head only through those, never through ``.model`` or
  ``.lm_head``, whose meaning the wrapper changes.
- **critic**: a linear value head on a transformer trunk. ``separate`` gives it its own trunk, a copy of
  the actor's (official: the critic is initialised from the actor checkpoint with a fresh value head);
  ``shared`` puts the head on the actor's own trunk: one forward and backward pass per batch instead of
  two, and no second trunk with its gradients and Adam states, at the price of value gradients reaching the
  policy's weights (a deviation from the paper, as in CleanRL's Atari agents).
- **reference**: the cold-start model, frozen, for the KL penalty: a frozen copy, or with LoRA the actor
  with its adapters switched off.

Only the positions that predict action tokens go through the LM head (:class:`~r3rag.rl.samples.Batch`),
and the head and the value head run in fp32: the trunk runs under bf16 autocast when asked, but
log-probabilities and values are small differences of large numbers, where bf16's 8 bits of mantissa show.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from r3rag.lora import add_lora, merged
from r3rag.rl.losses import entropy_from_logits
from r3rag.rl.samples import Batch

CriticMode = Literal["separate", "shared"]
_LOGIT_RESCALING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(slots=True)
class PolicyOutput:
    """Per action token: log pi(a_t), the entropy of pi at t (no gradient), and V(s_t) when asked."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None


def check_plain_head(model: Any) -> None:
    """Log-probs are computed as head(trunk(x)); models that rescale or cap logits after the head would get
    wrong ones silently, so they are refused."""
    for name in _LOGIT_RESCALING:
        value = getattr(model.config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__} rescales its logits ({name}={value}); not supported")
    if not isinstance(model.get_output_embeddings(), nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear output head")


def action_hidden(trunk: nn.Module, batch: Batch, bf16: bool) -> torch.Tensor:
    """The trunk's last hidden states at the tokens that predict the batch's actions: ``[N, A, H]``, fp32."""
    mask = batch.attention_mask
    if trunk.config._attn_implementation != "sdpa":  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = trunk(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
    return hidden[batch.rows[:, None], batch.positions].float()


def _head_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return head(hidden)


def _token_logprobs(logits: torch.Tensor, action_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[a] = logit_a - logsumexp(logits), without materialising the whole log-softmax."""
    return logits.gather(-1, action_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def action_logprobs(model: nn.Module, batch: Batch, bf16: bool) -> torch.Tensor:
    """log pi(a) of a causal LM for each of the batch's action tokens: ``[N, A]`` (padding included; mask it
    with ``batch.action_mask``). The reference policy's pass, and the SFT loss's."""
    hidden = action_hidden(model.get_decoder(), batch, bf16)
    return _token_logprobs(_head_logits(model.get_output_embeddings(), hidden), batch.action_ids)


class ActorCritic(nn.Module):
    """The trained networks: the actor LM, the value head and, in ``separate`` mode, the critic's trunk.

    Its ``state_dict`` is everything a checkpoint needs to restore them.
    """

    def __init__(
        self,
        actor: nn.Module,
        critic: CriticMode = "separate",
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_targets: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        check_plain_head(actor)
        self.critic_mode = critic
        self.critic_trunk = copy.deepcopy(actor.get_decoder()) if critic == "separate" else None
        self.lora = lora_rank > 0
        self.actor = add_lora(actor, lora_rank, lora_alpha, lora_targets) if self.lora else actor
        self.value_head = nn.Linear(actor.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 everywhere at the start: no made-up baseline
        nn.init.zeros_(self.value_head.bias)

    def actor_parameters(self) -> list[nn.Parameter]:
        """What the actor learning rate applies to (with ``shared``, the trunk the value head sits on too)."""
        return [p for p in self.actor.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        """What the critic learning rate applies to: the value head, and the critic's trunk if it has one."""
        trunk = [] if self.critic_trunk is None else list(self.critic_trunk.parameters())
        return [*self.value_head.parameters(), *trunk]

    def forward(
        self, batch: Batch, bf16: bool, values: bool = True, entropy_grad: bool = False
    ) -> PolicyOutput:
        """Log-probs of the batch's action tokens, their entropies and (if ``values``) the values V(s_t)."""
        hidden = action_hidden(self.actor.get_decoder(), batch, bf16)
        logits = _head_logits(self.actor.get_output_embeddings(), hidden)
        logprobs = _token_logprobs(logits, batch.action_ids)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
        value = None
        if values:
            critic_hidden = (
                hidden if self.critic_trunk is None else action_hidden(self.critic_trunk, batch, bf16)
            )
            with torch.autocast("cpu", enabled=False):
                value = self.value_head(critic_hidden).squeeze(-1)
        return PolicyOutput(logprobs, entropy, value)

    def save_actor(self, path: str | Path, tokenizer: Any) -> None:
        """The actor as a plain Hugging Face checkpoint (adapters merged), with its tokenizer."""
        model = merged(self.actor, keep=True) if self.lora else self.actor
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


class ReferencePolicy:
    """The frozen cold-start policy pi_ref: its own frozen copy, or the LoRA actor with adapters off."""

    def __init__(self, actor_critic: ActorCritic) -> None:
        self._actor_critic = actor_critic
        self._model: nn.Module | None = None
        if not actor_critic.lora:
            self._model = copy.deepcopy(actor_critic.actor).eval()
            for p in self._model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: Batch, bf16: bool) -> torch.Tensor:
        if self._model is not None:
            return action_logprobs(self._model, batch, bf16)
        actor = self._actor_critic.actor
        with actor.disable_adapter():
            return action_logprobs(actor, batch, bf16)
