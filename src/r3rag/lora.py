"""LoRA adapters (Hu et al. 2021) through ``peft``: the one LoRA code path of the cold start and of PPO.

Both trainers need the same things from LoRA: train only the adapters of a causal LM, and merge them into
plain weights so that ``final/`` is an ordinary Hugging Face checkpoint that every later stage loads without
knowing LoRA was used. PPO also switches them off (``PeftModel.disable_adapter()``) to get the frozen
reference policy without a second copy of the weights, as TRL does.

``peft`` is an optional extra, imported only when LoRA is asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft import PeftModel

MISSING_PEFT = "LoRA needs peft: pip install 'r3rag[lora]'"


def _peft() -> ModuleType:
    try:
        import peft
    except ImportError:
        raise RuntimeError(MISSING_PEFT) from None
    return peft


def add_lora(
    model: Any, rank: int, alpha: float, targets: Sequence[str] | str, dropout: float = 0.0
) -> PeftModel:
    """``model`` with fresh adapters (A random, B = 0: it starts as ``model``); everything else frozen.

    ``targets`` are module names, or peft's ``"all-linear"``; names that match nothing raise peft's
    ``ValueError`` rather than training nothing. ``model`` itself is changed (its layers are wrapped).
    """
    peft = _peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def load_lora(model: Any, path: str | Path) -> PeftModel:
    """``model`` with the trainable adapters saved in ``path`` (a checkpoint being resumed)."""
    return _peft().PeftModel.from_pretrained(model, path, is_trainable=True)


def merged(model: PeftModel, *, keep: bool) -> Any:
    """The plain model with the adapters merged into its weights: what ``final/`` holds.

    ``keep`` merges a copy and leaves ``model`` as it was (PPO's reference is the actor without its adapters,
    so they must stay separate); otherwise the merge is done in place, at no memory cost, and ``model`` is
    left without its adapters.
    """
    return (copy.deepcopy(model) if keep else model).merge_and_unload()
