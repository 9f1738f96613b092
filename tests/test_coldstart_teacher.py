"""The LLM teacher against a scripted OpenAI-compatible server on loopback: rejection sampling, format
re-prompts, judge filtering (match and LLM judge), and resuming an interrupted run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request

from openai_stub import ScriptedOpenAIServer
from r3rag.coldstart.build import SFT_FILE, TRAJECTORIES_FILE, build
from r3rag.coldstart.dataset import round_trips
from r3rag.coldstart.prompts import teacher_system_prompt, worked_examples
from r3rag.coldstart.records import read_records, run_teacher
from r3rag.coldstart.teacher import LLMTeacher
from r3rag.config import AgentConfig, ColdStartConfig, JudgeConfig
from r3rag.jsonl import iter_jsonl
from r3rag.llm.base import Completion, Conversation, Generator, SamplingParams
from r3rag.llm.openai import OpenAIGenerator
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Passage, QAExample
from r3rag.steps import QUESTION_PREFIX, build_messages, format_step

GARBAGE = "I would rather chat about the weather."


def query(k: int, q: str = "who is it") -> str:
    return f"Step {k}:\nThe problem analysis: I need a fact.\nThe retrieval query: {q}"


def answer(k: int, a: str) -> str:
    return f"Step {k}:\nThe problem analysis: The documents say so.\nThe final answer: {a}"


@dataclass
class TeacherServer(ScriptedOpenAIServer):
    """Replies to each question with its script, one reply per request in order (the last reply repeats);
    judge requests get a verdict by candidate answer. Records the question and temperature of each request."""

    rules: dict = field(default_factory=dict)
    scripts: dict[str, list[str]] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, float]] = field(default_factory=list)
    conversations: list[list[dict[str, str]]] = field(default_factory=list)

    async def _chat(self, request: Request) -> Any:
        body = await request.json()
        user = body["messages"][-1]["content"]
        if "Candidate answer:" in user:
            candidate = user.split("Candidate answer:", 1)[1].splitlines()[0].strip()
            text = self.verdicts.get(candidate, "Verdict: incorrect")
        else:
            question = user.splitlines()[0].removeprefix(QUESTION_PREFIX).strip()
            self.seen.append((question, body["temperature"]))
            self.conversations.append(body["messages"])
            replies = self.scripts[question]
            text = replies.pop(0) if len(replies) > 1 else replies[0]
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "teacher",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


@dataclass
class FixedRetriever:
    passages: list[Passage] = field(
        default_factory=lambda: [Passage(f"p{i}", f"Title {i}", f"Text {i}.") for i in range(6)]
    )

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [list(self.passages[:k]) for _ in queries]


def example(qid: str, gold: str) -> QAExample:
    return QAExample(id=qid, question=f"Question {qid}?", answers=[gold], dataset="t", type="compositional")


def config(**overrides: Any) -> ColdStartConfig:
    base = dict(
        attempts=3, format_retries=1, batch_size=8, agent=AgentConfig(top_k=2, max_doc_chars=512, max_steps=3)
    )
    return ColdStartConfig(**{**base, **overrides})


def teacher(
    server: TeacherServer, cfg: ColdStartConfig, judge_llm: bool = False, interrupt_at: int | None = None
) -> LLMTeacher:
    """The teacher through the server; with ``interrupt_at``, through a synchronous wrapper (the batched path
    of a local model) that is interrupted on that call."""
    generator: Generator = OpenAIGenerator(server.base_url, "teacher", concurrency=4, max_retries=0)
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=judge_llm), generator if judge_llm else None)
    if interrupt_at is not None:
        generator = Interrupting(generator, interrupt_at)
    return LLMTeacher(generator, FixedRetriever(), cfg, judge, label="llm:teacher")


def test_rejection_sampling_format_retries_and_judge(tmp_path: Path):
    server = TeacherServer(
        scripts={
            "Question A?": [query(1), answer(2, "Ada Lovelace")],
            "Question B?": [answer(1, "Bob"), answer(1, "Ann")],
            "Question C?": [GARBAGE, answer(1, "Cy")],
            "Question D?": [answer(1, "Zed")],
            "Question E?": [GARBAGE, GARBAGE, query(1), query(2), query(3), answer(1, "Eve")],
            "Question F?": [answer(1, "Ada L.")],
        },
        verdicts={"Ada L.": "The same person, abbreviated.\nVerdict: correct"},
    )
    golds = {"A": "Ada Lovelace", "B": "Ann", "C": "Cy", "D": "Dora", "E": "Eve", "F": "Ada Lovelace"}
    examples = [example(q, g) for q, g in golds.items()]
    out = tmp_path / "trajectories.jsonl"
    with server:
        summary = run_teacher(teacher(server, config(), judge_llm=True), examples, out)
    records = {r["id"]: r for r in read_records(out)}
    assert summary.written == 6 and summary.kept == 5 and set(records) == set(golds)

    a, b, c, d, e, f = (records[q] for q in "ABCDEF")
    assert a["kept"] and len(a["attempts"]) == 1 and a["attempts"][0]["temperature"] == 0.0
    steps = a["trajectory"]["steps"]
    assert [s["query"] for s in steps] == ["who is it", None] and len(steps[0]["passages"]) == 2
    assert b["kept"] and [x["temperature"] for x in b["attempts"]] == [0.0, 0.9]
    assert b["attempts"][0]["reason"].startswith("wrong answer: 'Bob'") and "trajectory" in b["attempts"][0]
    assert b["trajectory"]["final_answer"] == "Ann" and "trajectory" not in b["attempts"][1]
    assert c["kept"] and c["trajectory"]["metadata"]["regenerations"] == 1
    assert not d["kept"] and d["trajectory"] is None and len(d["attempts"]) == 3
    assert all(x["reason"] == "wrong answer: 'Zed', gold 'Dora'" for x in d["attempts"])
    assert [x["reason"].split(":")[0] for x in e["attempts"][:2]] == [
        "format error in step 1",
        "out of steps",
    ]
    assert e["kept"] and e["trajectory"]["final_answer"] == "Eve"
    assert f["kept"] and f["trajectory"]["final_answer"] == "Ada L."  # the LLM judge accepted it

    # the teacher saw its own system prompt and exactly the policy's user turn
    first_a = next(
        m for m in server.conversations if m[-1]["content"].startswith(f"{QUESTION_PREFIX} Question A?")
    )
    assert first_a[0] == {"role": "system", "content": teacher_system_prompt()}
    assert first_a[1:] == build_messages("Question A?", [], system_prompt=None)


def test_every_attempt_is_recorded_once_and_retries_stop_at_the_limit(tmp_path: Path):
    server = TeacherServer(scripts={"Question D?": [answer(1, "Zed")]})
    with server:
        run_teacher(teacher(server, config(attempts=4)), [example("D", "Dora")], tmp_path / "t.jsonl")
    assert [t for _, t in server.seen] == [0.0, 0.9, 0.9, 0.9]


def test_teacher_system_prompt_examples_are_in_the_step_format():
    prompt = teacher_system_prompt()
    for question, steps in worked_examples():
        assert all(round_trips(step) for step in steps)
        assert steps[-1].is_answer and all(s.is_retrieval for s in steps[:-1])
        assert f"{QUESTION_PREFIX} {question}" in prompt
        assert all(format_step(step) in prompt for step in steps)


class Interrupting:
    """A Generator that raises KeyboardInterrupt on its ``at``-th call, as Ctrl-C would mid-run."""

    def __init__(self, inner: Generator, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.generate(conversations, sampling)


def test_resume_after_interruption_no_duplicates_no_loss(tmp_path: Path):
    golds = {f"R{i}": f"Gold {i}" for i in range(6)}
    server = TeacherServer(scripts={f"Question {q}?": [answer(1, g)] for q, g in golds.items()})
    examples = [example(q, g) for q, g in golds.items()]
    cfg = config(batch_size=2)
    out = tmp_path / "run"
    with server:
        with pytest.raises(KeyboardInterrupt):
            build(cfg, teacher(server, cfg, interrupt_at=2), examples, out)  # during the second batch
        first = [r["id"] for _, r in iter_jsonl(out / TRAJECTORIES_FILE)]
        assert first == ["R0", "R1"]  # the finished batch was written, the batch in flight was not
        asked_before = len(server.seen)
        summary, stats = build(cfg, teacher(server, cfg), examples, out)
    ids = [r["id"] for _, r in iter_jsonl(out / TRAJECTORIES_FILE)]
    assert sorted(ids) == sorted(golds) and len(ids) == len(set(ids))
    assert summary.skipped == 2 and summary.written == 4
    assert {q for q, _ in server.seen[asked_before:]} == {f"Question R{i}?" for i in range(2, 6)}
    assert stats["kept"] == 6 and stats["sft_examples"] == 6
    assert len(list(iter_jsonl(out / SFT_FILE))) == 6


def test_resume_refuses_other_policy_settings(tmp_path: Path):
    server = TeacherServer(scripts={"Question A?": [answer(1, "Ada")]})
    with server:
        build(config(), teacher(server, config()), [example("A", "Ada")], tmp_path)
        other = config(agent=AgentConfig(top_k=5))
        with pytest.raises(ValueError, match="agent.top_k: 2 -> 5"):
            build(other, teacher(server, other), [example("A", "Ada")], tmp_path)
