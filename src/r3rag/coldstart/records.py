"""The teacher output file: one jsonl record per question, appended as each question finishes.

A record holds the kept trajectory (or none) and every attempt that failed, with its reason, so the yield
of a teacher can be audited and its failures studied (the official code kept ``search_chain_fail`` and
``fail_reason`` for the same purpose). Both teachers write through :func:`run_teacher`: questions whose id
is already in the file are skipped, so a rerun after a crash, Ctrl-C or ``kill -9`` redoes only the questions
that were in flight, and a question is never written twice.

A question whose model call still failed after the endpoint's retries is not done: it is appended to the
failures file beside the output (:func:`failures_path`, one record per failure, with the error) instead, and
since its id is not in the output a rerun asks again. Only a teacher judged wrong makes a question "not kept".
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
    failed: str | None = None
    """The error of a model call that still failed after its retries: the question is to be asked again."""

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

    def to_failure(self) -> dict[str, Any]:
        """The failures file's record: which question, why, and the attempts made before the call failed."""
        return {
            "id": self.example.id,
            "teacher": self.teacher,
            "error": self.failed,
            "attempts": [a.to_dict(with_trajectory=False) for a in self.attempts],
        }


class Teacher(Protocol):
    """Writes trajectories for questions, yielding each question's result as soon as it is done."""

    label: str

    def solve(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]: ...


@dataclass(slots=True)
class RunSummary:
    """What one run did: questions skipped as done, written (of which kept), retried after an earlier
    failure, and failed again (left for the next run)."""

    skipped: int = 0
    written: int = 0
    kept: int = 0
    retried: int = 0
    failed: int = 0


def failures_path(out: str | Path) -> Path:
    """The failures file beside a teacher output: ``trajectories.jsonl`` -> ``trajectories.failed.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.failed.jsonl")


def run_teacher(
    teacher: Teacher,
    examples: Sequence[QAExample],
    out: str | Path,
    on_result: Callable[[TeacherResult], None] | None = None,
) -> RunSummary:
    """Run the questions not yet in ``out`` through ``teacher``, appending each result as it comes, a failed
    one to :func:`failures_path`. Duplicate ids in ``examples`` are run once."""
    done = read_ids(out, key="id")
    failed_before = read_ids(failures_path(out), key="id") - done
    todo, seen = [], set(done)
    for example in examples:
        if example.id not in seen:
            seen.add(example.id)
            todo.append(example)
    summary = RunSummary(skipped=len(examples) - len(todo))
    summary.retried = sum(example.id in failed_before for example in todo)
    with JsonlAppender(out) as writer, JsonlAppender(failures_path(out)) as failures:
        for result in teacher.solve(todo):
            if result.failed is not None:
                failures.write(result.to_failure())
                summary.failed += 1
            else:
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
