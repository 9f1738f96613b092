"""The teacher output file: one jsonl record per question, appended as each question finishes.

A record holds the kept trajectory (or none) and every attempt that failed, with its reason, so the yield
of a teacher can be audited and its failures studied (the official code kept ``search_chain_fail`` and
``fail_reason`` for the same purpose). Both teachers write through :func:`run_teacher`: questions whose id
is already in the file are skipped, so a rerun after a crash or Ctrl-C redoes only the questions that were
in flight, and a question is never written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from r3rag.jsonl import JsonlAppender, RecordError, iter_jsonl, read_ids
from r3rag.schema import QAExample, Trajectory


@dataclass(slots=True)
class Attempt:
    """One try at a question: how it was sampled, how it ended, and why it was not kept (empty if kept)."""

    number: int
    temperature: float | None
    status: str
    final_answer: str | None
    reason: str
    trajectory: Trajectory | None = None

    def to_dict(self, with_trajectory: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attempt": self.number,
            "temperature": self.temperature,
            "status": self.status,
            "final_answer": self.final_answer,
            "reason": self.reason,
        }
        if with_trajectory and self.trajectory is not None:
            out["trajectory"] = self.trajectory.to_dict()
        return out


@dataclass(slots=True)
class TeacherResult:
    """A question's outcome: the kept trajectory, if any, and all attempts in order."""

    example: QAExample
    teacher: str
    kept: Trajectory | None
    attempts: list[Attempt] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        ex = self.example
        return {
            "id": ex.id,
            "dataset": ex.dataset,
            "type": ex.type,
            "question": ex.question,
            "golden_answers": list(ex.answers),
            "teacher": self.teacher,
            "kept": self.kept is not None,
            "trajectory": None if self.kept is None else self.kept.to_dict(),
            # the kept attempt's trajectory is stored once, above; failed ones keep theirs for study
            "attempts": [a.to_dict(with_trajectory=bool(a.reason)) for a in self.attempts],
        }


class Teacher(Protocol):
    """Writes trajectories for a batch of questions, yielding each question's result as soon as it is done."""

    label: str

    def solve(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]: ...


@dataclass(slots=True)
class RunSummary:
    skipped: int = 0
    written: int = 0
    kept: int = 0


def run_teacher(
    teacher: Teacher,
    examples: Sequence[QAExample],
    out: str | Path,
    batch_size: int,
    on_result: Callable[[TeacherResult], None] | None = None,
) -> RunSummary:
    """Run the questions not yet in ``out`` through ``teacher``, ``batch_size`` at a time, appending each
    result as it comes. Duplicate ids in ``examples`` are run once."""
    done = read_ids(out, key="id")
    todo, seen = [], set(done)
    for example in examples:
        if example.id not in seen:
            seen.add(example.id)
            todo.append(example)
    summary = RunSummary(skipped=len(examples) - len(todo))
    with JsonlAppender(out) as writer:
        for start in range(0, len(todo), batch_size):
            for result in teacher.solve(todo[start : start + batch_size]):
                writer.write(result.to_record())
                summary.written += 1
                summary.kept += result.kept is not None
                if on_result is not None:
                    on_result(result)
    return summary


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a teacher output file, checked for the fields later stages read."""
    for line, record in iter_jsonl(path):
        for key in ("id", "kept", "attempts"):
            if key not in record:
                raise RecordError(path, line, "missing (not a teacher output file?)", field=key)
        if record["kept"] and not isinstance(record.get("trajectory"), dict):
            raise RecordError(path, line, "a kept record needs its trajectory", field="trajectory")
        yield record
