"""Checkpoints that resume exactly: weights, optimiser states, random-number states and the iteration.

Everything the next iteration depends on is in one ``state.pt`` per checkpoint folder (``iter-00003/``),
written to a temporary folder and renamed into place, so a crash while saving leaves the previous checkpoint
intact. The frozen reference is not saved: it is the cold-start model, reloaded from where the config says.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(directory: Path, iteration: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (plus the RNG states and ``iteration``) as checkpoint ``iteration``; keep the newest
    ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"iter-{iteration:05d}"
    tmp = directory / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({**state, "iteration": iteration, "rng": rng_state()}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return final


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("iter-*") if (p / STATE_FILE).is_file())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved state; the caller restores weights and optimiser, then calls :func:`set_rng_state`."""
    return torch.load(path / STATE_FILE, weights_only=False)
