"""A small run folder written by hand in the stages' formats: two evaluations, a PPO rollout, a cold start,
the question files they name, and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus

GOLD = Passage("pgold1", "Ada Lovelace", "Ada Lovelace wrote the first program.")
OTHER = Passage("pother", "Charles Babbage", "Babbage designed the engine.")
GOLD2 = Passage("pgold2", "Analytical Engine", "The engine was never finished.")

DEV = [
    QAExample(
        "dev-1",
        "Who wrote the first program?",
        ["Ada Lovelace"],
        ["pgold1"],
        type="compositional",
        dataset="world",
    ),
    QAExample("dev-2", "Was the engine finished?", ["no"], ["pgold2"], type="comparison", dataset="world"),
]
TRAIN = [
    QAExample("train-1", "Who designed the engine?", ["Babbage"], ["pother"], type="chain", dataset="world")
]


def trajectory(example: QAExample, answer: str | None, passages: list[Passage]) -> Trajectory:
    steps = [Step(1, "Look it up.", query=f"search {example.id}", passages=passages)]
    if answer is not None:
        steps.append(Step(2, "The documents say so.", answer=answer))
    status = TrajectoryStatus.ANSWERED if answer is not None else TrajectoryStatus.OUT_OF_STEPS
    return Trajectory(example.id, example.question, steps, answer, status)


def flashrag(example: QAExample) -> dict[str, Any]:
    """A question as the world's files hold it (FlashRAG, the rest in metadata)."""
    metadata = {"dataset": example.dataset, "type": example.type, "supporting_ids": example.supporting_ids}
    return {
        "id": example.id,
        "question": example.question,
        "golden_answers": example.answers,
        "metadata": metadata,
    }


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def prediction(
    method: str, example: QAExample, answer: str | None, passages: list[Passage]
) -> dict[str, Any]:
    correct = answer in example.answers
    t = trajectory(example, answer, passages)
    return {
        "key": f"{method}|world|5|{example.id}",
        "method": method,
        "dataset": "world",
        "top_k": 5,
        "id": example.id,
        "question": example.question,
        "golds": example.answers,
        "prediction": answer,
        "status": t.status.value,
        "acc": 1.0 if correct else 0.0,
        "trajectory": t.to_dict(),
    }


def write_run(folder: Path) -> Path:
    """The run folder; records in load order: eval-a (2), eval-b (2), ppo (1), coldstart (2)."""
    write_jsonl(folder / "world" / "dev.jsonl", [flashrag(e) for e in DEV])
    write_jsonl(folder / "world" / "train.jsonl", [flashrag(e) for e in TRAIN])
    for name, answers in (("eval-a", ["Ada Lovelace", None]), ("eval-b", ["Babbage", "no"])):
        method = "r3rag" if name == "eval-a" else "rag-cot"
        write_jsonl(
            folder / name / "predictions.jsonl",
            [
                prediction(method, e, a, [GOLD, OTHER] if e.id == "dev-1" else [GOLD2])
                for e, a in zip(DEV, answers, strict=True)
            ],
        )
        manifest = {"datasets": {"world": {"files": [{"path": str(folder / "world" / "dev.jsonl")}]}}}
        (folder / name / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        (folder / name / "accuracy_vs_steps.png").write_bytes(PNG)
    rollout = trajectory(TRAIN[0], "Babbage", [OTHER, GOLD]).to_dict()
    rollout["reward"] = {
        "status": "answered",
        "correct": True,
        "lambda_t": 1.2,
        "rewards": [0.3, 1.5],
        "steps": [
            {
                "index": 1,
                "kind": "retrieval",
                "format": 0.0,
                "outcome": 0.0,
                "process": 0.3,
                "relevance": 0.25,
                "total": 0.3,
            },
            {
                "index": 2,
                "kind": "answer",
                "format": 0.0,
                "outcome": 1.5,
                "process": 0.0,
                "relevance": None,
                "total": 1.5,
            },
        ],
    }
    write_jsonl(folder / "ppo" / "rollouts" / "iter-00003.jsonl", [rollout])
    (folder / "ppo" / "config.yaml").write_text(
        yaml.safe_dump({"train": str(folder / "world" / "train.jsonl")}), encoding="utf-8"
    )
    kept = trajectory(TRAIN[0], "Babbage", [OTHER])
    rejected = trajectory(DEV[1], None, [GOLD2])
    write_jsonl(
        folder / "coldstart" / "trajectories.jsonl",
        [
            {
                "id": "train-1",
                "dataset": "world",
                "type": "chain",
                "question": TRAIN[0].question,
                "golden_answers": ["Babbage"],
                "teacher": "oracle",
                "kept": True,
                "trajectory": kept.to_dict(),
                "attempts": [],
            },
            {
                "id": "dev-2",
                "dataset": "world",
                "type": "comparison",
                "question": DEV[1].question,
                "golden_answers": ["no"],
                "teacher": "oracle",
                "kept": False,
                "trajectory": None,
                "attempts": [
                    {"attempt": 0, "reason": "needs more than 5 steps", "trajectory": rejected.to_dict()}
                ],
            },
        ],
    )
    return folder


# a 1x1 transparent png
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fe"
    "a7d6a5b00000000049454e44ae426082"
)
