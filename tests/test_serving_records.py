"""The run viewer's data: a run folder read into records, filtered, rendered (no browser here)."""

from __future__ import annotations

import pytest

from r3rag.serving.records import load_run, select
from r3rag.serving.render import record_html
from r3rag.serving.viewer import compare_html, table
from run_fixtures import write_run


@pytest.fixture
def run(tmp_path):
    return load_run(write_run(tmp_path / "run"))


def test_every_kind_of_trajectory_is_read_with_its_system_gold_and_verdict(run):
    summary = [(r.system, r.question_id, r.qtype, r.correct, r.ended) for r in run.records]
    assert summary == [
        ("coldstart oracle", "train-1", "chain", True, "answered"),
        ("coldstart oracle", "dev-2", "comparison", False, "out-of-steps"),
        ("eval-a/r3rag", "dev-1", "compositional", True, "answered"),
        ("eval-a/r3rag", "dev-2", "comparison", False, "out-of-steps"),
        ("eval-b/rag-cot", "dev-1", "compositional", False, "answered"),
        ("eval-b/rag-cot", "dev-2", "comparison", True, "answered"),
        ("ppo iter 3", "train-1", "chain", True, "answered"),
    ]
    assert [r.number for r in run.records] == list(range(7))
    assert run.records[2].gold_ids == {"pgold1"}
    assert run.records[6].gold_ids == {"pother"} and run.records[6].reward["lambda_t"] == 1.2
    assert run.records[1].note == "rejected: needs more than 5 steps"
    assert [p.relative_to(run.folder).as_posix() for p in run.plots] == [
        "eval-a/accuracy_vs_steps.png",
        "eval-b/accuracy_vs_steps.png",
    ]
    assert run.problems == []


def test_filters_combine(run):
    assert [r.number for r in select(run, system="eval-a/r3rag")] == [2, 3]
    assert [r.number for r in select(run, verdict="wrong")] == [1, 3, 4]
    assert [r.number for r in select(run, qtype="comparison", verdict="correct")] == [5]
    assert [r.number for r in select(run, ended="out-of-steps", system="eval-a/r3rag")] == [3]
    assert select(run, dataset="hotpotqa") == []
    with pytest.raises(ValueError, match="verdict must be all or one of correct, wrong, not scored"):
        select(run, verdict="maybe")


def test_a_moved_run_folder_still_finds_its_question_files(tmp_path):
    folder = write_run(tmp_path / "old")
    moved = folder.rename(tmp_path / "new")
    run = load_run(moved)
    assert run.problems == [] and run.records[2].gold_ids == {"pgold1"}


def test_a_missing_question_file_is_a_problem_not_a_failure(tmp_path):
    folder = write_run(tmp_path / "run")
    (folder / "world" / "train.jsonl").unlink()
    run = load_run(folder)
    assert len(run.problems) == 1 and "train.jsonl: question file not found" in run.problems[0]
    assert run.records[6].gold_ids == set() and run.records[6].golds == []


def test_a_bad_line_names_the_file_and_line(tmp_path):
    folder = write_run(tmp_path / "run")
    with (folder / "eval-b" / "predictions.jsonl").open("a") as f:
        f.write('{"method": "x"}\n')
    with pytest.raises(
        ValueError, match=r"eval-b/predictions.jsonl:3: not a eval record \(KeyError\('id'\)\)"
    ):
        load_run(folder)
    (folder / "eval-b" / "predictions.jsonl").write_text("[1]\n")
    with pytest.raises(ValueError, match="predictions.jsonl:1: expected a JSON object, got list"):
        load_run(folder)


def test_a_trajectory_renders_its_passages_with_gold_marked_and_reward_parts(run):
    html = record_html(run.records[6])
    assert html.count('class="r3-passage r3-gold"') == 1 and 'data-passage="pother"' in html
    assert "lambda_T 1.2" in html
    assert "<th>relevance</th>" in html and "<td>0.25</td>" in html and "<td>1.5</td>" in html
    eval_html = record_html(run.records[2])
    assert 'class="r3-passage r3-gold" data-passage="pgold1"' in eval_html
    assert 'class="r3-passage" data-passage="pother"' in eval_html
    assert "<b>Final answer:</b> Ada Lovelace" in eval_html


def test_model_text_is_escaped(run):
    record = run.records[2]
    record.trajectory.steps[0].analysis = "<script>alert(1)</script>"
    html = record_html(record)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_listing_and_side_by_side(run):
    assert table([run.records[4]]) == [
        [
            4,
            "eval-b/rag-cot",
            "world",
            "compositional",
            "Who wrote the first program?",
            "Babbage",
            "wrong",
            "answered",
            2,
        ]
    ]
    left, right = compare_html(run, "dev-1", "eval-a/r3rag", "eval-b/rag-cot")
    assert 'data-record="2"' in left and 'data-record="4"' in right
    _, missing = compare_html(run, "dev-1", "eval-a/r3rag", "ppo iter 3")
    assert missing == "<p>ppo iter 3 has no trajectory for dev-1</p>"
