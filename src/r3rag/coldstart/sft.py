"""Supervised fine-tuning on the cold-start step examples: the paper's R3-RAG-CS, as one readable loop.

The official cold start trains with LLaMA-Factory (full fine-tuning, 3 epochs, cosine schedule with 10%
warmup, loss on the step only). This loop does the same for any causal LM with a chat template, on a CPU or
a GPU, with nothing hidden:

- examples are the SFT jsonl of ``r3rag coldstart`` (chat messages), tokenised as the agent's generator
  tokenises prompts (:mod:`~r3rag.data.sft`); too-long examples are dropped, never cut;
- whole questions are held out for the evaluation loss, so no step of a held-out trajectory is trained on;
- with ``share_prefixes`` the step examples of one trajectory are computed in one row, as PPO computes its
  step samples (:mod:`r3rag.packing`): each step's prompt is the previous one plus a step and its
  documents, so the row holds the longest example once and the others as short branches that attend to the
  prompt they share. The loss and its gradients are those of the separate examples; the tokens computed drop
  ~1.7x on the default world's cold-start data;
- rows (examples, or trajectories) are length-bucketed into micro-batches (shuffled, sorted by length within
  windows, the batches shuffled), so a batch pads little; gradients accumulate over ``grad_accum``
  micro-batches and the loss is the mean over all target tokens of the optimizer step, whatever their split
  into micro-batches;
- logits are computed only at the positions that predict target tokens, not over the prompt: a 49k-token
  vocabulary over a 900-token prompt would otherwise dominate time and memory;
- on a CPU or a GPU (``device``): bf16 autocast with fp32 master weights (a LoRA run's frozen base in
  bf16), optional gradient checkpointing (default on above 1B parameters), AdamW, cosine schedule with
  linear warmup, gradient clipping;
- on several processes (``torchrun --nproc-per-node N -m r3rag sft ...``, :mod:`r3rag.parallel`): each
  computes its share of every optimizer step's micro-batches and their gradients are summed, so the run
  equals a one-process run with the same settings (``grad_accum`` must be a multiple of the processes);
  with ``fsdp`` the processes also shard the weights, gradients and optimizer states (FSDP2), for a full
  fine-tune that does not fit one GPU;
- checkpoints every ``save_every`` steps resume exactly (weights, optimizer, scheduler, RNG and position in
  the epoch); the final model is written to ``final/`` only once training is complete (a temporary folder
  renamed into place), with ``agent.yaml``, the agent settings it was trained for, beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from r3rag import parallel, runs
from r3rag.coldstart.build import CONFIG_FILE as COLDSTART_FILE
from r3rag.config import AGENT_FILE, ColdStartConfig, SFTConfig
from r3rag.data.sft import TokenizedExample, as_samples, tokenized_examples
from r3rag.device import (
    describe,
    enable_gradient_checkpointing,
    peak_gpu_bytes,
    precision,
    resolve_bf16,
    wants_gradient_checkpointing,
    weights_dtype,
)
from r3rag.jsonl import JsonlAppender, rewind
from r3rag.llm.models import load_model
from r3rag.lora import add_lora, load_lora, merged
from r3rag.packing import ActionLogprobs, Sample, check_plain_head, loss_sum, pack_samples, training_rows

FINAL = "final"
CHECKPOINTS = "checkpoints"
CHECKPOINT_LABEL = "step"
LOG_FILE = "log.jsonl"

_BUCKET_BATCHES = 64  # micro-batches per length-sorting window
# Fields that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = frozenset(
    {"eval_every", "save_every", "keep_checkpoints", "threads", "device", "gradient_checkpointing"}
)


@dataclass(slots=True)
class SFTData:
    train: list[TokenizedExample]
    val: list[TokenizedExample]
    dropped_long: int
    fingerprint: str


@dataclass(slots=True)
class SFTResult:
    final: Path
    steps: int
    resumed_from: int
    train_examples: int
    val_examples: int
    train_tokens: int
    last_loss: float
    eval_loss: float | None
    wall_seconds: float
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    """Peak GPU memory torch allocated (``torch.cuda.max_memory_allocated``), on a GPU."""


def prepare_data(config: SFTConfig, tokenizer: Any) -> SFTData:
    """Tokenised examples, split by question into train and held-out, optionally subsampled by question."""
    every = tokenized_examples(config.data, tokenizer)
    examples = [e for e in every if len(e.input_ids) <= config.max_length]
    dropped = len(every) - len(examples)
    questions = sorted({e.example_id for e in examples})
    random.Random(config.seed).shuffle(questions)
    held_out = set(questions[: round(config.val_fraction * len(questions))])
    train = [e for e in examples if e.example_id not in held_out]
    val = [e for e in examples if e.example_id in held_out]
    if config.max_examples is not None and len(train) > config.max_examples:
        train = _whole_questions(train, config.max_examples, config.seed + 1)
    if not train:
        raise ValueError(f"{config.data}: no training examples (all held out, or longer than max_length)")
    digest = hashlib.sha1(json.dumps([(e.example_id, e.input_ids) for e in train]).encode()).hexdigest()
    return SFTData(train, val, dropped, digest)


def _whole_questions(examples: list[TokenizedExample], budget: int, seed: int) -> list[TokenizedExample]:
    """Every example of randomly drawn questions, while they fit in ``budget`` examples: a subset of whole
    trajectories teaches whole plans (and packs) where scattered steps would not."""
    by_question: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_question.setdefault(e.example_id, []).append(i)
    questions = sorted(by_question)
    random.Random(seed).shuffle(questions)
    keep: set[int] = set()
    for question in questions:
        if len(keep) + len(by_question[question]) <= budget:
            keep.update(by_question[question])
    return [e for i, e in enumerate(examples) if i in keep]


def row_length(samples: list[Sample], row: list[int]) -> int:
    """Tokens a row takes: with one member its length, packed the trunk plus each branch past the prefix."""
    members = [samples[i] for i in row]
    (pack,) = pack_samples(members, share_prefixes=True)
    return pack.length(members)


def micro_batches(lengths: list[int], size: int, seed: int) -> list[list[int]]:
    """Row indices in micro-batches of similar length, in a seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = size * _BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def evaluate(
    model: Any, examples: list[TokenizedExample], config: SFTConfig, pad_id: int, bf16: bool
) -> float:
    """Mean per-token loss on the held-out examples."""
    model.eval()
    samples = as_samples(examples)
    rows = training_rows(samples, config.share_prefixes)
    rows.sort(key=lambda row: row_length(samples, row))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), config.micro_batch_size):
            members = [samples[i] for row in rows[start : start + config.micro_batch_size] for i in row]
            loss, n = loss_sum(model, members, config.share_prefixes, pad_id, bf16)
            total, count = total + loss.item(), count + n
    model.train()
    return total / max(count, 1)


def train(
    config: SFTConfig, progress: bool = True, on_step: Callable[[dict[str, Any]], None] | None = None
) -> SFTResult:
    """Train as ``config`` says, resuming from the newest checkpoint in ``config.out`` if there is one.

    ``on_step`` is called with each optimizer step's log record (the CLI and tests watch it).
    """
    out = Path(config.out)
    processes = parallel.start(config.device)
    if config.grad_accum % processes.world:
        raise ValueError(
            f"grad_accum ({config.grad_accum}) must be a multiple of the {processes.world} processes: each "
            "takes the same share of every optimizer step's micro-batches"
        )
    try:
        if not processes.main:  # the main process holds the folder; the others only read its checkpoint
            return _train(config, out, progress=False, on_step=None, processes=processes)
        with runs.locked(out):
            return _train(config, out, progress, on_step, processes)
    finally:
        processes.close()


def _train(
    config: SFTConfig,
    out: Path,
    progress: bool,
    on_step: Callable[[dict[str, Any]], None] | None,
    processes: parallel.Processes,
) -> SFTResult:
    started = time.perf_counter()
    if (out / FINAL).exists():
        raise FileExistsError(f"{out / FINAL}: this run is complete; remove it or choose another --out")
    checkpoint = runs.latest_checkpoint(out / CHECKPOINTS, CHECKPOINT_LABEL)
    if processes.main:
        runs.bind(out, config, holds_results=checkpoint is not None, may_change=_RESUMABLE_CHANGES)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    device = processes.device
    bf16 = resolve_bf16(config.bf16, device)
    dtype = weights_dtype(bf16, trained=not config.lora)
    model, tokenizer = load_model(config.model, dtype=dtype, device=device)
    check_plain_head(model)
    data = prepare_data(config, tokenizer)
    if not config.lora and checkpoint is not None:
        model, _ = load_model(checkpoint, dtype=dtype, device=device)
    if wants_gradient_checkpointing(config.gradient_checkpointing, model):
        enable_gradient_checkpointing(model)
    if config.lora:
        model = _with_lora(model, config, checkpoint)
    model.train()
    # what the optimizer trains and the loss calls: the model, or its FSDP root (r3rag.parallel.shard)
    trained: Any = parallel.shard(ActionLogprobs(model, bf16)) if config.fsdp else model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    samples = as_samples(data.train)
    rows = training_rows(samples, config.share_prefixes)
    lengths = [row_length(samples, row) for row in rows]
    train_tokens = sum(len(s.tokens) for s in samples)
    per_epoch = math.ceil(math.ceil(len(rows) / config.micro_batch_size) / config.grad_accum)
    total = config.max_steps or math.ceil(config.epochs * per_epoch)
    optimizer = _optimizer(trained, config)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * total), total, min_lr_rate=config.min_lr_ratio
    )
    start = 0
    if checkpoint is not None:
        state = runs.load_checkpoint(checkpoint)
        if state["fingerprint"] != data.fingerprint:
            raise ValueError(f"{checkpoint}: trained on other examples than {config.data} gives now")
        if config.fsdp:
            parallel.load_full_optimizer_state(trained, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]

    bar = tqdm(total=total, initial=start, desc="sft", unit="step", disable=not progress, dynamic_ncols=True)
    if progress:
        bar.write(
            f"on {describe(device)}, {precision(bf16)}"
            + (f" and {processes.world - 1} more process(es)" if processes.world > 1 else "")
            + f", {sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M parameters"
        )
        bar.write(
            f"{len(data.train):,} train / {len(data.val):,} held-out examples ({data.dropped_long} longer "
            f"than {config.max_length} dropped), {train_tokens:,} train tokens"
            + (f" in {len(rows):,} packed rows of {sum(lengths):,}" if config.share_prefixes else "")
            + f"; {total} optimizer steps"
            + (f", resuming at step {start}" if start else "")
        )
    epoch_batches: dict[int, list[list[int]]] = {}
    last_loss, eval_loss = float("nan"), None
    if processes.main:  # the steps a crashed run logged after its checkpoint are redone
        rewind(out / LOG_FILE, "step", start)
    with JsonlAppender(out / LOG_FILE) if processes.main else nullcontext() as log:
        for step in range(start, total):
            epoch, group = divmod(step, per_epoch)
            if epoch not in epoch_batches:
                epoch_batches = {epoch: micro_batches(lengths, config.micro_batch_size, config.seed + epoch)}
            group_batches = [
                [samples[i] for row in batch for i in rows[row]]
                for batch in epoch_batches[epoch][group * config.grad_accum : (group + 1) * config.grad_accum]
            ]
            record = _optimizer_step(
                trained, optimizer, scheduler, group_batches, config, pad_id, bf16, processes
            )
            record.update(
                step=step + 1, epoch=round(step / per_epoch, 4), elapsed_s=time.perf_counter() - started
            )
            record.update(runs.peak_memory())
            last_loss = record["loss"]
            # under FSDP every process evaluates and gathers a checkpoint (both are collective); otherwise
            # the main process alone, which writes them
            evaluating = data.val and ((step + 1) % config.eval_every == 0 or step + 1 == total)
            if evaluating and (config.fsdp or processes.main):
                eval_loss = record["eval_loss"] = evaluate(trained, data.val, config, pad_id, bf16)
            if (step + 1) % config.save_every == 0 and step + 1 < total:
                state = {
                    "optimizer": parallel.full_optimizer_state(trained, optimizer)
                    if config.fsdp
                    else optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "fingerprint": data.fingerprint,
                }
                weights = _full_weights(trained) if config.fsdp else None
                if processes.main:
                    runs.save_checkpoint(
                        out / CHECKPOINTS,
                        CHECKPOINT_LABEL,
                        step + 1,
                        state,
                        config.keep_checkpoints,
                        write_files=partial(_save_model, model, tokenizer, weights=weights),
                    )
            if not processes.main:
                continue
            assert log is not None  # the main process's
            log.write(record)
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}", tok_s=f"{record['tok_s']:.0f}"
            )
            if on_step is not None:
                on_step(record)
    bar.close()
    result = SFTResult(
        final=out / FINAL,
        steps=total,
        resumed_from=start,
        train_examples=len(data.train),
        val_examples=len(data.val),
        train_tokens=train_tokens,
        last_loss=last_loss,
        eval_loss=eval_loss,
        wall_seconds=time.perf_counter() - started,
        peak_rss_bytes=runs.peak_rss_bytes(),
        peak_gpu_bytes=peak_gpu_bytes(device),
    )
    weights = _full_weights(trained) if config.fsdp else None
    if processes.main:
        _save_final(out, model, tokenizer, config, result, weights)
    return result


def _optimizer_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: list[list[Sample]],
    config: SFTConfig,
    pad_id: int,
    bf16: bool,
    processes: parallel.Processes,
) -> dict[str, Any]:
    """Accumulate gradients over the micro-batches of one step (this process's share of them, the gradients
    then summed over the processes), then clip and update.

    The loss is the mean over every target token of the step, whichever process computed it. ``tokens``
    counts the examples' tokens (what was trained on, packed or not), so ``tok_s`` compares across
    ``share_prefixes``."""
    began = time.perf_counter()
    targets = sum(s.actions for batch in batches for s in batch)
    tokens = sum(len(s.tokens) for batch in batches for s in batch)
    total, scale = 0.0, processes.gradient_scale(config.fsdp)
    passes = [(batch, 1.0) for batch in processes.share(batches)]
    if config.fsdp:  # a process short of micro-batches (an epoch's last step) still joins FSDP's gathers
        missing = math.ceil(len(batches) / processes.world) - len(passes)
        passes += [(batch, 0.0) for batch in batches[:missing]]
    for batch, weight in passes:
        loss, _ = loss_sum(model, batch, config.share_prefixes, pad_id, bf16)
        (loss * (weight * scale / targets)).backward()
        total += weight * loss.item()
    total = processes.sum(total)
    params = [p for p in model.parameters() if p.requires_grad]
    if not config.fsdp:  # FSDP has reduce-scattered them in the backward passes
        processes.sum_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):  # a sharded model's norm is a distributed tensor
        grad_norm = grad_norm.full_tensor()
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - began
    return {
        "loss": total / targets,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "examples": sum(len(batch) for batch in batches),
        "tokens": tokens,
        "target_tokens": targets,
        "tok_s": tokens / seconds,
    }


def _optimizer(model: Any, config: SFTConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (norms, biases), as Hugging Face trainers do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _with_lora(model: Any, config: SFTConfig, checkpoint: Path | None) -> Any:
    """Fresh adapters, or those of the checkpoint being resumed."""
    if checkpoint is not None:
        return load_lora(model, checkpoint)
    return add_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets, config.lora_dropout)


def _full_weights(trained: Any) -> dict[str, torch.Tensor]:
    """The whole weights of an FSDP-sharded model under their Hugging Face names (every process calls it)."""
    prefix = "model."  # the ActionLogprobs root holds the causal LM as `model`
    return {name.removeprefix(prefix): t for name, t in parallel.full_model_state(trained).items()}


def _save_model(
    model: Any, tokenizer: Any, folder: Path, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """The model as ``save_pretrained`` writes it (the LoRA adapter alone when training one) and the
    tokenizer: what a checkpoint holds besides the trainer's state. ``weights``: a sharded model's whole."""
    model.save_pretrained(folder, state_dict=weights)
    tokenizer.save_pretrained(folder)


def _save_final(
    out: Path,
    model: Any,
    tokenizer: Any,
    config: SFTConfig,
    result: SFTResult,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the final model (LoRA merged in) with its agent settings, then rename it into place."""
    with runs.atomic_folder(out / FINAL) as tmp:
        _save_model(merged(model, keep=False) if config.lora else model, tokenizer, tmp, weights)
        coldstart = Path(config.data).parent / COLDSTART_FILE
        if coldstart.is_file():
            ColdStartConfig.from_yaml(coldstart).agent.to_yaml(tmp / AGENT_FILE)
        summary = {**asdict(result), "final": str(result.final)}
        (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
