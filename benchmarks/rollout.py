"""Rollout throughput of the agent loop: the embedded SmolLM2 with BM25 over the synthetic world.

Runs the same questions (default: the first 32 dev questions of the standard world, seed 0) through
``Agent`` + ``HFGenerator`` at each batch size (default 1, 8, 32: the official code generates one sample at
a time) and prints trajectories per minute, generated tokens per second, and the ratio of the last batch
size to the first; the tokens/s of both and the ratios are the headline figures for `make bench` (target
for 32 vs 1: >= 6x tokens/s). Decoding is greedy and re-generations are seeded per question, so every batch
size does the same work up to floating-point ties. ``--allocator NAME`` re-runs the script under one of the
memory allocators :mod:`r3rag.allocator` knows (``glibc``, ``tuned-glibc``, ``tcmalloc``).

The untrained model rarely writes a valid step, so most trajectories are a first step and its three
re-generations (format-error): short prompts, long rambling completions. That is the real cold-start
workload; after the cold start, prompts grow with the documents of each step.

    .venv/bin/python benchmarks/rollout.py            # bf16 where native, the allocator of the environment
    .venv/bin/python benchmarks/rollout.py --allocator tuned-glibc
    .venv/bin/python benchmarks/rollout.py --corpus c.jsonl --questions q.jsonl   # any corpus and questions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _summary import report  # noqa: E402  (after the offline switches)

from r3rag.agent import Agent  # noqa: E402
from r3rag.allocator import ALLOCATOR_ENV, allocator_environment  # noqa: E402
from r3rag.config import AgentConfig, IndexBuildConfig  # noqa: E402
from r3rag.llm.base import SamplingParams  # noqa: E402
from r3rag.llm.hf import HFGenerator  # noqa: E402
from r3rag.llm.models import EMBEDDED_POLICY  # noqa: E402
from r3rag.schema import QAExample, Trajectory  # noqa: E402
from r3rag.steps import build_messages  # noqa: E402
from r3rag.view import status_counts  # noqa: E402

COLUMNS = (
    "batch",
    "wall s",
    "trajectories/min",
    "generated tok/s",
    "generated",
    "prompt tok",
    "calls",
    "outcome",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=EMBEDDED_POLICY)
    parser.add_argument("--corpus", type=Path, help="Corpus jsonl (default: the synthetic world's).")
    parser.add_argument("--questions", type=Path, help="Question file (default: the world's dev questions).")
    parser.add_argument("--count", type=int, default=32, help="Questions per batch size.")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 weights (default: where the device computes bf16 natively; r3rag.device.resolve_bf16).",
    )
    parser.add_argument("--max-new-tokens", type=int, default=512, help="Per step (paper: 512).")
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--allocator", help="Re-run the script under this allocator (r3rag.allocator).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    if args.allocator and os.environ.get(ALLOCATOR_ENV) != args.allocator:
        environment = {**os.environ, **allocator_environment(args.allocator), ALLOCATOR_ENV: args.allocator}
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)

    import torch

    from r3rag.device import resolve_bf16, resolve_device
    from r3rag.retrieval.index import build_index, load_index

    args.bf16 = resolve_bf16(args.bf16, resolve_device())

    with tempfile.TemporaryDirectory(prefix="r3rag-rollout-") as tmp:
        corpus, examples = _data(args, Path(tmp))
        build_index(IndexBuildConfig(corpus=corpus, out=Path(tmp) / "index"), progress=False)
        retriever = load_index(Path(tmp) / "index")
        generator = HFGenerator.from_name(args.model, bf16=args.bf16)
        config = AgentConfig(
            max_steps=args.max_steps, top_k=args.top_k, max_new_tokens=args.max_new_tokens, seed=0
        )
        agent = Agent(generator, retriever, config)
        warm_up = [build_messages(e.question) for e in examples[:2]]  # first-call allocations, kernel choice
        generator.generate(warm_up, SamplingParams(max_new_tokens=8))
        allocator = os.environ.get(ALLOCATOR_ENV, "glibc")
        print(
            f"{args.model}, {'bf16' if args.bf16 else 'fp32'}, allocator {allocator}, "
            f"{torch.get_num_threads()} threads, {len(examples)} questions, "
            f"max {args.max_new_tokens} tokens/step, "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        print(f"| {' | '.join(COLUMNS)} |\n|{'---|' * len(COLUMNS)}")
        results = []
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            generator.batch_size = batch
            row = _measure(agent, examples, batch)
            results.append(row)
            print(
                f"| {batch} | {row['seconds']:.1f} | {row['trajectories_per_min']:.1f} | "
                f"{row['generated_tok_per_s']:.1f} | {row['generated_tokens']} | {row['prompt_tokens']} | "
                f"{row['generate_calls']} | {row['outcome']} |",
                flush=True,
            )
    first, last = results[0], results[-1]
    ratio = last["generated_tok_per_s"] / first["generated_tok_per_s"]
    trajectory_ratio = last["trajectories_per_min"] / first["trajectories_per_min"]
    print(
        f"batch {last['batch']} / batch {first['batch']}: {ratio:.2f}x generated tok/s, "
        f"{trajectory_ratio:.2f}x trajectories/min"
    )
    setting = f"{'bf16 autocast' if args.bf16 else 'fp32'}, {allocator}"
    report(f"generated tok/s, batch {first['batch']} ({setting})", f"{first['generated_tok_per_s']:.1f}")
    if len(results) > 1:
        report(f"generated tok/s, batch {last['batch']} ({setting})", f"{last['generated_tok_per_s']:.1f}")
        versus = f"batch {last['batch']} / batch {first['batch']}"
        target = ">= 6x" if (first["batch"], last["batch"]) == (1, 32) else ""
        report(f"{versus}: generated tok/s", f"{ratio:.1f}x", target)
        report(f"{versus}: trajectories/min", f"{trajectory_ratio:.1f}x")
    if args.json:
        summary = {"model": args.model, "bf16": args.bf16, "allocator": allocator, "results": results}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


class _CountingGenerator:
    """Counts ``generate`` calls on the way through, so the table shows how the work was batched."""

    def __init__(self, inner: HFGenerator):
        self.inner, self.calls = inner, 0

    def generate(self, conversations, sampling):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.generate(conversations, sampling)


def _measure(agent: Agent, examples: list[QAExample], batch: int) -> dict:
    counting = _CountingGenerator(agent.generator)  # type: ignore[arg-type]
    timed = Agent(counting, agent.retriever, agent.config)
    trajectories: list[Trajectory] = []
    started = time.perf_counter()
    for start in range(0, len(examples), batch):
        trajectories += timed.run(examples[start : start + batch])
    seconds = time.perf_counter() - started
    generated = sum(t.completion_tokens for t in trajectories)
    return {
        "batch": batch,
        "seconds": seconds,
        "trajectories_per_min": len(trajectories) / seconds * 60,
        "generated_tok_per_s": generated / seconds,
        "generated_tokens": generated,
        "prompt_tokens": sum(t.prompt_tokens for t in trajectories),
        "generate_calls": counting.calls,
        "outcome": status_counts(trajectories),
    }


def _data(args: argparse.Namespace, tmp: Path) -> tuple[Path, list[QAExample]]:
    """The corpus file and the questions: given ones, or the synthetic world written to ``tmp``."""
    if (args.corpus is None) != (args.questions is None):
        sys.exit("give both --corpus and --questions, or neither (the synthetic world)")
    if args.corpus is not None:
        from r3rag.data.datasets import load_dataset

        return args.corpus, load_dataset(args.questions)[: args.count]
    from r3rag.data.world import generate_world, write_world

    world = generate_world()
    return write_world(world, tmp / "world")["corpus"], world.dev[: args.count]


if __name__ == "__main__":
    sys.exit(main())
