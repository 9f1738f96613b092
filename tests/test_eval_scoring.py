"""Scores of hand-built trajectories and their averages, checked against values computed by hand."""

from __future__ import annotations

import pytest

from eval_fixtures import FILM, NOISE, STUDIO, RuleGenerator, example
from r3rag.config import JudgeConfig
from r3rag.evaluation.scoring import prediction_at, retrieved, score_trajectories, summarize
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Step, Trajectory, TrajectoryStatus


def trajectory(answer_step: int | None, answer: str | None, passages: list, tokens: int) -> Trajectory:
    """A retrieval step holding ``passages``, then (optionally) an answer at ``answer_step``."""
    steps = [Step(index=1, analysis="look", query="q", passages=passages)]
    if answer_step is not None:
        steps.append(Step(index=answer_step, analysis="done", answer=answer))
    return Trajectory(
        example_id="q",
        question="Who founded the studio that made Silver Harbour?",
        steps=steps,
        final_answer=answer if answer_step is not None else None,
        status=TrajectoryStatus.ANSWERED if answer_step is not None else TrajectoryStatus.OUT_OF_STEPS,
        completion_tokens=tokens,
    )


@pytest.fixture
def scored() -> list[dict]:
    examples = [example("a"), example("b"), example("c")]
    trajectories = [
        trajectory(2, "Ada Vale", [FILM, STUDIO], 10),  # right at step 2
        trajectory(3, "Ada", [FILM, NOISE], 20),  # partial credit at step 3
        trajectory(None, None, [], 30),  # never answered
    ]
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    records = score_trajectories(examples, trajectories, judge, max_steps=3, gold="id")
    return [{**r, "method": "m", "dataset": "toy", "top_k": 2} for r in records]


def test_prediction_at_counts_an_answer_only_within_the_budget() -> None:
    t = trajectory(3, "Ada", [], 0)
    assert [prediction_at(t, b) for b in (1, 2, 3, 4)] == [None, None, "Ada", "Ada"]
    t.steps.append(Step(index=4, answer="Bob", valid=False))  # an invalid step's answer never counts
    assert prediction_at(t, 4) == "Ada"


def test_a_search_counts_when_its_step_is_valid_or_kept_passages() -> None:
    assert retrieved(Step(index=1, query="q"))
    assert not retrieved(Step(index=1, query="q", valid=False))  # malformed: nothing was searched
    assert retrieved(Step(index=1, query="q", passages=[FILM], valid=False))  # searched, then failed
    assert not retrieved(Step(index=1, answer="a"))


def test_scores_of_each_prediction(scored: list[dict]) -> None:
    right, partial, none = scored
    assert (right["em"], right["f1"], right["cover_em"], right["acc"]) == (1.0, 1.0, 1.0, 1.0)
    assert right["budget_acc"] == [0.0, 1.0, 1.0]
    assert right["recall"] == 1.0 and right["retrievals"] == 1 and right["steps"] == 2
    # "Ada" vs "Ada Vale": precision 1, recall 1/2 -> F1 2/3; not covered; not exact
    assert partial["f1"] == pytest.approx(2 / 3)
    assert (partial["em"], partial["cover_em"], partial["acc"]) == (0.0, 0.0, 0.0)
    assert partial["recall"] == 0.5 and partial["budget_f1"] == pytest.approx([0.0, 0.0, 2 / 3])
    assert none["prediction"] is None and none["acc"] == 0.0 and none["recall"] == 0.0
    assert none["status"] == "out-of-steps" and none["judged_by"] == "empty"


def test_summary_against_hand_computed_averages(scored: list[dict]) -> None:
    (summary,) = summarize(scored)
    assert summary.n == 3
    assert summary.acc == pytest.approx(1 / 3)
    assert summary.em == pytest.approx(1 / 3)
    assert summary.f1 == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary.cover_em == pytest.approx(1 / 3)
    assert summary.recall == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary.retrievals == pytest.approx(1.0)
    assert summary.steps == pytest.approx((2 + 3 + 1) / 3)
    assert summary.completion_tokens == pytest.approx(20.0)
    assert summary.tokens_per_correct == pytest.approx(10.0)  # only the right answer's tokens
    assert summary.budget_acc == pytest.approx([0.0, 1 / 3, 1 / 3])
    assert summary.statuses == {"answered": 2, "out-of-steps": 1}


def test_no_recall_and_no_tokens_per_correct_when_undefined(scored: list[dict]) -> None:
    wrong = [{**r, "acc": 0.0, "top_k": None} for r in scored]
    (summary,) = summarize(wrong)
    assert summary.recall is None and summary.tokens_per_correct is None


def test_questions_without_gold_passages_are_left_out_of_recall(scored: list[dict]) -> None:
    """A question that marks no gold passage has no recall (None), and the mean is over the others: counting
    it as 0 would lower the recall of a dataset with unmarked questions for no fault of the retriever."""
    no_gold = example("d")
    no_gold.supporting_ids, no_gold.supporting_titles = [], []
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    (record,) = score_trajectories([no_gold], [trajectory(2, "Ada Vale", [FILM], 5)], judge, 3, gold="id")
    assert record["recall"] is None
    (summary,) = summarize([*scored, {**record, "method": "m", "dataset": "toy", "top_k": 2}])
    assert summary.n == 4 and summary.recall == pytest.approx((1 + 0.5 + 0) / 3)


def test_summaries_split_by_method_dataset_and_top_k(scored: list[dict]) -> None:
    more = scored + [{**scored[0], "top_k": 5}, {**scored[0], "dataset": "other"}]
    cells = {(s.method, s.dataset, s.top_k): s.n for s in summarize(more)}
    assert cells == {("m", "toy", 2): 3, ("m", "toy", 5): 1, ("m", "other", 2): 1}


def test_the_llm_judge_sees_each_distinct_answer_once() -> None:
    generator = RuleGenerator(lambda prompt: "The answer names the founder.\nVerdict: correct")
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=True), generator)
    t = trajectory(2, "the founder Ada", [FILM], 5)
    (record,) = score_trajectories([example()], [t], judge, max_steps=4, gold="id")
    assert record["acc"] == 1.0 and record["judged_by"] == "llm" and record["em"] == 0.0
    assert record["budget_acc"] == [0.0, 1.0, 1.0, 1.0]
    assert [len(call) for call in generator.calls] == [1]  # one batch, one question for three budgets
