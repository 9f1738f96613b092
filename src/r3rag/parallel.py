"""Data parallelism over processes: ``torchrun --nproc-per-node N -m r3rag sft ...`` or ``accelerate launch``.

A launcher starts one process per GPU (or per CPU slot) and tells each its ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` through the environment; without a launcher there is one process and nothing here does
anything. Each process holds the whole model and computes its share of every optimizer step's micro-batches;
their gradients are summed across processes before the step, so every process takes the same step and the
result equals one process computing every micro-batch (up to the order of a floating-point sum). It is plain
data parallelism written out, as nanoGPT does it, rather than ``DistributedDataParallel``: the trainer
reaches the model's trunk and head directly (``get_decoder()``), which a DDP wrapper would hide, and a
training step is a few hundred milliseconds to seconds, so overlapping the all-reduce with the backward pass
(DDP's one advantage here) would buy little.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import distributed as dist

from r3rag.device import resolve_device

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Processes:
    """This process's place among those the launcher started, and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """The process that writes the run folder (logs, checkpoints, the final model)."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's micro-batches of an optimizer step: every ``world``-th, from its rank."""
        return list(items[self.rank :: self.world])

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (a parameter without one counts as zeros)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, value: float) -> float:
        """A number summed over the processes."""
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def start(device: str) -> Processes:
    """Join the launcher's processes (if any) and pick this process's device: with several processes on
    GPUs, the GPU of its ``LOCAL_RANK``; ``device`` says whether they are GPUs (auto: if torch sees any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device)
    if world == 1:
        return Processes(0, 1, chosen)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"process {rank} has LOCAL_RANK {local} but torch sees {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU"
            )
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Processes(rank, world, chosen)
