"""The synthetic world per difficulty preset: generation time, size, and the BM25 difficulty gauge.

For each preset: median generation time over 3 runs, passages and questions, and per question type how often
BM25 top-k with the gold sub-question finds the gold passage (each hop, and every hop of a question).
Headline figures for `make bench`: the generation times, and per preset the range over question types of
"all hops found".
"""

from __future__ import annotations

import argparse
import statistics
import time

from _summary import report

from r3rag.config import BM25Config, WorldConfig
from r3rag.data.world import generate_world, hop_hit_rates
from r3rag.gold import resolve_gold_match
from r3rag.retrieval.bm25 import BM25Retriever
from r3rag.retrieval.store import PassageStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-k", type=int, default=2, help="top-k of the gauge (the paper's RL uses 2)")
    args = parser.parse_args()
    print(
        "| preset | generate (median of 3) | passages | questions | type "
        f"| hop found@{args.k} | all hops found@{args.k} |"
    )
    print("|---|---|---|---|---|---|---|")
    generate_s: dict[str, float] = {}  # preset: median seconds
    all_found: dict[str, list[float]] = {}  # preset: "all hops found" rate of each question type
    for preset in ("easy", "standard", "hard"):
        config = WorldConfig.for_difficulty(preset)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            world = generate_world(config)
            times.append(time.perf_counter() - start)
        retriever = BM25Retriever.build(PassageStore(world.passages), BM25Config(), progress=False)
        examples = world.train + world.dev
        gold = resolve_gold_match("auto", {preset: examples}, retriever)
        rates = hop_hit_rates(examples, retriever.search, k=args.k, rule=gold.rule)
        generate_s[preset] = statistics.median(times)
        all_found[preset] = [rate.question_rate for rate in rates.values()]
        for i, (qtype, rate) in enumerate(rates.items()):
            head = (
                (
                    preset,
                    f"{generate_s[preset]:.2f} s",
                    f"{len(world.passages):,}",
                    f"{len(world.train) + len(world.dev):,}",
                )
                if i == 0
                else ("", "", "", "")
            )
            print(f"| {' | '.join(head)} | {qtype} | {rate.hop_rate:.0%} | {rate.question_rate:.0%} |")
    report(
        f"generation time, median of 3 ({' / '.join(generate_s)})",
        " / ".join(f"{seconds:.2f}" for seconds in generate_s.values()) + " s",
    )
    for preset, question_rates in all_found.items():
        low, high = (round(rate * 100) for rate in (min(question_rates), max(question_rates)))
        report(
            f"BM25 top-{args.k} all hops found, {preset} (range over question types)",
            f"{low}%" if low == high else f"{low}-{high}%",
        )


if __name__ == "__main__":
    main()
