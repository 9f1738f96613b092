"""Search-R1's tag protocol: what each prompt shows, how replies are read, the budget, a run to the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eval_fixtures import FILM, QUESTION, STUDIO, RuleGenerator, TriggerRetriever, example
from r3rag.config import JudgeConfig
from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.manifest import build_manifest
from r3rag.evaluation.methods.registry import build_method
from r3rag.evaluation.methods.search_r1 import (
    INVALID_NOTE,
    NO_ACTION,
    SEARCH_STOP,
    information,
    instruction,
    parse_reply,
)
from r3rag.evaluation.report import write_report
from r3rag.evaluation.runner import EvalDataset, EvalRunner
from r3rag.evaluation.scoring import score_trajectories
from r3rag.gold import GoldMatch
from r3rag.llm.base import Completion, Conversation, SamplingParams, per_row
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Trajectory, TrajectoryStatus
from test_eval_baselines import RULES

FIRST = "<think>I need the film's studio.</think>\n<search> Silver Harbour </search>"
SECOND = "<think>It is Vale Studio; now its founder.</think>\n<search> Vale Studio founder </search>"
ANSWER = "<think>Vale Studio was founded by Ada Vale.</think>\n<answer> Ada Vale </answer>"
JUDGE = CorrectnessJudge(JudgeConfig(correctness_llm=False))


@dataclass
class ScriptedGenerator:
    """Replies with the next scripted (text, finish_reason) for one question, cut at the stop strings as a
    server would; records every conversation and sampling setting it was given."""

    replies: list[tuple[str, str]]
    conversations: list[Conversation] = field(default_factory=list)
    sampling: list[SamplingParams] = field(default_factory=list)

    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        (conversation,), (params,) = list(conversations), per_row(sampling, len(conversations))
        self.conversations.append(conversation)
        self.sampling.append(params)
        text, finish_reason = self.replies.pop(0)
        cuts = [text.find(s) for s in params.stop if s in text]
        text = text[: min(cuts)] if cuts else text
        return [Completion(text, finish_reason, prompt_tokens=5, completion_tokens=len(text.split()))]


def run(
    replies: list[str | tuple[str, str]], max_steps: int = 5
) -> tuple[Trajectory, ScriptedGenerator, TriggerRetriever]:
    generator = ScriptedGenerator([r if isinstance(r, tuple) else (r, "stop") for r in replies])
    retriever = TriggerRetriever()
    method = build_method("search-r1", generator, retriever, EvalConfig(max_steps=max_steps), 2)
    (trajectory,) = method.run([example()])
    return trajectory, generator, retriever


def test_two_searches_then_an_answer_show_each_information_block_after_its_search() -> None:
    trajectory, generator, retriever = run([FIRST + "\n\n<information>made up", SECOND, ANSWER])
    assert trajectory.status is TrajectoryStatus.ANSWERED and trajectory.final_answer == "Ada Vale"
    assert [(s.index, s.query, [p.id for p in s.passages]) for s in trajectory.steps] == [
        (1, "Silver Harbour", ["film"]),
        (2, "Vale Studio founder", ["studio"]),
        (3, None, []),
    ]
    assert trajectory.steps[0].analysis == "I need the film's studio."
    assert trajectory.steps[0].raw == FIRST.removesuffix("</search>")  # the server stopped at </search>
    assert retriever.calls == [(["Silver Harbour"], 2), (["Vale Studio founder"], 2)]
    assert generator.conversations[2] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": instruction(QUESTION)
            + FIRST
            + f"\n\n<information>Doc 1(Title: Silver Harbour) {FILM.text}\n</information>\n\n"
            + SECOND
            + f"\n\n<information>Doc 1(Title: Vale Studio) {STUDIO.text}\n</information>\n\n",
        },
    ]
    assert {(p.stop, p.max_new_tokens) for p in generator.sampling} == {(SEARCH_STOP, 500)}


def test_an_answer_without_a_search_ends_at_the_first_step() -> None:
    trajectory, generator, retriever = run(["<think>I know this one.</think>\n<answer> Ada Vale </answer>"])
    assert trajectory.status is TrajectoryStatus.ANSWERED and trajectory.final_answer == "Ada Vale"
    assert [s.index for s in trajectory.steps] == [1] and retriever.calls == []
    assert generator.conversations[0][1]["content"] == instruction(QUESTION)


def test_malformed_replies_get_a_note_and_cost_their_step() -> None:
    replies = [
        "I am not sure what to do.",  # no tag
        "<think>Search.</think>\n<search>   </search>",  # an empty query
        ("<think>Search.</think>\n<search> a query the token budget cut", "length"),
        ANSWER,
    ]
    trajectory, generator, retriever = run(replies)
    assert [(s.valid, s.issues) for s in trajectory.steps] == [(False, [NO_ACTION])] * 3 + [(True, [])]
    assert retriever.calls == [] and trajectory.final_answer == "Ada Vale"
    second = generator.conversations[1][1]["content"]
    assert second == instruction(QUESTION) + "I am not sure what to do." + INVALID_NOTE
    (score,) = score_trajectories([example()], [trajectory], JUDGE, max_steps=5, gold="id")
    assert score["budget_acc"] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_the_budget_running_out_ends_out_of_steps_without_an_extra_turn() -> None:
    trajectory, generator, retriever = run([FIRST, SECOND], max_steps=2)
    assert trajectory.status is TrajectoryStatus.OUT_OF_STEPS and trajectory.final_answer is None
    assert len(generator.conversations) == 2 and len(retriever.calls) == 2
    assert [p.id for s in trajectory.steps for p in s.passages] == ["film", "studio"]


def test_replies_are_read_up_to_their_first_action() -> None:
    ignored_stop = parse_reply("<think>a</think><search> q </search>\n\n<information>invented</information>")
    assert (ignored_stop.kind, ignored_stop.argument, ignored_stop.thought) == ("search", "q", "a")
    assert ignored_stop.kept == "<think>a</think><search> q </search>"
    assert parse_reply("<answer> Paris </answer> <search> x").argument == "Paris"
    assert parse_reply("<answer> Paris", "stop").kind == "answer"  # the server stopped at </answer>
    assert parse_reply("<answer> Par", "length").kind == "none"
    assert (
        information([FILM])
        == f"\n\n<information>Doc 1(Title: Silver Harbour) {FILM.text}\n</information>\n\n"
    )


def test_search_r1_runs_through_the_runner_into_the_report(tmp_path: Path) -> None:
    config = EvalConfig(methods=["search-r1"], top_k=2, max_steps=3, batch_size=2)
    datasets = [EvalDataset("toy", examples=[example(f"t{i}") for i in range(3)])]
    generator = RuleGenerator(RULES["search-r1"])
    runner = EvalRunner(config, generator, TriggerRetriever(), JUDGE, tmp_path, {"toy": "id"})
    records = runner.run(datasets)
    assert len(records) == 3
    assert all(r["acc"] == 1.0 and r["recall"] == 1.0 and r["budget_acc"] == [0.0, 0.0, 1.0] for r in records)
    manifest = build_manifest(
        config,
        {"backend": "openai", "name": "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"},
        {"kind": "trigger", "source": "toy", "fingerprint": None},
        {d.name: d.describe() for d in datasets},
        {"toy": GoldMatch("id", "auto", 3, 3).to_dict()},
    )
    paths = write_report(tmp_path, records, config, manifest)
    assert "| Search-R1 | 2 | 100.0 | 100.0 | 100.0 | 100.0 |" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["average_acc"] == {"search-r1": 1.0}
