"""Format validity and accuracy per question type of a policy run through the agent, e.g. before and after
the cold start (the numbers in notes/README-coldstart.md).

Runs the questions through ``Agent`` with a model and a retriever (greedy, with the agent settings the model
was trained for: ``--agent runs/coldstart/sft/final/agent.yaml``, or the ``coldstart.yaml`` of the data run),
appends the trajectories to ``--out`` (a rerun resumes), then prints per question type:

- ``valid steps``: the share of steps in the trajectories that are in valid format;
- ``valid generations``: the share of all generations (re-generations of malformed steps included) that
  were valid: the strict figure, since a re-generation hides a malformed first try;
- ``answered``, ``EM`` and ``cover-EM`` (normalised exact match / a gold alias inside the answer, against
  every alias, ``r3rag.rewards.metrics``), and the mean number of steps.

It is not part of ``make bench``: it needs a trained model and takes minutes per model.

    .venv/bin/python benchmarks/coldstart/measure.py --model runs/coldstart/sft/final \
        --agent runs/coldstart/sft/final/agent.yaml --questions runs/world/dev.jsonl \
        --index runs/world/bm25 --out runs/coldstart/eval/cs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import yaml  # noqa: E402

from r3rag.agent import Agent  # noqa: E402
from r3rag.config import AgentConfig  # noqa: E402
from r3rag.data.datasets import load_dataset  # noqa: E402
from r3rag.jsonl import JsonlAppender, iter_jsonl, read_ids  # noqa: E402
from r3rag.rewards.metrics import cover_exact_match, exact_match  # noqa: E402
from r3rag.schema import QAExample, Trajectory, TrajectoryStatus  # noqa: E402


def agent_config(path: Path | None) -> AgentConfig:
    """An AgentConfig YAML, or the ``agent`` section of a ColdStartConfig YAML; greedy either way."""
    if path is None:
        return AgentConfig()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return AgentConfig.model_validate(data.get("agent", data)).model_copy(update={"temperature": 0.0})


def run(args: argparse.Namespace, examples: list[QAExample], config: AgentConfig) -> float:
    """Run the questions not yet in ``args.out``; return the wall time in seconds."""
    from r3rag.llm.hf import HFGenerator
    from r3rag.retrieval.index import load_index

    done = read_ids(args.out, key="example_id")
    todo = [e for e in examples if e.id not in done]
    if not todo:
        return 0.0
    agent = Agent(
        HFGenerator.from_name(args.model, batch_size=args.batch_size, bf16=args.bf16),
        load_index(args.index),
        config,
    )
    started = time.perf_counter()
    with JsonlAppender(args.out) as writer:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            for trajectory in agent.run(batch):
                writer.write(trajectory.to_dict())
            print(
                f"{min(start + args.batch_size, len(todo))}/{len(todo)} questions",
                file=sys.stderr,
                flush=True,
            )
    return time.perf_counter() - started


def summarize(examples: list[QAExample], trajectories: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Per question type (and ``all``): the figures the module docstring lists."""
    by_id = {e.id: e for e in examples}
    groups: dict[str, list[tuple[QAExample, Trajectory]]] = defaultdict(list)
    for t in trajectories:
        example = by_id[t.example_id]
        groups[example.type or "?"].append((example, t))
        groups["all"].append((example, t))
    table = {}
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        pairs = groups[name]
        steps = [s for _, t in pairs for s in t.steps]
        generations = len(steps) + sum(t.metadata.get("regenerations", 0) for _, t in pairs)
        answered = [t.status is TrajectoryStatus.ANSWERED for _, t in pairs]
        table[name] = {
            "questions": len(pairs),
            "valid_steps": sum(s.valid for s in steps) / max(len(steps), 1),
            "valid_generations": sum(s.valid for s in steps) / max(generations, 1),
            "answered": sum(answered) / len(pairs),
            "em": sum(exact_match(t.final_answer, e.answers) for e, t in pairs) / len(pairs),
            "cover_em": sum(cover_exact_match(t.final_answer, e.answers) for e, t in pairs) / len(pairs),
            "steps": len(steps) / len(pairs),
        }
    return table


def markdown(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| type | questions | valid steps | valid generations | answered | EM | cover-EM | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = [f"{row[k]:.1%}" for k in ("valid_steps", "valid_generations", "answered", "em", "cover_em")]
        lines.append(f"| {name} | {row['questions']} | {' | '.join(cells)} | {row['steps']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="smollm2-135m-instruct, or a model folder.")
    parser.add_argument(
        "--agent", type=Path, help="AgentConfig or ColdStartConfig YAML (default: AgentConfig())."
    )
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="Trajectories jsonl (appended, resumed).")
    parser.add_argument("--limit", type=int, help="Only the first N questions.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 weights (default: where the device computes bf16 natively; r3rag.device.resolve_bf16).",
    )
    args = parser.parse_args()

    examples = load_dataset(args.questions)[: args.limit]
    config = agent_config(args.agent)
    seconds = run(args, examples, config)
    wanted = {e.id for e in examples}
    trajectories = [Trajectory.from_dict(r) for _, r in iter_jsonl(args.out) if r["example_id"] in wanted]
    table = summarize(examples, trajectories)
    summary = {
        "model": args.model,
        "agent": config.model_dump(mode="json"),
        "seconds": seconds,
        "table": table,
    }
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.model} on {args.questions} ({len(trajectories)} questions; this run {seconds / 60:.1f} min)"
    )
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
