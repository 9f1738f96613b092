"""The runner: datasets and their names, the plan of runs, resuming after an interruption, the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_fixtures import FILM, QUESTION, RuleGenerator, TriggerRetriever, example
from r3rag.config import JudgeConfig
from r3rag.data.datasets import write_flashrag
from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.manifest import build_manifest, differences, merge_manifests
from r3rag.evaluation.report import write_report
from r3rag.evaluation.runner import (
    PREDICTIONS_FILE,
    CutPassages,
    EvalDataset,
    EvalRunner,
    build_context_index,
    load_datasets,
    planned_runs,
    record_key,
)
from r3rag.gold import GoldMatch
from r3rag.jsonl import iter_jsonl
from r3rag.retrieval.index import load_index
from r3rag.rewards.judges import CorrectnessJudge
from test_eval_baselines import RULES


def dispatching_rule(prompt: str):
    """The rule of whichever method wrote the prompt (recognised by its format)."""
    if "Reasoning so far:" in prompt:
        return RULES["ircot"](prompt)
    if "The question:" in prompt:
        return RULES["r3rag"](prompt)
    return RULES["cot"](prompt)


class Interrupted(RuntimeError):
    pass


class FailingAfter(RuleGenerator):
    """A generator that stops working after ``calls_left`` calls, as a killed run would."""

    def __init__(self, calls_left: int):
        super().__init__(dispatching_rule)
        self.calls_left = calls_left

    def generate(self, conversations, sampling):  # type: ignore[no-untyped-def]
        if self.calls_left == 0:
            raise Interrupted
        self.calls_left -= 1
        return super().generate(conversations, sampling)


CONFIG = EvalConfig(methods=["cot", "ircot", "r3rag"], top_k=2, top_k_sweep=[1], batch_size=2, max_steps=3)
DATASETS = [
    EvalDataset("toy", examples=[example(f"t{i}") for i in range(3)]),
    EvalDataset("other", examples=[example(f"o{i}", f"{QUESTION} ({i})") for i in range(2)]),
]
GOLD = {"toy": "id", "other": "id"}
MANIFEST = build_manifest(
    CONFIG,
    {"backend": "local", "name": "rules", "fingerprint": None},
    {"kind": "trigger", "source": "toy", "fingerprint": None},
    {d.name: {"files": [], "questions": len(d.examples)} for d in DATASETS},
    {name: GoldMatch(rule, "auto", 2, 2).to_dict() for name, rule in GOLD.items()},
)


def evaluate(out: Path, generator: RuleGenerator) -> list[dict]:
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    return EvalRunner(CONFIG, generator, TriggerRetriever(), judge, out, GOLD).run(DATASETS)


def report_files(out: Path, records: list[dict]) -> dict[str, str]:
    paths = write_report(out, records, CONFIG, MANIFEST)
    return {kind: paths[kind].read_text() for kind in ("markdown", "csv", "json")}


def test_plan_runs_each_method_at_its_main_top_k_then_the_sweep() -> None:
    config = EvalConfig(methods=["cot", "rag-cot", "r3rag"], top_k_sweep=[1, 5], rag_cot={"top_k": 16})
    assert planned_runs(config) == [
        ("cot", None),
        ("rag-cot", 16),
        ("r3rag", 5),
        ("rag-cot", 1),
        ("r3rag", 1),
        ("rag-cot", 5),  # r3rag at 5 is already its main run
    ]
    only = config.model_copy(update={"sweep_methods": ["r3rag"]})
    assert planned_runs(only)[3:] == [("r3rag", 1)]


def test_resume_after_an_interruption_gives_the_same_tables(tmp_path: Path) -> None:
    whole = evaluate(tmp_path / "whole", RuleGenerator(dispatching_rule))
    assert len(whole) == 5 * 5  # cot, ircot@2, r3rag@2, ircot@1, r3rag@1, for 5 questions
    expected = report_files(tmp_path / "whole", whole)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        evaluate(out, FailingAfter(calls_left=6))
    partial = [r for _, r in iter_jsonl(out / PREDICTIONS_FILE)]
    assert 0 < len(partial) < len(whole)
    with open(out / PREDICTIONS_FILE, "a") as f:  # a line cut short by the kill
        f.write('{"key": "cot|toy|-|t9", "meth')

    generator = RuleGenerator(dispatching_rule)
    resumed = evaluate(out, generator)
    keys = [r["key"] for _, r in iter_jsonl(out / PREDICTIONS_FILE)]
    assert len(keys) == len(set(keys)) == len(whole)  # nothing ran twice
    assert sorted(r["key"] for r in resumed) == sorted(r["key"] for r in whole)
    assert report_files(out, resumed) == expected

    again = RuleGenerator(dispatching_rule)
    evaluate(out, again)
    assert again.calls == []  # a finished run has nothing left to do


def test_records_carry_the_trajectory_and_scores(tmp_path: Path) -> None:
    records = {r["key"]: r for r in evaluate(tmp_path, RuleGenerator(dispatching_rule))}
    record = records[record_key("ircot", "other", 2, "o1")]
    assert record["dataset"] == "other" and record["golds"] == ["Ada Vale"]
    assert record["prediction"] == "Ada Vale" and record["acc"] == 1.0
    assert record["trajectory"]["metadata"]["method"] == "ircot"
    assert records[record_key("cot", "toy", None, "t0")]["prediction"] == "Bob"


def test_datasets_group_by_name_and_drop_repeated_ids(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_flashrag(first, [example("x"), example("y")])
    write_flashrag(second, [example("y"), example("z")])
    (merged,) = load_datasets([str(first), str(second)])
    assert merged.name == "toy"  # the loader's dataset field
    assert [e.id for e in merged.examples] == ["x", "y", "z"] and merged.duplicates == 1
    named = load_datasets([f"mine={first}", str(second)], limit=1)
    assert [(d.name, [e.id for e in d.examples]) for d in named] == [("mine", ["x"]), ("toy", ["y"])]
    with pytest.raises(FileNotFoundError):
        load_datasets([str(tmp_path / "missing.jsonl")])


def test_context_index_is_built_from_the_question_files(tmp_path: Path) -> None:
    hotpot = tmp_path / "hotpot.json"
    record = {
        "_id": "h1",
        "question": QUESTION,
        "answer": "Ada Vale",
        "type": "bridge",
        "level": "easy",
        "supporting_facts": [["Silver Harbour", 0], ["Vale Studio", 0]],
        "context": [
            ["Silver Harbour", ["Silver Harbour is a 1950 film made by Vale Studio."]],
            ["Vale Studio", ["Vale Studio was founded by Ada Vale in 1931."]],
        ],
    }
    hotpot.write_text(json.dumps([record]))
    index = build_context_index([hotpot], tmp_path / "ctx")
    (hits,) = load_index(index).search(["who founded Vale Studio"], 1)
    assert hits[0].title == "Vale Studio"
    (dataset,) = load_datasets([str(hotpot)])
    assert hits[0].id in dataset.examples[0].supporting_ids  # gold ids match the corpus ids
    built = (index / "manifest.json").stat().st_mtime_ns
    build_context_index([hotpot], tmp_path / "ctx")
    assert (index / "manifest.json").stat().st_mtime_ns == built  # unchanged corpus: reused

    converted = tmp_path / "converted.jsonl"
    write_flashrag(converted, dataset.examples)
    with pytest.raises(ValueError, match="no context paragraphs"):
        build_context_index([converted], tmp_path / "none")


def test_a_run_folder_refuses_another_setting_but_takes_more_methods() -> None:
    model = {"backend": "local", "name": "m", "fingerprint": "f1"}
    retriever = {"kind": "bm25", "source": "/i", "fingerprint": "r1"}
    data = {"toy": {"files": [{"path": "/a", "sha256": "s1"}], "questions": 3}}
    by_id = {"toy": GoldMatch("id", "auto", 4, 4).to_dict()}
    old = build_manifest(CONFIG, model, retriever, data, by_id)
    more = build_manifest(
        CONFIG.model_copy(update={"methods": ["cot"], "top_k_sweep": []}), model, retriever, data, by_id
    )
    assert differences(old, more) == []
    other_data = {"toy": {"files": [{"path": "/a", "sha256": "s2"}], "questions": 3}}
    assert differences(old, build_manifest(CONFIG, model, retriever, other_data, by_id)) == [
        "dataset toy: other question files (sha256 differs)"
    ]
    changed = build_manifest(
        CONFIG.model_copy(update={"max_steps": 5}), {**model, "fingerprint": "f2"}, retriever, data, by_id
    )
    assert differences(old, changed) == ["model: m -> m", "max_steps: 3 -> 5"]
    added = build_manifest(CONFIG, model, retriever, {"new": data["toy"]}, {"new": by_id["toy"]})
    merged = merge_manifests(old, added)
    assert set(merged["datasets"]) == set(merged["gold_match"]) == {"toy", "new"}


def test_a_run_folder_refuses_another_gold_matching_rule() -> None:
    """Recall already written was matched by one rule: a resumed run must not add records matched by
    another (a run from before the rule was recorded matched by id)."""
    model = {"backend": "local", "name": "m", "fingerprint": "f1"}
    retriever = {"kind": "bm25", "source": "/i", "fingerprint": "r1"}
    data = {"toy": {"files": [{"path": "/a", "sha256": "s1"}], "questions": 3}}
    by_id = build_manifest(CONFIG, model, retriever, data, {"toy": GoldMatch("id", "auto", 4, 4).to_dict()})
    by_title = build_manifest(
        CONFIG, model, retriever, data, {"toy": GoldMatch("title", "auto", 4, 0).to_dict()}
    )
    expected = ["dataset toy: gold passages matched by id, now by title (other gold recall)"]
    assert differences(by_id, by_title) == expected
    unrecorded = {k: v for k, v in by_id.items() if k != "gold_match"}
    assert differences(unrecorded, by_title) == expected
    assert differences(unrecorded, by_id) == []


def test_cut_passages_shortens_the_documents_at_a_word_boundary(tmp_path: Path) -> None:
    (hits,) = CutPassages(TriggerRetriever(), 20).search(["silver harbour"], 3)
    assert [(p.id, p.title, p.text) for p in hits] == [("film", "Silver Harbour", "Silver Harbour is a")]
    assert CutPassages(TriggerRetriever(), 1000).search(["silver harbour"], 3) == [[FILM]]
    config = CONFIG.model_copy(update={"passage_chars": 20, "methods": ["r3rag"], "top_k_sweep": []})
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    runner = EvalRunner(config, RuleGenerator(dispatching_rule), TriggerRetriever(), judge, tmp_path, GOLD)
    records = runner.run(DATASETS[:1])
    passages = [p for r in records for s in r["trajectory"]["steps"] for p in s["passages"]]
    assert passages and all(len(p["text"]) <= 20 for p in passages)


def test_a_changed_method_setting_is_named_by_its_section_and_field() -> None:
    model = {"backend": "local", "name": "m", "fingerprint": "f1"}
    retriever = {"kind": "bm25", "source": "/i", "fingerprint": "r1"}
    ircot = CONFIG.settings("ircot").model_copy(update={"max_passages": 3})
    old = build_manifest(CONFIG, model, retriever, {}, {})
    new = build_manifest(CONFIG.model_copy(update={"ircot": ircot}), model, retriever, {}, {})
    assert differences(old, new) == ["ircot.max_passages: 15 -> 3"]
