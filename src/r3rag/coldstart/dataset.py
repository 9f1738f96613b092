"""Kept teacher trajectories -> SFT examples: one per step, prompted exactly as the agent prompts the policy.

The paper's Algorithm 2: a trajectory of n steps gives n examples; the prompt of step k is the question and
steps 1..k-1 with their documents, the target is step k. The prompt is built by the same function the
:class:`~r3rag.agent.Agent` calls at inference (``build_messages`` with the run's system prompt and document
cut), and rendered by the same chat template, so a cold-started policy sees at inference exactly the prompts
it was trained on; a mismatch (another system turn, uncut documents) silently ruins a cold start. The target
is ``format_step(step)`` followed by the template's end-of-turn token(s), read off the template itself, so
the model learns to stop where the agent's generator stops. The loss covers the target tokens only.

The examples are written as jsonl chat messages (system, user, assistant) that other trainers read as they
are: LLaMA-Factory's sharegpt format, or TRL after splitting off the last message as the completion.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from statistics import mean
from typing import Any

from r3rag.config import AgentConfig
from r3rag.llm.base import Conversation
from r3rag.schema import Step, Trajectory
from r3rag.steps import build_messages, format_step, parse_step


def step_conversations(trajectory: Trajectory, agent: AgentConfig) -> list[Conversation]:
    """For each step, the conversation that asks for it plus the step as the assistant's reply."""
    out = []
    for k, step in enumerate(trajectory.steps):
        messages = build_messages(
            trajectory.question, trajectory.steps[:k], agent.system_prompt, agent.max_doc_chars
        )
        out.append([*messages, {"role": "assistant", "content": format_step(step)}])
    return out


def round_trips(step: Step) -> bool:
    """Whether the parser reads the formatted step back unchanged. A step that does not (an analysis that
    quotes a marker, say) would teach text the agent cannot parse."""
    parsed = parse_step(format_step(step), expected_index=step.index, strict=True)
    return parsed.valid and (parsed.analysis, parsed.query, parsed.answer) == (
        step.analysis,
        step.query,
        step.answer,
    )


def kept_trajectories(records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Trajectory]]:
    """(record, trajectory) for every kept record of a teacher output file."""
    for record in records:
        if record["kept"]:
            yield record, Trajectory.from_dict(record["trajectory"])


def sft_records(records: Iterable[dict[str, Any]], agent: AgentConfig) -> tuple[list[dict[str, Any]], int]:
    """The SFT examples of all kept trajectories whose every step is well formed, and how many kept
    trajectories were dropped because a step was not."""
    out, dropped = [], 0
    for record, trajectory in kept_trajectories(records):
        if not all(s.valid and round_trips(s) for s in trajectory.steps):
            dropped += 1
            continue
        for k, messages in enumerate(step_conversations(trajectory, agent), start=1):
            out.append(
                {
                    "id": f"{record['id']}#{k}",
                    "example_id": record["id"],
                    "dataset": record.get("dataset", ""),
                    "type": record.get("type", ""),
                    "step": k,
                    "messages": messages,
                }
            )
    return out, dropped


# ------------------------------------------------------------------------------------------- statistics


def coldstart_stats(
    records: list[dict[str, Any]], examples: list[dict[str, Any]], dropped: int
) -> dict[str, Any]:
    """Yield per dataset and question type, trajectory shape, and the size of the SFT set."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: Counter[str] = Counter()
    for record in records:
        key = f"{record.get('dataset') or '?'}/{record.get('type') or '?'}"
        groups[key]["attempted"] += 1
        groups[key]["kept"] += bool(record["kept"])
        if not record["kept"] and record["attempts"]:
            reasons[_reason_kind(record["attempts"][-1].get("reason", ""))] += 1
    trajectories = [t for _, t in kept_trajectories(records)]
    retrieval_steps = [s for t in trajectories for s in t.steps if s.query is not None]
    steps = Counter(len(t.steps) for t in trajectories)
    return {
        "questions": len(records),
        "kept": sum(bool(r["kept"]) for r in records),
        "per_group": {k: {**v, "yield": v["kept"] / v["attempted"]} for k, v in sorted(groups.items())},
        "rejections": dict(reasons.most_common()),
        "steps_per_trajectory": {
            "mean": mean(len(t.steps) for t in trajectories) if trajectories else 0.0,
            "histogram": dict(sorted(steps.items())),
        },
        "documents_per_retrieval_step": (
            mean(len(s.passages) for s in retrieval_steps) if retrieval_steps else 0.0
        ),
        "dropped_malformed": dropped,
        "sft_examples": len(examples),
        "sft_target_chars_mean": (
            mean(len(e["messages"][-1]["content"]) for e in examples) if examples else 0.0
        ),
    }


def _reason_kind(reason: str) -> str:
    """A rejection reason without its specifics, for counting ('hop 2 (...) not found' -> 'hop not found')."""
    if reason.startswith("hop ") and "not found" in reason:
        return "hop not found"
    if reason.startswith("wrong answer"):
        return "wrong answer"
    return reason.split(":")[0]
