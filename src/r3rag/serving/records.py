"""What a run folder holds, read into one list of trajectories to filter and show (``r3rag view``).

Three kinds of files hold trajectories, each written by its stage and read here as written, never changed:

- ``predictions.jsonl`` of an evaluation (``r3rag eval``; ``eval-*/`` of a quickstart): one record per
  method, dataset and question, scored (``acc``), with the trajectory; ``manifest.json`` beside it names the
  question files, which give each question's type and gold passages;
- ``rollouts/iter-*.jsonl`` of PPO (``r3rag train``): each sampled trajectory with its ``reward`` (the status,
  ``correct``, lambda_T and each step's format, outcome, process and relevance parts); ``config.yaml`` one
  folder up names the training questions;
- ``trajectories.jsonl`` of the cold start (``r3rag coldstart``): the teacher's trajectories, ``kept`` when
  they reach the gold answer, with the question's dataset and type (a rejected one: its last attempt).

Any of them may be missing (a folder holding one evaluation is a run folder too). A line that is not a JSON
object with the fields its kind needs is an error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r3rag.data.datasets import load_dataset
from r3rag.schema import QAExample, Trajectory

KINDS = ("eval", "ppo", "coldstart")
_SKIPPED_DIRS = {"checkpoints", "final", "tiny-model", "index", ".git"}


@dataclass
class Record:
    """One trajectory of a run and what is known about it."""

    number: int
    """Its position in the run's list (stable: the page opens a record by it)."""
    kind: str  # one of KINDS
    source: str  # the file, relative to the run folder
    system: str  # what produced it: "eval-cs/r3rag", "ppo iter 2", "coldstart oracle"
    method: str
    dataset: str
    qtype: str
    question_id: str
    question: str
    golds: list[str]
    correct: bool | None  # None: not scored
    trajectory: Trajectory
    gold_ids: set[str] = field(default_factory=set)
    reward: dict[str, Any] | None = None  # PPO rollouts: the reward record
    note: str = ""  # cold start: why the teacher's trajectory was rejected

    @property
    def ended(self) -> str:
        return self.trajectory.status.value

    @property
    def prediction(self) -> str:
        return self.trajectory.final_answer or ""


@dataclass
class Run:
    """A run folder: its trajectories, its plots, and the files that could not be read (with why)."""

    folder: Path
    records: list[Record]
    plots: list[Path]
    problems: list[str]

    def values(self, attribute: str) -> list[str]:
        """The distinct values of one attribute over the records, sorted: the choices of a filter."""
        return sorted({str(getattr(record, attribute)) for record in self.records})


def load_run(folder: str | Path) -> Run:
    """Every trajectory under ``folder`` (any depth), its plots, and the question files' gold."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, "no such run folder", str(folder))
    files = sorted(_files(folder))
    problems: list[str] = []
    questions = _questions(folder, files, problems)
    records: list[Record] = []
    for path in files:
        kind = _kind(path)
        if kind is None:
            continue
        for line_number, data in _lines(path):
            try:
                records.append(_READERS[kind](len(records), folder, path, data, questions))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line_number}: not a {kind} record ({e!r})") from None
    plots = sorted(p for p in files if p.suffix == ".png")
    return Run(folder, records, plots, problems)


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.iterdir():
        if path.is_dir() and path.name not in _SKIPPED_DIRS:
            yield from _files(path)
        elif path.is_file():
            yield path


def _kind(path: Path) -> str | None:
    if path.name == "predictions.jsonl":
        return "eval"
    if path.parent.name == "rollouts" and path.suffix == ".jsonl":
        return "ppo"
    if path.name == "trajectories.jsonl":
        return "coldstart"
    return None


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
            yield number, data


def _question_files(folder: Path, files: list[Path]) -> list[Path]:
    """The question files the stages name: each evaluation manifest's datasets, PPO's ``train``."""
    named: list[str] = []
    for path in files:
        if path.name == "manifest.json" and (path.parent / "predictions.jsonl").is_file():
            manifest = json.loads(path.read_text(encoding="utf-8"))
            for dataset in (manifest.get("datasets") or {}).values():
                named += [entry["path"] for entry in dataset.get("files", [])]
        elif path.name == "config.yaml" and (path.parent / "rollouts").is_dir():
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if isinstance(config.get("train"), str):
                named.append(config["train"])
    return [_locate(folder, Path(name)) for name in dict.fromkeys(named)]


def _locate(folder: Path, path: Path) -> Path:
    """A file a stage named, or, when the run folder was moved, the same file at its place in the folder."""
    if path.is_file() or not path.is_absolute():
        return path if path.is_absolute() else folder / path
    moved = folder / path.parent.name / path.name
    return moved if moved.is_file() else path


def _questions(folder: Path, files: list[Path], problems: list[str]) -> dict[str, QAExample]:
    questions: dict[str, QAExample] = {}
    for path in _question_files(folder, files):
        if not path.is_file():
            problems.append(f"{path}: question file not found: types and gold passages unknown for it")
            continue
        questions.update((example.id, example) for example in load_dataset(path))
    return questions


def _gold(question_id: str, questions: dict[str, QAExample]) -> tuple[str, set[str]]:
    example = questions.get(question_id)
    return (example.type, set(example.supporting_ids)) if example else ("", set())


def _eval_record(
    number: int, folder: Path, path: Path, data: dict[str, Any], questions: dict[str, QAExample]
) -> Record:
    qtype, gold_ids = _gold(str(data["id"]), questions)
    method = str(data["method"])
    return Record(
        number=number,
        kind="eval",
        source=str(path.relative_to(folder)),
        system=f"{path.parent.relative_to(folder)}/{method}".removeprefix("./"),
        method=method,
        dataset=str(data["dataset"]),
        qtype=qtype,
        question_id=str(data["id"]),
        question=str(data["question"]),
        golds=[str(g) for g in data["golds"]],
        correct=float(data["acc"]) > 0,
        trajectory=Trajectory.from_dict(data["trajectory"]),
        gold_ids=gold_ids,
    )


def _ppo_record(
    number: int, folder: Path, path: Path, data: dict[str, Any], questions: dict[str, QAExample]
) -> Record:
    trajectory = Trajectory.from_dict(data)
    reward = data["reward"]
    example = questions.get(trajectory.example_id)
    iteration = path.stem.removeprefix("iter-").lstrip("0") or "0"
    return Record(
        number=number,
        kind="ppo",
        source=str(path.relative_to(folder)),
        system=f"ppo iter {iteration}",
        method="r3rag",
        dataset=example.dataset if example else "",
        qtype=example.type if example else "",
        question_id=trajectory.example_id,
        question=trajectory.question,
        golds=list(example.answers) if example else [],
        correct=None if reward.get("correct") is None else bool(reward["correct"]),
        trajectory=trajectory,
        gold_ids=set(example.supporting_ids) if example else set(),
        reward=reward,
    )


def _coldstart_record(
    number: int, folder: Path, path: Path, data: dict[str, Any], questions: dict[str, QAExample]
) -> Record:
    _, gold_ids = _gold(str(data["id"]), questions)
    trajectory, note = data["trajectory"], ""
    if trajectory is None:  # rejected: the last attempt shows why
        attempt = data["attempts"][-1]
        trajectory, note = attempt["trajectory"], f"rejected: {attempt.get('reason', '')}"
    return Record(
        number=number,
        kind="coldstart",
        source=str(path.relative_to(folder)),
        system=f"coldstart {data.get('teacher', 'teacher')}",
        method=f"teacher {data.get('teacher', '')}".strip(),
        dataset=str(data.get("dataset", "")),
        qtype=str(data.get("type", "")),
        question_id=str(data["id"]),
        question=str(data["question"]),
        golds=[str(g) for g in data["golden_answers"]],
        correct=bool(data["kept"]),
        trajectory=Trajectory.from_dict(trajectory),
        gold_ids=gold_ids,
        note=note,
    )


_READERS = {"eval": _eval_record, "ppo": _ppo_record, "coldstart": _coldstart_record}


ALL = "all"
"""The filter value that keeps every record."""
VERDICTS = {"correct": True, "wrong": False, "not scored": None}


def select(
    run: Run,
    system: str = ALL,
    dataset: str = ALL,
    qtype: str = ALL,
    verdict: str = ALL,
    ended: str = ALL,
) -> list[Record]:
    """The records that pass every filter (``all`` passes everything); ``verdict`` is one of
    :data:`VERDICTS`."""
    if verdict != ALL and verdict not in VERDICTS:
        raise ValueError(f"verdict must be {ALL} or one of {', '.join(VERDICTS)}, not {verdict!r}")
    return [
        r
        for r in run.records
        if system in (ALL, r.system)
        and dataset in (ALL, r.dataset)
        and qtype in (ALL, r.qtype)
        and ended in (ALL, r.ended)
        and (verdict == ALL or r.correct is VERDICTS[verdict])
    ]
