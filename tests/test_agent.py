"""The reason-retrieve loop with a scripted generator and a fixed retriever."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from r3rag.agent import Agent
from r3rag.config import AgentConfig
from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.steps import DEFAULT_SYSTEM_PROMPT, QUESTION_PREFIX


def query(k: int, q: str = "who made it") -> str:
    return f"Step {k}:\nThe problem analysis: need more facts.\nThe retrieval query: {q}"


def answer(k: int, a: str = "Ada") -> str:
    return f"Step {k}:\nThe problem analysis: the documents say so.\nThe final answer: {a}"


GARBAGE = "I think the answer is somewhere."


@dataclass
class Call:
    questions: list[str]
    users: list[str]
    sampling: list[SamplingParams]


@dataclass
class ScriptedGenerator:
    """Replies to each question with its script, one reply per call (re-generations included).

    A reply of ``None`` becomes a backend error. Token counts are character lengths, so they can be checked.
    """

    script: dict[str, list[str | None]]
    calls: list[Call] = field(default_factory=list)

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        params = per_row(sampling, len(conversations))
        users = [conv[-1]["content"] for conv in conversations]
        questions = [u.splitlines()[0].removeprefix(QUESTION_PREFIX).strip() for u in users]
        self.calls.append(Call(questions, users, params))
        out = []
        for q, user in zip(questions, users, strict=True):
            reply = self.script[q].pop(0)
            if reply is None:
                out.append(Completion(text="", finish_reason="error", error="HTTP 503"))
            else:
                ids = list(range(len(reply)))
                out.append(Completion(reply, "stop", [1, 2], ids, len(user), len(reply)))
        return out


@dataclass
class FixedRetriever:
    """Returns the same ranking for every query (so deduplication is visible), recording each call."""

    passages: list[Passage]
    calls: list[tuple[list[str], int]] = field(default_factory=list)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        return [list(self.passages[:k]) for _ in queries]


PASSAGES = [
    Passage(id=f"p{i}", title=f"Title {i}", text=f"Text number {i} with some words.") for i in range(10)
]


def examples(*questions: str) -> list[QAExample]:
    return [QAExample(id=f"id-{q}", question=q, answers=["Ada"]) for q in questions]


def run(script: dict[str, list[str | None]], config: AgentConfig | None = None, **kwargs):
    generator, retriever = ScriptedGenerator(script), FixedRetriever(PASSAGES)
    trajectories = Agent(generator, retriever, config).run(examples(*script), **kwargs)
    return trajectories, generator, retriever


def test_stops_on_an_answer() -> None:
    (t,), generator, retriever = run({"q": [query(1), answer(2)]})
    assert t.status is TrajectoryStatus.ANSWERED
    assert t.final_answer == "Ada"
    assert [s.index for s in t.steps] == [1, 2]
    assert [p.id for p in t.steps[0].passages] == ["p0", "p1", "p2", "p3", "p4"]
    assert len(generator.calls) == 2 and len(retriever.calls) == 1
    assert "The retrieval documents: Title 0\nText number 0" in generator.calls[1].users[0]


def test_all_questions_advance_together_in_one_call_per_step() -> None:
    script = {
        "a": [answer(1)],
        "b": [query(1, "b1"), answer(2)],
        "c": [query(1, "c1"), query(2, "c2"), answer(3)],
    }
    trajectories, generator, retriever = run(script)
    assert [len(call.questions) for call in generator.calls] == [3, 2, 1]
    assert [queries for queries, _ in retriever.calls] == [["b1", "c1"], ["c2"]]
    assert [t.status for t in trajectories] == [TrajectoryStatus.ANSWERED] * 3
    assert [len(t.steps) for t in trajectories] == [1, 2, 3]


def test_stops_at_max_steps() -> None:
    (t,), generator, _ = run({"q": [query(1), query(2), query(3), answer(4)]}, AgentConfig(max_steps=3))
    assert t.status is TrajectoryStatus.OUT_OF_STEPS
    assert t.final_answer is None
    assert len(t.steps) == 3 and len(generator.calls) == 3


def test_repeated_format_failure_ends_the_trajectory() -> None:
    (t,), generator, _ = run({"q": [query(1)] + [GARBAGE] * 4}, AgentConfig(retry_temperature=0.5))
    assert t.status is TrajectoryStatus.FORMAT_ERROR
    assert len(generator.calls) == 1 + 4  # step 1, then step 2 tried once and re-generated 3 times
    assert t.metadata["regenerations"] == 3
    assert [c.sampling[0].temperature for c in generator.calls[1:]] == [0.0, 0.5, 0.5, 0.5]
    assert len(t.steps) == 2 and not t.steps[-1].valid and t.steps[-1].raw == GARBAGE
    assert [s.seed for c in generator.calls for s in c.sampling] == [None] * 5


def test_a_regenerated_step_recovers() -> None:
    (t,), generator, _ = run({"q": [GARBAGE, GARBAGE, answer(1)]})
    assert t.status is TrajectoryStatus.ANSWERED
    assert len(t.steps) == 1 and t.steps[0].valid
    assert t.metadata["regenerations"] == 2


def test_only_the_malformed_rows_are_regenerated() -> None:
    script = {"ok": [answer(1)], "bad": [GARBAGE, answer(1)]}
    trajectories, generator, _ = run(script)
    assert [call.questions for call in generator.calls] == [["ok", "bad"], ["bad"]]
    assert [t.status for t in trajectories] == [TrajectoryStatus.ANSWERED] * 2


def test_backend_errors_count_as_format_errors_with_the_message() -> None:
    (t,), _, _ = run({"q": [None] * 4})
    assert t.status is TrajectoryStatus.FORMAT_ERROR
    assert t.metadata["errors"] == ["HTTP 503"] * 4


def test_passages_seen_earlier_are_skipped() -> None:
    config = AgentConfig(top_k=2)
    (t,), _, retriever = run({"q": [query(1), query(2), query(3), answer(4)]}, config)
    assert [[p.id for p in s.passages] for s in t.steps[:3]] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5"]]
    assert [k for _, k in retriever.calls] == [2, 4, 6]  # top_k plus what the trajectory has already seen


def test_without_dedup_the_same_passages_come_back() -> None:
    config = AgentConfig(top_k=2, dedup_passages=False)
    (t,), _, retriever = run({"q": [query(1), query(2), answer(3)]}, config)
    assert [[p.id for p in s.passages] for s in t.steps[:2]] == [["p0", "p1"], ["p0", "p1"]]
    assert [k for _, k in retriever.calls] == [2, 2]


def test_documents_are_truncated_per_step_in_the_prompt() -> None:
    config = AgentConfig(top_k=3, max_doc_chars=20)
    (t,), generator, _ = run({"q": [query(1), answer(2)]}, config)
    joined = "\n".join(p.contents for p in PASSAGES[:3])
    prompt = generator.calls[1].users[0]
    assert prompt.endswith("The retrieval documents: " + joined[:20])
    assert joined[:21] not in prompt
    assert len(t.steps[0].passages) == 3  # the trajectory keeps whole passages; only the prompt is cut


def test_forced_final_answer_when_steps_run_out() -> None:
    config = AgentConfig(max_steps=2, force_answer=True)
    (t,), generator, _ = run({"q": [query(1), query(2), answer(3, "Bo")]}, config)
    assert t.status is TrajectoryStatus.ANSWERED
    assert t.final_answer == "Bo"
    assert t.metadata["forced_answer"] is True
    assert len(t.steps) == 3
    assert generator.calls[-1].users[0].endswith(config.force_answer_prompt)
    assert config.force_answer_prompt not in generator.calls[-2].users[0]


def test_a_forced_step_that_queries_again_leaves_the_trajectory_out_of_steps() -> None:
    config = AgentConfig(max_steps=1, force_answer=True, max_format_retries=1)
    (t,), generator, _ = run({"q": [query(1), query(2), query(2, "again")]}, config)
    assert t.status is TrajectoryStatus.OUT_OF_STEPS
    assert t.metadata["forced_answer"] is False
    assert t.metadata["forced_answer_raw"] == query(2, "again")
    assert len(t.steps) == 1 and len(generator.calls) == 3


def test_per_sample_temperatures_reach_the_sampler() -> None:
    temperatures = [0.1, 0.4, 0.7, 1.0]
    generator = ScriptedGenerator({"q": [answer(1)] * 4})
    agent = Agent(generator, FixedRetriever(PASSAGES), AgentConfig(seed=7))
    trajectories = agent.run(examples("q") * 4, temperatures=temperatures)
    (call,) = generator.calls
    assert [s.temperature for s in call.sampling] == temperatures
    assert [t.metadata["temperature"] for t in trajectories] == temperatures
    seeds = [s.seed for s in call.sampling]
    assert len(set(seeds)) == 4 and all(isinstance(s, int) and s >= 0 for s in seeds)
    again = ScriptedGenerator({"q": [answer(1)] * 4, "other": [answer(1)]})
    agent = Agent(again, FixedRetriever(PASSAGES), AgentConfig(seed=7))
    agent.run(examples("other") + examples("q") * 4, temperatures=[0.0, *temperatures])
    assert [s.seed for s in again.calls[0].sampling][1:] == seeds  # whatever else shares the batch


def test_each_step_stops_at_the_next_step_header() -> None:
    _, generator, _ = run({"q": [query(1), answer(2)]}, AgentConfig(stop=["###"]))
    assert [c.sampling[0].stop for c in generator.calls] == [("###", "\nStep 2:"), ("###", "\nStep 3:")]


def test_token_counts_and_recorded_token_ids() -> None:
    config = AgentConfig(record_token_ids=True)
    (t,), generator, _ = run({"q": [query(1), GARBAGE, answer(2)]}, config)
    users = [u for call in generator.calls for u in call.users]
    assert t.prompt_tokens == sum(len(u) for u in users)
    assert t.completion_tokens == len(query(1)) + len(GARBAGE) + len(answer(2))
    assert [len(x["completion"]) for x in t.metadata["step_token_ids"]] == [len(query(1)), len(answer(2))]
    assert Trajectory.from_dict(t.to_dict()).to_dict() == t.to_dict()


def test_on_step_sees_every_step_after_its_retrieval() -> None:
    seen: list[tuple[str, int, int]] = []

    def on_step(trajectory: Trajectory, step: Step) -> None:
        seen.append((trajectory.example_id, step.index, len(step.passages)))

    run({"a": [query(1), answer(2)], "b": [answer(1)]}, on_step=on_step)
    assert seen == [("id-a", 1, 5), ("id-b", 1, 0), ("id-a", 2, 0)]


def test_temperatures_must_match_the_examples() -> None:
    with pytest.raises(ValueError, match="2 temperatures for 1 examples"):
        run({"q": [answer(1)]}, temperatures=[0.1, 0.2])


def test_default_system_prompt_is_the_step_format_default() -> None:
    assert AgentConfig().system_prompt == DEFAULT_SYSTEM_PROMPT


def test_runs_on_a_real_local_model() -> None:
    """A random tiny Llama writes no valid step: each row is re-generated, then ends as a format error."""
    from r3rag.llm.hf import HFGenerator
    from r3rag.steps import build_messages, render_prompt
    from tiny_llm import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = AgentConfig(max_new_tokens=6, record_token_ids=True, seed=0)
    agent = Agent(HFGenerator(tiny_model(), tokenizer), FixedRetriever(PASSAGES), config)
    trajectories = agent.run(examples("who?", "which film won?"), temperatures=[0.0, 1.0])
    prompt = tokenizer(render_prompt(tokenizer, build_messages("who?")), add_special_tokens=False)[
        "input_ids"
    ]
    for t in trajectories:
        assert t.status is TrajectoryStatus.FORMAT_ERROR
        assert t.metadata["regenerations"] == 3
        assert t.completion_tokens <= 4 * 6
        assert len(t.metadata["step_token_ids"]) == len(t.steps) == 1
    assert trajectories[0].metadata["step_token_ids"][0]["prompt"] == prompt
