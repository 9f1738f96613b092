"""SFT checkpoints: Hugging Face model folders plus the trainer state that makes a run resumable.

A checkpoint is ``checkpoints/step-000200/``: the model as ``save_pretrained`` writes it (the full model, or
the LoRA adapter), the tokenizer, and ``trainer_state.pt`` (optimizer and scheduler state, RNG states, the
step reached, and a fingerprint of the training examples, so a run is never resumed on other data). It is
written into a temporary folder and renamed into place, so an interrupted save leaves no checkpoint that
looks complete; only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoints"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = checkpoint_dir(out)
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def save_checkpoint(
    out: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    torch.save({**state, "step": step, "rng": rng}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    complete = sorted(p for p in root.iterdir() if _NAME.match(p.name))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, with the RNG states restored."""
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state
