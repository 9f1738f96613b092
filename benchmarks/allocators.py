"""Allocators, precisions and threads on this CPU: one SFT step, one PPO update and a batch of generation, as
ratios.

Training on a CPU allocates and frees the same large tensors every step; glibc's malloc hands the largest
back to the kernel each time and faults them in again, which a caching allocator avoids. How much that is
worth depends on the CPU (measured: 2.5x on a Xeon with AMX, 1.5-1.7x on a Zen 4 EPYC without), so this script
prints the CPU model and its bf16/AMX support, then times the embedded model under every allocator r3rag can
use (:mod:`r3rag.allocator`) and both precisions, each in its own process (an allocator is chosen when a
process starts), alternating the configurations round by round so that load on the machine hits all alike.
On a CPU with AMX it also times everything with AMX switched off (``ONEDNN_MAX_CPU_ISA``), the nearest this
machine gets to a CPU without it. ``--threads 1,2`` times each configuration at each torch thread count too
(default: torch's own, one per core): whether one run on every core beats one run per core.

- ``sft step``: forward, backward and AdamW step on 4 rows of 512 tokens (bf16 autocast or fp32);
- ``ppo update``: the same on the actor with the shared critic's value head, as PPO's update runs it;
- ``generation``: 8 prompts of ~300 tokens, 32 new tokens each, batched, as r3rag generates (bf16: on bf16
  weights, as ``eval`` and PPO's rollouts do; fp32: on the fp32 weights).

    .venv/bin/python benchmarks/allocators.py              # every allocator found, 3 rounds
    .venv/bin/python benchmarks/allocators.py --rounds 1 --only glibc,tuned-glibc
    .venv/bin/python benchmarks/allocators.py --only tuned-glibc --threads 1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from _summary import report  # noqa: E402

from r3rag.allocator import ALLOCATOR_ENV, allocator_environment, available_allocators  # noqa: E402
from r3rag.device import HOST, cpu_features, native_bf16  # noqa: E402

WORKLOADS = ("sft step", "ppo update", "generation")
NO_AMX = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Passes over every configuration.")
    parser.add_argument("--only", help="Comma-separated allocators to time (default: every one found).")
    parser.add_argument(
        "--precisions",
        help="Comma-separated: bf16 (as r3rag runs it), fp32 (default: both where the CPU computes bf16 "
        "natively, else fp32 only: emulated bf16 takes minutes per step).",
    )
    parser.add_argument(
        "--threads", help="Comma-separated torch thread counts to time (default: torch's, one per core)."
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a configuration, run in its own process
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "bf16", args.child_threads)), flush=True)
        return 0
    features = cpu_features()
    print(f"CPU: {features.model}; AVX-512 BF16 {features.avx512_bf16}; AMX {features.amx}", end="")
    print(f"; {os.cpu_count()} cores")
    native = native_bf16(HOST)
    if args.precisions is None and not native:
        print("no bf16 arithmetic on this CPU: fp32 only (--precisions bf16,fp32 times the emulation too)")
    args.precisions = args.precisions or ("bf16,fp32" if native else "fp32")
    allocators = [a for a in available_allocators() if not args.only or a in args.only.split(",")]
    isas = {"native": {}, **({"no AMX": NO_AMX} if features.amx else {})}
    precisions = args.precisions.split(",")
    threads = [int(n) for n in args.threads.split(",")] if args.threads else [None]
    configs = [(a, isa, p, n) for isa in isas for a in allocators for p in precisions for n in threads]
    times: dict[tuple[str, str, str, int | None], dict[str, list[float]]] = {
        c: {w: [] for w in WORKLOADS} for c in configs
    }
    for round_ in range(args.rounds):
        for allocator, isa, precision, n in configs:
            env = {**os.environ, **allocator_environment(allocator), **isas[isa], ALLOCATOR_ENV: allocator}
            child = [sys.executable, __file__, "--child", precision]
            if n is not None:
                child += ["--child-threads", str(n)]
            result = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            for workload in WORKLOADS:
                times[allocator, isa, precision, n][workload].append(figures[workload])
            label = f"{allocator}, {isa}, {precision}, threads: {n or 'default'}"
            print(f"round {round_ + 1}/{args.rounds}: {label}: {figures}", flush=True)
    first, last = threads[0], threads[-1]
    print(
        f"\nmedian seconds of {args.rounds} rounds; ratio = glibc {precisions[0]}, "
        f"threads: {first or 'default'} (same ISA) / this one\n"
    )
    print("| allocator | ISA | precision | threads | " + " | ".join(f"{w} s (x)" for w in WORKLOADS) + " |")
    print("|---|---|---|---|" + "---|" * len(WORKLOADS))

    def median(config: tuple[str, str, str, int | None], workload: str) -> float:
        return statistics.median(times[config][workload])

    for config in configs:
        allocator, isa, precision, n = config
        reference = ("glibc", isa, precisions[0], first) if "glibc" in allocators else configs[0]
        cells = [
            f"{median(config, w):.2f} ({median(reference, w) / median(config, w):.2f}x)" for w in WORKLOADS
        ]
        print(f"| {allocator} | {isa} | {precision} | {n or 'default'} | " + " | ".join(cells) + " |")
    for isa in isas:
        for allocator in allocators:
            if allocator != "glibc" and "glibc" in allocators:
                base = median(("glibc", isa, precisions[0], first), "sft step")
                mine = median((allocator, isa, precisions[0], first), "sft step")
                report(f"SFT step: {allocator} vs glibc ({isa}, {precisions[0]})", f"{base / mine:.2f}x")
            if first != last:
                for workload in WORKLOADS:
                    one, many = (median((allocator, isa, precisions[0], n), workload) for n in (first, last))
                    report(
                        f"{workload}: {last} vs {first} threads ({allocator}, {isa})", f"{one / many:.2f}x"
                    )
    return 0


def measure(bf16: bool, threads: int | None) -> dict[str, float]:
    """The three workloads on the embedded model, after one untimed warm-up each; seconds of one run, on
    ``threads`` torch threads (None: torch's default)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    from r3rag.llm.hf import HFGenerator
    from r3rag.llm.models import EMBEDDED_POLICY, load_model
    from r3rag.rl.models import ActorCritic

    torch.manual_seed(0)
    model, tokenizer = load_model(EMBEDDED_POLICY)
    ids = torch.randint(100, tokenizer.vocab_size, (4, 512))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def sft_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    actor_critic = ActorCritic(model, "shared", 0, 16.0, ())
    ppo_optimizer = torch.optim.AdamW(actor_critic.parameters(), lr=1e-6)

    def ppo_update() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden = actor_critic.actor(input_ids=ids, output_hidden_states=True, use_cache=False)
            values = actor_critic.value_head(hidden.hidden_states[-1].float()).squeeze(-1)
            logprobs = torch.log_softmax(hidden.logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
        (-(logprobs.mean()) + 0.5 * values.pow(2).mean()).backward()
        ppo_optimizer.step()
        ppo_optimizer.zero_grad(set_to_none=True)

    generating = copy.deepcopy(model).to(torch.bfloat16) if bf16 else model
    generator = HFGenerator(generating, tokenizer, batch_size=8, bf16=bf16)
    prompts = [[{"role": "user", "content": f"Passage {i}: " + "word " * 280}] for i in range(8)]

    def generation() -> None:
        from r3rag.llm.base import SamplingParams

        generator.generate(prompts, SamplingParams(max_new_tokens=32, temperature=0.0))

    figures = {}
    for name, run in (("sft step", sft_step), ("ppo update", ppo_update), ("generation", generation)):
        run()  # warm-up: the allocator's first buffers, oneDNN's kernels
        started = time.perf_counter()
        run()
        figures[name] = time.perf_counter() - started
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
