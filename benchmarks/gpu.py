"""The GPU check: SFT, a PPO iteration and batched rollouts at the paper's model sizes, in one command.

Models are randomly initialised with the shapes of the public Qwen2.5-1.5B and Qwen2.5-7B configs (a GPU
machine without a model hub can run it), so their outputs are noise: the figures are speed and memory, which
depend on the shapes, not on what the weights know. Parts, each a table:

- ``greedy``: a small random model decodes the same greedy tokens on the GPU as on the CPU (fp32 on both;
  the decode loop is one code path, pinned on the CPU by tests/test_llm_hf.py);
- ``sft``: optimizer steps of ``r3rag.coldstart.sft`` (its loss, packing and head-at-targets code), rows of
  ``--sft-tokens`` random tokens whose second half is the target, bf16 autocast: tokens/s, MFU and peak
  GPU memory. 1.5B full fine-tune, 7B with LoRA (rank 16) and 7B full fine-tune (fp32 masters and AdamW
  states: ~120 GB, it may not fit). Gradient checkpointing as r3rag defaults it (on above 1B parameters).
  MFU counts model FLOPs (recomputation excluded) against ``--peak-tflops`` (788 TFLOP/s: a bf16 matrix
  product measured on an H200): per trained token 6 x the trunk's parameters (4 x for a frozen LoRA base:
  no weight gradients) plus causal attention, and the LM head only at target tokens, where r3rag runs it;
- ``rollout``: ``HFGenerator`` (r3rag's batched decode loop) on the 7B shape in bf16, prompts of
  ``--prompt-tokens``, ``--new-tokens`` greedy tokens per row, at batch 1, 32 and 128: generated tokens/s,
  and at batch 1 the milliseconds per token next to the memory-bandwidth floor (weight bytes / 4.3 TB/s);
  then transformers' own ``generate`` at batch 1 with its dynamic cache, and with a static cache compiled
  by ``torch.compile`` (compile time reported apart): what a static cache and CUDA graphs would buy;
- ``ppo``: one iteration of ``r3rag train`` on the synthetic world (agent loop, BM25, hybrid reward with
  gold-passage relevance, update) with the 7B shape under LoRA + shared critic, bf16: seconds per part and
  peak memory. The random policy never writes a valid step, so each trajectory is one step of
  ``--ppo-new-tokens`` tokens: the rollout is the cold-start workload, not a trained policy's.

The 7B shape uses the embedded SmolLM2 tokenizer (49k tokens instead of Qwen's 152k: 0.8B fewer parameters
in the embeddings and the head) for the rollout and PPO parts, which need a chat template offline.

    python3 benchmarks/gpu.py                 # on a GPU machine: every part (about 6 minutes on an H200)
    python3 benchmarks/gpu.py --tiny          # any machine: tiny shapes, checks the script in a minute
    python3 benchmarks/gpu.py --parts sft,rollout --json gpu.json

On the lent H200 (no internet): ``make gpu-prepare`` here writes ``.gpu/`` (wheels of the dependencies its
image lacks, and the tokenizer), then run there ``pip install --no-index --no-deps --target /tmp/site
.gpu/wheels/*.whl && PYTHONPATH=/tmp/site:src python3 benchmarks/gpu.py --tokenizer .gpu/tokenizer``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from _summary import report  # noqa: E402  (after the offline switches)

from r3rag.device import (  # noqa: E402
    describe,
    enable_gradient_checkpointing,
    resolve_device,
    wants_gradient_checkpointing,
)

PARTS = ("greedy", "sft", "rollout", "ppo")
SHAPES: dict[str, dict[str, Any]] = {  # the public configs' shapes (Qwen/Qwen2.5-1.5B, Qwen/Qwen2.5-7B)
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,
    tie_word_embeddings=False,
)
HBM_BYTES_PER_S = 4.3e12
"""Device-to-device copy bandwidth measured on an H200 (reference: the device tool's KINDS.md)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes on any device: checks the script.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (r3rag.device).")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated, of {', '.join(PARTS)}.")
    parser.add_argument("--tokenizer", help="A tokenizer folder (default: the embedded SmolLM2's).")
    parser.add_argument("--peak-tflops", type=float, default=788.0, help="bf16 peak for MFU (H200: 788).")
    parser.add_argument("--sft-tokens", type=int, default=4096, help="Tokens per SFT row.")
    parser.add_argument(
        "--sft-rows", type=int, default=4, help="Rows per optimizer step (2 per micro-batch)."
    )
    parser.add_argument("--sft-steps", type=int, default=4, help="Timed optimizer steps (after one warm-up).")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="Prompt length of the rollout part.")
    parser.add_argument("--new-tokens", type=int, default=128, help="Generated tokens per rollout row.")
    parser.add_argument("--batch-sizes", default="1,32,128", help="Rollout batch sizes.")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="Skip the static cache.")
    parser.add_argument("--ppo-questions", type=int, default=16, help="Questions of the PPO iteration (x4).")
    parser.add_argument("--ppo-new-tokens", type=int, default=256, help="Tokens per rollout step in PPO.")
    parser.add_argument("--json", type=Path, help="Also write every row here.")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.tiny:
        print(f"no CUDA GPU here ({describe(device)}): running the tiny shapes, a check of the script only")
        args.tiny = True
    if args.tiny:
        _shrink(args)
    tokenizer = _tokenizer(args.tokenizer)
    print(
        f"# r3rag GPU check: {describe(device)}, torch {torch.__version__}, "
        f"{'tiny shapes' if args.tiny else 'Qwen2.5 shapes'}",
        flush=True,
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    runners: dict[str, Callable[[argparse.Namespace, torch.device, Any], list[dict[str, Any]]]] = {
        "greedy": greedy_part,
        "sft": sft_part,
        "rollout": rollout_part,
        "ppo": ppo_part,
    }
    for part in parts:
        started = time.perf_counter()
        rows[part] = runners[part](args, device, tokenizer)
        _print_table(part, rows[part], time.perf_counter() - started)
    _summaries(rows, args.tiny)
    if args.json:
        args.json.write_text(json.dumps({"device": describe(device), "tiny": args.tiny, **rows}, indent=2))
    return 0


def _shrink(args: argparse.Namespace) -> None:
    """Settings that finish in about a minute on a CPU."""
    args.sft_tokens, args.sft_rows, args.sft_steps = 64, 2, 1
    args.prompt_tokens, args.new_tokens, args.batch_sizes = 32, 4, "1,4"
    args.ppo_questions, args.ppo_new_tokens, args.compile = 2, 4, False


def _tokenizer(folder: str | None) -> Any:
    from transformers import AutoTokenizer

    from r3rag.llm.models import EMBEDDED_POLICY, resolve_model

    return AutoTokenizer.from_pretrained(folder or resolve_model(EMBEDDED_POLICY))


def _shape(args: argparse.Namespace, name: str, vocab_size: int | None = None) -> dict[str, Any]:
    shape = dict(TINY_SHAPE if args.tiny else SHAPES[name])
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    return shape


def random_model(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialised Qwen2 causal LM of ``shape``, created directly on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **shape, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


@contextmanager
def measured(device: torch.device) -> Iterator[dict[str, float]]:
    """Wall seconds (the device synchronised) and peak GPU memory of the block, freed memory after it."""
    figures: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        yield figures
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            figures["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        figures["seconds"] = time.perf_counter() - started
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# ------------------------------------------------------------------------------------------------- greedy


def greedy_part(args: argparse.Namespace, device: torch.device, tokenizer: Any) -> list[dict[str, Any]]:
    """The same greedy tokens from the decode loop on the CPU and on ``device`` (fp32 both)."""
    from r3rag.llm.base import SamplingParams
    from r3rag.llm.hf import HFGenerator
    from r3rag.steps import build_messages

    shape = dict(TINY_SHAPE, hidden_size=256, intermediate_size=512, num_hidden_layers=4)
    cpu_model = random_model(shape, torch.device("cpu"), torch.float32, seed=1)
    questions = ["Who directed the film?", "Which city hosted the award first?", "Where?", "Was it 1990?"]
    conversations = [build_messages(q) for q in questions]
    sampling = SamplingParams(max_new_tokens=32)
    on_cpu = HFGenerator(cpu_model, tokenizer, batch_size=4).generate(conversations, sampling)
    on_device = HFGenerator(copy.deepcopy(cpu_model).to(device), tokenizer, batch_size=4).generate(
        conversations, sampling
    )
    same = sum(
        a.completion_token_ids == b.completion_token_ids for a, b in zip(on_cpu, on_device, strict=True)
    )
    return [{"check": "greedy tokens, CPU vs " + device.type, "rows identical": f"{same}/{len(questions)}"}]


# ---------------------------------------------------------------------------------------------------- SFT


def sft_part(args: argparse.Namespace, device: torch.device, tokenizer: Any) -> list[dict[str, Any]]:
    cases = [("qwen2.5-1.5b", False), ("qwen2.5-7b", True), ("qwen2.5-7b", False)]
    return [_sft_case(args, device, name, lora) for name, lora in cases]


def _sft_case(args: argparse.Namespace, device: torch.device, name: str, lora: bool) -> dict[str, Any]:
    """Optimizer steps of r3rag's SFT loss on random rows: tokens/s, MFU, peak memory."""
    from r3rag.lora import add_lora
    from r3rag.packing import Sample

    shape = _shape(args, name)
    row: dict[str, Any] = {"model": name + (" LoRA r16" if lora else " full")}
    try:
        with measured(device) as memory:
            model = random_model(shape, device, torch.bfloat16 if lora else torch.float32)
            checkpointing = wants_gradient_checkpointing(None, model)
            if checkpointing:
                enable_gradient_checkpointing(model)
            if lora:
                model = add_lora(model, 16, 32.0, "all-linear")
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-5)
            generator = random.Random(0)
            length, half = args.sft_tokens, args.sft_tokens // 2
            samples = [
                Sample(
                    tuple(generator.randrange(shape["vocab_size"]) for _ in range(length)),
                    (False,) * half + (True,) * (length - half),
                    (0.0,) * length,
                    trajectory=k,
                    step=0,
                )
                for k in range(args.sft_rows)
            ]
            targets = sum(s.actions for s in samples)
            _sft_step(model, optimizer, samples, targets)  # warm-up: kernels chosen, optimizer states made
            _sync(device)
            started = time.perf_counter()
            for _ in range(args.sft_steps):
                _sft_step(model, optimizer, samples, targets)
            _sync(device)
            seconds = (time.perf_counter() - started) / args.sft_steps
        tokens = args.sft_rows * args.sft_tokens
        flops = _sft_flops(shape, args.sft_tokens, tokens, targets, lora)
        row.update(
            {
                "tokens/step": tokens,
                "s/step": round(seconds, 3),
                "tokens/s": round(tokens / seconds),
                "MFU": f"{flops / seconds / (args.peak_tflops * 1e12):.1%}",
                "checkpointing": checkpointing,
                "peak GB": round(memory.get("peak_gb", 0.0), 1),
            }
        )
    except RuntimeError as error:
        if not _out_of_memory(error):
            raise
        row["tokens/s"] = "out of memory"
    return row


def _sft_step(model: Any, optimizer: torch.optim.Optimizer, samples: list[Any], targets: int) -> None:
    """One optimizer step as r3rag's SFT takes it: micro-batches of 2 rows, gradients accumulated."""
    from r3rag.packing import loss_sum

    for start in range(0, len(samples), 2):
        loss, _ = loss_sum(model, samples[start : start + 2], False, 0, bf16=True)
        (loss / targets).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sft_flops(shape: dict[str, Any], length: int, tokens: int, targets: int, lora: bool) -> float:
    """Model FLOPs of one optimizer step (no recomputation counted): the trunk's matrix products, causal
    attention, and the head at the target tokens only."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    trunk = layers * (h * h + 2 * h * kv + h * h + 3 * h * shape["intermediate_size"])
    per_parameter = 4 if lora else 6  # a frozen base computes input gradients, not weight gradients
    attention = 6 * layers * h * length  # per token: QK^T and AV, forward and backward, causal half
    head = shape["vocab_size"] * h
    return per_parameter * trunk * tokens + attention * tokens + per_parameter * head * targets


# ------------------------------------------------------------------------------------------------ rollout


def rollout_part(args: argparse.Namespace, device: torch.device, tokenizer: Any) -> list[dict[str, Any]]:
    """r3rag's decode loop at several batch sizes, then transformers' generate (dynamic, static cache)."""
    from r3rag.llm.base import SamplingParams
    from r3rag.llm.hf import HFGenerator

    shape = _shape(args, "qwen2.5-7b", vocab_size=len(tokenizer))
    model = random_model(shape, device, torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor_ms = weight_bytes / HBM_BYTES_PER_S * 1e3
    generator = HFGenerator(model, tokenizer, batch_size=max(int(b) for b in args.batch_sizes.split(",")))
    filler = " ".join(["The film was directed by a person born in a city on a river."] * 400)
    prompt_ids = tokenizer(filler, add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    text = tokenizer.decode(prompt_ids)
    sampling = SamplingParams(max_new_tokens=args.new_tokens)
    generator.generate([[{"role": "user", "content": text}]], SamplingParams(max_new_tokens=4))  # warm-up
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        conversations = [[{"role": "user", "content": f"{k}: {text}"}] for k in range(batch)]
        with measured(device) as figures:
            completions = generator.generate(conversations, sampling)
        generated = sum(c.completion_tokens for c in completions)
        row = {
            "decoder": f"r3rag HFGenerator, batch {batch}",
            "tokens/s": round(generated / figures["seconds"], 1),
            "ms/token (batch 1)": round(figures["seconds"] / generated * 1e3, 2) if batch == 1 else "",
            "peak GB": round(figures.get("peak_gb", 0.0), 1),
        }
        rows.append(row)
    rows[0]["bandwidth floor ms/token"] = round(floor_ms, 2)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device=device)
    for label, options in [("dynamic cache", {}), ("static cache, compiled by generate", {"static": True})]:
        if options and not args.compile:
            continue
        rows.append(_hf_generate(model, ids, args.new_tokens, device, label, bool(options)))
    return rows


def _hf_generate(
    model: Any, ids: torch.Tensor, new_tokens: int, device: torch.device, label: str, static: bool
) -> dict[str, Any]:
    """transformers' generate at batch 1, greedy, ``new_tokens`` exactly; the first call (compiling) apart.

    With the static cache, generate compiles the forward pass itself on a GPU (CUDA graphs included); a
    forward already wrapped in ``torch.compile(mode="reduce-overhead")`` on top of that crashed on the H200
    (2026-12-04, torch 2.11, transformers 5.17: a CUDA graph's output overwritten by the next replay)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )
    if static:
        kwargs["cache_implementation"] = "static"
    with measured(device) as first:
        model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    with measured(device) as figures:
        model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return {
        "decoder": f"transformers generate, {label}, batch 1",
        "tokens/s": round(new_tokens / figures["seconds"], 1),
        "ms/token (batch 1)": round(figures["seconds"] / new_tokens * 1e3, 2),
        "first call s": round(first["seconds"], 1),
    }


# ---------------------------------------------------------------------------------------------------- PPO


def ppo_part(args: argparse.Namespace, device: torch.device, tokenizer: Any) -> list[dict[str, Any]]:
    """One PPO iteration on the synthetic world: 7B shape, LoRA r16, shared critic, bf16."""
    from r3rag.config import IndexBuildConfig, JudgeConfig, PPOConfig, RewardConfig, WorldConfig
    from r3rag.data.world import generate_world, write_world
    from r3rag.retrieval.index import build_index, load_index
    from r3rag.rewards import TrajectoryScorer, build_relevance_judge
    from r3rag.rewards.judges import CorrectnessJudge
    from r3rag.rl.ppo import PPOTrainer

    world = generate_world(WorldConfig(seed=0))
    with tempfile.TemporaryDirectory(prefix="r3rag-gpu-") as tmp:
        paths = write_world(world, Path(tmp) / "world")
        build_index(IndexBuildConfig(corpus=paths["corpus"], out=Path(tmp) / "index"), progress=False)
        retriever = load_index(Path(tmp) / "index")
        shape = _shape(args, "qwen2.5-7b", vocab_size=len(tokenizer))
        judges = JudgeConfig(correctness_llm=False, relevance="reference", reference_match="id")
        judge = CorrectnessJudge(judges)
        config = PPOConfig(
            model="random",
            train=paths["train"],
            index=str(Path(tmp) / "index"),
            out=Path(tmp) / "ppo",
            rollout={
                "top_k": 2,
                "max_doc_chars": 512,
                "max_format_retries": 0,
                "max_new_tokens": args.ppo_new_tokens,
            },
            iterations=1,
            questions_per_iteration=args.ppo_questions,
            lora_rank=16,
            lora_alpha=32.0,
            critic="shared",
            minibatch_size=16,
            micro_batch_tokens=8192,
            rollout_batch_size=64,
            eval_every=0,
            tensorboard=False,
        )
        row: dict[str, Any] = {"iteration": "7B shape, LoRA r16, shared critic, bf16"}
        with measured(device) as figures:
            actor = random_model(shape, device, torch.bfloat16)
            trainer = PPOTrainer(
                config,
                actor,
                tokenizer,
                retriever,
                TrajectoryScorer(RewardConfig(), judge, build_relevance_judge(judges)),
                judge,
                world.train,
            )
            metrics = trainer.iteration(1)
        for key in ("time/rollout", "time/scoring", "time/policy_pass", "time/reference_pass", "time/update"):
            row[key.removeprefix("time/") + " s"] = round(metrics[key], 1)
        row["samples"] = int(metrics["samples"])
        row["iteration s"] = round(figures["seconds"], 1)
        row["peak GB"] = round(figures.get("peak_gb", 0.0), 1)
    return [row]


# ------------------------------------------------------------------------------------------------- output


def _print_table(part: str, rows: list[dict[str, Any]], seconds: float) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(f"\n## {part} ({seconds:.0f} s)\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |", flush=True)


def _summaries(rows: dict[str, list[dict[str, Any]]], tiny: bool) -> None:
    scope = "tiny shapes (script check)" if tiny else "H200"
    for row in rows.get("sft", [])[:1]:
        report(f"SFT {row['model']} MFU ({scope})", str(row.get("MFU", row["tokens/s"])), ">= 35%")
    rollout = [r for r in rows.get("rollout", []) if r["decoder"].startswith("r3rag")]
    if len(rollout) > 1:
        ratio = rollout[-1]["tokens/s"] / rollout[0]["tokens/s"]
        report(f"rollout tokens/s, {rollout[-1]['decoder']} / batch 1 ({scope})", f"{ratio:.1f}x", ">= 20x")
    for row in rows.get("ppo", []):
        report(f"PPO iteration, {row['iteration']} ({scope})", f"{row['iteration s']} s, {row['peak GB']} GB")


if __name__ == "__main__":
    raise SystemExit(main())
