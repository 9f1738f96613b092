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

A model whose full fine-tune does not fit one GPU is sharded instead (``fsdp``, :func:`shard`: PyTorch's
FSDP2): each process keeps 1/N of every weight, gradient and optimizer state, gathers a transformer block's
weights just before it runs, and reduce-scatters its gradients after its backward pass. The unit FSDP wraps
as its root is the module whose ``forward`` the trainer calls, so the embeddings, final norm and head (tied
or not) are gathered there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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

    def gradient_scale(self, sharded: bool) -> int:
        """What a process's loss is multiplied by so that gradients end up summed over the processes: FSDP
        averages them as it reduce-scatters (a factor of 1 over N would need a reduction gloo lacks)."""
        return self.world if sharded else 1

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


def main_process() -> bool:
    """Whether this is the process that reports (the only one without a launcher; rank 0 under one)."""
    return int(os.environ.get("RANK", "0")) == 0


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


def shard(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` sharded over the processes with FSDP2: each transformer block a unit of its own, ``module``
    the root holding the rest. FSDP averages gradients over the processes (:attr:`Processes.gradient_scale`
    makes that a sum). Make the optimizer after this: the weights become sharded tensors."""
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    for block in [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]:
        fully_shard(block)
    # the root reshards after its forward too: an evaluation (no backward) would leave its weights whole
    fully_shard(module, reshard_after_forward=True)
    return module


def full_model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded module's whole state dict on the host (every process must call it; each gets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module, options=options)
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def full_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A sharded model's optimizer state, whole, on the host (every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_full_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Give each process its shard of an optimizer state :func:`full_optimizer_state` saved."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state, options=options)
