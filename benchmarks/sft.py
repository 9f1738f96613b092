"""SFT throughput: shared-prefix packing vs one row per example vs a plain Hugging Face padded batch.

The step examples of one trajectory repeat its prompt: step k's prompt is step k-1's plus a step and its
documents. With ``share_prefixes`` (:mod:`r3rag.coldstart.sft`) a trajectory's examples are computed in one
row that holds that prompt once, and the LM head runs only where a target token is predicted. This script
takes the examples of ``--trajectories`` whole trajectories (default 16, from the oracle cold start on the
default world, as the quickstart trains) and runs one forward and backward pass over all of them in three
layouts, each batched as training batches it (length-bucketed micro-batches of ~8 examples):

- ``hf padded``: the reference, a plain Hugging Face training step: micro-batches of 8 examples, right-padded,
  a 2-D attention mask, ``labels`` (logits over every position);
- ``one row per example``: our loss without sharing (``share_prefixes: false``), 8 examples per micro-batch;
- ``packed per trajectory``: our default, 2 trajectories (~7.5 examples) per micro-batch.

The layouts alternate for ``--rounds`` rounds, so that load on the machine hits all three alike. It prints
the median trained tokens per second of each (tokens of the examples, whatever is computed), the ratios to
the reference (the headline figures) and the summed losses, which must agree.

    .venv/bin/python benchmarks/sft.py                     # default world
    .venv/bin/python benchmarks/sft.py --data sft.jsonl    # any `r3rag coldstart` SFT file
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from _summary import report  # noqa: E402  (after the offline switches)

from r3rag.coldstart.sft import micro_batches, prepare_data, row_length  # noqa: E402
from r3rag.config import SFTConfig  # noqa: E402
from r3rag.data.sft import IGNORE_INDEX, as_samples  # noqa: E402
from r3rag.device import HOST, resolve_bf16  # noqa: E402
from r3rag.llm.models import EMBEDDED_POLICY, load_model  # noqa: E402
from r3rag.packing import Sample, loss_sum, training_rows  # noqa: E402

LAYOUTS = ("hf padded", "one row per example", "packed per trajectory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="SFT jsonl (default: the default world's oracle cold start)."
    )
    parser.add_argument("--model", default=EMBEDDED_POLICY)
    parser.add_argument("--trajectories", type=int, default=16, help="Trajectories whose examples are timed.")
    parser.add_argument("--rounds", type=int, default=3, help="Passes of each layout over the examples.")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 autocast (default: where the CPU computes bf16 natively; r3rag.device.resolve_bf16).",
    )
    args = parser.parse_args()
    args.bf16 = resolve_bf16(args.bf16, HOST)
    model, tokenizer = load_model(args.model)
    model.train()
    with tempfile.TemporaryDirectory(prefix="r3rag-sft-bench-") as tmp:
        data = args.data or _coldstart_data(Path(tmp))
        examples = prepare_data(
            SFTConfig(data=data, out=Path(tmp) / "unused", val_fraction=0.0), tokenizer
        ).train
    everything = as_samples(examples)
    chosen = random.Random(0).sample(training_rows(everything, share_prefixes=True), args.trajectories)
    samples = [everything[i] for row in chosen for i in row]
    tokens = sum(len(s.tokens) for s in samples)
    batches = {name: _micro_batches(name, samples) for name in LAYOUTS}
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    losses: dict[str, float] = {}
    for name in LAYOUTS:  # warm-up, untimed: the allocator's first large buffers would bill the first layout
        _loss(name, model, batches[name][0], args.bf16).backward()
        model.zero_grad(set_to_none=True)
    for round_ in range(args.rounds):
        for name in LAYOUTS:
            started, total = time.perf_counter(), 0.0
            for batch in batches[name]:
                loss = _loss(name, model, batch, args.bf16)
                loss.backward()
                total += loss.item()
                model.zero_grad(set_to_none=True)
            seconds[name].append(time.perf_counter() - started)
            losses[name] = total
            print(f"round {round_ + 1}/{args.rounds}, {name}: {seconds[name][-1]:.1f} s", flush=True)
    speed = {name: statistics.median(tokens / s for s in seconds[name]) for name in LAYOUTS}
    print(
        f"\n{args.trajectories} trajectories: {len(samples)} examples, {tokens:,} tokens; forward + backward,"
        f" bf16 {args.bf16}, median of {args.rounds} rounds\n"
    )
    print("| layout | micro-batches | median trained tok/s | median s | vs hf padded | summed loss |")
    print("|---|---|---|---|---|---|")
    for name in LAYOUTS:
        print(
            f"| {name} | {len(batches[name])} | {speed[name]:.0f} | {statistics.median(seconds[name]):.1f} | "
            f"{speed[name] / speed['hf padded']:.2f}x | {losses[name]:.2f} |"
        )
    report("SFT trained tok/s, packed per trajectory", f"{speed['packed per trajectory']:.0f}")
    report(
        "SFT packed vs HF padded batches: trained tok/s",
        f"{speed['packed per trajectory'] / speed['hf padded']:.2f}x",
        "> 1.3x",
    )
    return 0


def _micro_batches(name: str, samples: list[Sample]) -> list[list[Sample]]:
    """Length-bucketed micro-batches as training makes them: 2 trajectories packed, or 8 examples."""
    rows = training_rows(samples, share_prefixes=name == "packed per trajectory")
    lengths = [row_length(samples, row) for row in rows]
    size = 2 if name == "packed per trajectory" else 8
    return [[samples[i] for r in batch for i in rows[r]] for batch in micro_batches(lengths, size, seed=0)]


def _loss(name: str, model: torch.nn.Module, batch: list[Sample], bf16: bool) -> torch.Tensor:
    """The summed target-token cross-entropy of ``batch`` computed the ``name`` way."""
    if name != "hf padded":
        return loss_sum(model, batch, name == "packed per trajectory", pad_id=0, bf16=bf16)[0]
    width = max(len(s.tokens) for s in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, s in enumerate(batch):
        ids[r, : len(s.tokens)] = torch.tensor(s.tokens)
        mask[r, : len(s.tokens)] = 1
        labels[r, : len(s.tokens)] = torch.tensor(
            [t if target else IGNORE_INDEX for t, target in zip(s.tokens, s.action_mask, strict=True)]
        )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    return out.loss.float() * sum(s.actions for s in batch)  # HF gives the mean over target tokens


def _coldstart_data(tmp: Path) -> Path:
    """The default world, its BM25 index and the oracle cold start (the quickstart's), under ``tmp``."""
    from r3rag.coldstart.build import build
    from r3rag.coldstart.oracle import OracleTeacher
    from r3rag.config import IndexBuildConfig
    from r3rag.data.world import generate_world, write_world
    from r3rag.gold import resolve_gold_match
    from r3rag.pipeline_config import PipelineConfig
    from r3rag.retrieval.index import build_index, load_index

    world = generate_world()
    files = write_world(world, tmp / "world")
    build_index(IndexBuildConfig(corpus=files["corpus"], out=tmp / "index"), progress=False)
    config = PipelineConfig.preset("small").coldstart
    retriever = load_index(tmp / "index")
    gold = resolve_gold_match(config.judge.reference_match, {str(files["train"]): world.train}, retriever)
    build(config, OracleTeacher(retriever, config, gold), world.train, tmp / "coldstart", gold=gold)
    return tmp / "coldstart" / "sft.jsonl"


if __name__ == "__main__":
    sys.exit(main())
