"""Low-rank adapters (LoRA, Hu et al. 2021) for the actor, in a few lines instead of a dependency.

Why our own: the trainer needs three things from LoRA and nothing else: train only the adapters, switch them
off to get the frozen reference model for free (no second copy of the weights, as TRL does with peft), and
merge them into plain weights so the final actor is an ordinary Hugging Face checkpoint that every stage
loads without knowing LoRA was used.

W x  ->  W x + (alpha / r) * B A x,   A: r x in (random), B: out x r (zeros, so training starts at W).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update that can be switched off."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as the LoRA paper does
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.enabled:
            out = out + (x @ self.lora_a.T.to(x.dtype)) @ self.lora_b.T.to(x.dtype) * self.scale
        return out

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight is W + scale * B A."""
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight += self.scale * self.lora_b @ self.lora_a
        linear.weight.requires_grad_(True)
        return linear


def apply_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> int:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets``; freeze everything else.

    Returns how many layers were wrapped (0 is an error: the target names match nothing in this model).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, rank, alpha))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"no nn.Linear named any of {list(targets)} in {type(model).__name__}")
    return wrapped


def lora_layers(model: nn.Module) -> Iterator[LoRALinear]:
    return (m for m in model.modules() if isinstance(m, LoRALinear))


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` without its adapters: the weights it started from (the reference policy)."""
    layers = list(lora_layers(model))
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged into its Linear: a plain model to save."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return out
