"""Where a model runs and in which precision: the one place that decides it for every stage.

Every stage that holds a model in its own process (``sft``, ``train``, ``ask``/``eval``/``coldstart`` with a
local model) takes a ``device`` setting, resolved here: ``auto`` is the first CUDA GPU when torch sees one,
else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` name one. Asking for a GPU that is not there is an error that
says so, never a silent fall back to the CPU (a 7B model trained on a CPU by mistake runs for months).

Precision follows one rule on every device: with ``bf16``, forward passes run under bf16 autocast
(``autocast``), weights that are trained stay fp32 masters, and weights that are never trained (a LoRA base,
a model that only generates) are loaded in bf16 directly, on their device, so no fp32 copy ever sits in host
memory (``weights_dtype``). Code that needs fp32 inside an autocast region (the LM head, the value head: small
differences of large numbers) opens ``full_precision``. No other module names a device type.

Whether ``bf16`` is on is a stage's setting; unset, it is on where the device computes bf16 in hardware
(``native_bf16``: a GPU of the Ampere generation or later, a CPU with AVX-512 BF16 or AMX) and off elsewhere,
where torch emulates it: on a 2-core AVX2 EPYC (no AVX-512), an SFT step of the embedded model over 4 x 512
tokens took 415 s under bf16 autocast and 26 s in fp32, a PPO update 406 s and 16 s, a batch of generation 23
s and 8.5 s (``benchmarks/allocators.py``; docs/results.md, "bf16 on a CPU without bf16 arithmetic").
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

AUTO = "auto"
HOST = torch.device("cpu")
"""Where files are read into and batches laid out: the host's memory, whatever device a model runs on."""
GRADIENT_CHECKPOINTING_PARAMETERS = 1_000_000_000
"""Above this many parameters, training recomputes activations in the backward pass by default: a 7B model's
activations at 4k tokens would otherwise take more memory than its weights."""


def resolve_device(name: str | torch.device = AUTO) -> torch.device:
    """The torch device a ``device`` setting names (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    if isinstance(name, torch.device):
        return name
    if name == AUTO:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device {name!r}: torch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu "
                "or auto, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: only cpu and cuda devices are supported")
    return device


def loading_placement(device: torch.device | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that read the weights straight onto ``device`` (accelerate's device map);
    none for the CPU, where transformers loads anyway."""
    if device is None or device.type == "cpu":
        return {}
    return {"device_map": {"": device}}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device a model's weights are on (its first parameter's)."""
    return next(module.parameters()).device


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` (a no-op context when not ``enabled``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def full_precision(device: torch.device) -> AbstractContextManager[Any]:
    """fp32 inside an autocast region: log-probabilities and values, where bf16's 8-bit mantissa shows."""
    return torch.autocast(device.type, enabled=False)


def weights_dtype(bf16: bool, trained: bool) -> torch.dtype:
    """The dtype weights are loaded in: bf16 when ``bf16`` and they are not trained, else fp32 (masters)."""
    return torch.bfloat16 if bf16 and not trained else torch.float32


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """What decides CPU speed here: the model name, bf16 arithmetic (AVX-512 BF16) and AMX tiles."""

    model: str
    avx512_bf16: bool
    amx: bool


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    """The CPU's model and features, from ``/proc/cpuinfo`` (unknown elsewhere)."""
    model, flags = "unknown", set[str]()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return CpuFeatures(model, "avx512_bf16" in flags, "amx_bf16" in flags)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 in hardware: a CUDA GPU that does (not by emulation, as a V100 or
    T4 would), a CPU with AVX-512 BF16 or AMX (read from ``/proc/cpuinfo``: a CPU it does not describe, as
    on macOS, counts as one without)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    features = cpu_features()
    return features.avx512_bf16 or features.amx


def resolve_bf16(setting: bool | None, device: torch.device) -> bool:
    """A stage's ``bf16`` setting on ``device``: as set, else where the device computes bf16 natively
    (:func:`native_bf16`; for a model that only generates, bf16 weights halve the memory traffic of every
    decoded token: 1.75x faster decoding on a Zen 4 CPU). Set on where it does not, it stays on, with a
    warning: emulated bf16 is an order of magnitude slower than fp32 (the module's docstring)."""
    if setting is None:
        return native_bf16(device)
    if setting and not native_bf16(device):
        warnings.warn(
            f"bf16 on {device.type}, which has no bf16 arithmetic (a CPU without AVX-512 BF16 or AMX, a GPU "
            "before Ampere): torch emulates it, 16-26x slower than fp32 in training on an AVX2 CPU; leave "
            "bf16 unset (or false) for fp32",
            stacklevel=1,
        )
    return setting


def precision(bf16: bool) -> str:
    """The precision of a run for its logs: ``bf16`` (mixed, fp32 masters) or ``fp32``."""
    return "bf16" if bf16 else "fp32"


def needs_autocast(model: torch.nn.Module, bf16: bool) -> bool:
    """Whether a model's forward passes must run under autocast for bf16 compute: some of its weights are fp32
    (a model being trained, LoRA adapters on a bf16 base); a model all in bf16 computes in bf16 anyway."""
    return bf16 and any(p.dtype == torch.float32 for p in model.parameters())


def autocast_single_rows(device: torch.device) -> bool:
    """Whether a batch of one row should decode under autocast. Not on a CPU: there a single row decoded in
    fp32 ran 2x faster than under bf16 autocast (20.8 vs 10.7 tok/s, 2-core Xeon, llm/hf.py); a GPU's tensor
    cores want bf16 at any batch size."""
    return device.type == "cuda"


def wants_gradient_checkpointing(setting: bool | None, model: torch.nn.Module) -> bool:
    """The ``gradient_checkpointing`` setting, where ``None`` means: on for models above ~1B parameters."""
    if setting is not None:
        return setting
    return sum(p.numel() for p in model.parameters()) > GRADIENT_CHECKPOINTING_PARAMETERS


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each transformer layer's activations in the backward pass (non-reentrant checkpoints, which
    need no input that requires grad: a LoRA model's frozen embeddings give none).

    Transformers checkpoints a layer only in training mode; PPO keeps its networks in eval mode (no dropout,
    so the update's log-probs equal the rollout's), so only the layers themselves are switched to training
    mode, not the attention and dropout modules inside them.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; 4.x has the old one only
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


def peak_gpu_bytes(device: torch.device) -> int | None:
    """Peak memory torch allocated on ``device`` so far, if it is a GPU (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def describe(device: torch.device) -> str:
    """The device for logs: ``cuda:0 (NVIDIA H200, 140 GB)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 1e9:.0f} GB)"
    return f"cpu ({torch.get_num_threads()} threads)"
