"""The data model every stage shares: passages, questions, reasoning steps and trajectories.

These are plain dataclasses with an explicit JSON round-trip (``to_dict`` / ``from_dict``) rather than
pydantic models: they are created by the million in rollouts, so they must be cheap, and their JSON shape
is a file format other tools read (trajectories jsonl), so it is written out by hand and kept stable.
Nothing here imports anything else from r3rag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


def passage_id_for(title: str, text: str) -> str:
    """A content-derived passage id: the same (title, text) gets the same id in every run and every file.

    This is what lets a question's supporting-passage ids be computed when the question is loaded, before and
    independently of the corpus that is later built from the same contexts.
    """
    digest = hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()
    return f"p{digest[:15]}"


@dataclass(slots=True)
class Passage:
    """One retrievable unit of text. ``score`` is set only on retrieval results."""

    id: str
    title: str
    text: str
    score: float | None = None

    @property
    def contents(self) -> str:
        """The FlashRAG ``contents`` string: the title on the first line, the text after it."""
        return f"{self.title}\n{self.text}"

    @classmethod
    def from_contents(cls, id: str, contents: str) -> Passage:
        title, _, text = contents.partition("\n")
        return cls(id=id, title=title.strip(), text=text.strip())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.score is not None:
            out["score"] = self.score
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Passage:
        score = d.get("score")
        return cls(
            id=str(d["id"]), title=d["title"], text=d["text"], score=None if score is None else float(score)
        )


@dataclass(slots=True)
class SubQuestion:
    """One hop of a gold decomposition: a question, its answer, and the passages that state the answer.

    ``question`` is kept as the source wrote it: natural language for the synthetic world, MuSiQue's
    ``"Ken Epp >> member of political party"`` / ``"federal leader of #1"`` notation, or a 2Wiki evidence
    triple rendered as ``"subject >> relation"``.
    """

    question: str
    answer: str
    supporting_ids: list[str] = field(default_factory=list)
    supporting_titles: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "supporting_ids": list(self.supporting_ids),
            "supporting_titles": list(self.supporting_titles),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubQuestion:
        return cls(
            question=d["question"],
            answer=d["answer"],
            supporting_ids=list(d.get("supporting_ids", [])),
            supporting_titles=list(d.get("supporting_titles", [])),
        )


@dataclass(slots=True)
class QAExample:
    """A question with its gold answers and, where the dataset has them, gold evidence.

    ``answers[0]`` is the canonical answer; the rest are aliases, all equally correct.
    """

    id: str
    question: str
    answers: list[str]
    supporting_ids: list[str] = field(default_factory=list)
    supporting_titles: list[str] = field(default_factory=list)
    decomposition: list[SubQuestion] = field(default_factory=list)
    dataset: str = ""
    type: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "supporting_ids": list(self.supporting_ids),
            "supporting_titles": list(self.supporting_titles),
            "decomposition": [h.to_dict() for h in self.decomposition],
            "dataset": self.dataset,
            "type": self.type,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QAExample:
        return cls(
            id=str(d["id"]),
            question=d["question"],
            answers=list(d["answers"]),
            supporting_ids=list(d.get("supporting_ids", [])),
            supporting_titles=list(d.get("supporting_titles", [])),
            decomposition=[SubQuestion.from_dict(h) for h in d.get("decomposition", [])],
            dataset=d.get("dataset", ""),
            type=d.get("type", ""),
            metadata=dict(d.get("metadata", {})),
        )


@dataclass(slots=True)
class Step:
    """One reasoning step: an analysis, then either a retrieval query or a final answer.

    ``raw`` is the model output the step was parsed from (empty for steps built by hand). ``valid`` says
    whether the step follows the format; ``issues`` lists what the parser noticed, fatal or not, so format
    failures can be logged and counted rather than guessed at.
    """

    index: int
    analysis: str = ""
    query: str | None = None
    answer: str | None = None
    passages: list[Passage] = field(default_factory=list)
    raw: str = ""
    valid: bool = True
    issues: list[str] = field(default_factory=list)

    @property
    def is_retrieval(self) -> bool:
        return self.valid and self.query is not None

    @property
    def is_answer(self) -> bool:
        return self.valid and self.answer is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "analysis": self.analysis,
            "query": self.query,
            "answer": self.answer,
            "passages": [p.to_dict() for p in self.passages],
            "raw": self.raw,
            "valid": self.valid,
            "issues": list(self.issues),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(
            index=int(d["index"]),
            analysis=d.get("analysis", ""),
            query=d.get("query"),
            answer=d.get("answer"),
            passages=[Passage.from_dict(p) for p in d.get("passages", [])],
            raw=d.get("raw", ""),
            valid=bool(d.get("valid", True)),
            issues=list(d.get("issues", [])),
        )


class TrajectoryStatus(StrEnum):
    """How a trajectory ended. Only ``answered`` trajectories carry a final answer."""

    RUNNING = "running"
    ANSWERED = "answered"
    OUT_OF_STEPS = "out-of-steps"
    FORMAT_ERROR = "format-error"


@dataclass(slots=True)
class Trajectory:
    """A question worked through step by step, with the token counts that evaluation reports."""

    example_id: str
    question: str
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    status: TrajectoryStatus = TrajectoryStatus.RUNNING
    prompt_tokens: int = 0
    completion_tokens: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def retrieval_steps(self) -> list[Step]:
        return [s for s in self.steps if s.is_retrieval]

    def to_dict(self) -> dict[str, Any]:
        return {
            "example_id": self.example_id,
            "question": self.question,
            "steps": [s.to_dict() for s in self.steps],
            "final_answer": self.final_answer,
            "status": self.status.value,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        return cls(
            example_id=str(d["example_id"]),
            question=d["question"],
            steps=[Step.from_dict(s) for s in d.get("steps", [])],
            final_answer=d.get("final_answer"),
            status=TrajectoryStatus(d.get("status", TrajectoryStatus.RUNNING.value)),
            prompt_tokens=int(d.get("prompt_tokens", 0)),
            completion_tokens=int(d.get("completion_tokens", 0)),
            metadata=dict(d.get("metadata", {})),
        )
