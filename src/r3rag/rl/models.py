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

Only the positions that predict action tokens go through the LM head (:class:`~r3rag.packing.Batch`),
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

from r3rag.device import full_precision, module_device
from r3rag.lora import add_lora, merged
from r3rag.packing import (
    Batch,
    CausalLM,
    action_hidden,
    action_logprobs,
    check_plain_head,
    head_logits,
    token_logprobs,
)
from r3rag.rl.losses import entropy_from_logits

CriticMode = Literal["separate", "shared"]


@dataclass(slots=True)
class PolicyOutput:
    """Per action token: log pi(a_t), the entropy of pi at t (no gradient), and V(s_t) when asked."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None


class ActorCritic(nn.Module):
    """The trained networks: the actor LM, the value head and, in ``separate`` mode, the critic's trunk.

    Its ``state_dict`` is everything a checkpoint needs to restore them.
    """

    def __init__(
        self,
        actor: CausalLM,
        critic: CriticMode = "separate",
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_targets: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        check_plain_head(actor)
        self.critic_mode = critic
        # a separate critic trunk is trained: fp32 even when a LoRA actor's frozen base was loaded in bf16
        self.critic_trunk = copy.deepcopy(actor.get_decoder()).float() if critic == "separate" else None
        self.lora = lora_rank > 0
        self.actor: CausalLM = add_lora(actor, lora_rank, lora_alpha, lora_targets) if self.lora else actor
        self.value_head = nn.Linear(actor.config.hidden_size, 1, device=module_device(actor))
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
        logits = head_logits(self.actor.get_output_embeddings(), hidden)
        logprobs = token_logprobs(logits, batch.action_ids)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
        value = None
        if values:
            critic_hidden = (
                hidden if self.critic_trunk is None else action_hidden(self.critic_trunk, batch, bf16)
            )
            with full_precision(critic_hidden.device):
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
