"""The hybrid reward per step, against the table of the reference (§3.2) and each ablation switch."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from r3rag.config import JudgeConfig, RewardConfig
from r3rag.rewards.judges import CorrectnessJudge, ReferenceRelevanceJudge
from r3rag.rewards.scoring import (
    TrajectoryScorer,
    bridge_entities,
    bridge_query_gains,
    check_bonus_annotations,
    gold_recall_gains,
    relevance_items,
)
from r3rag.rewards.shaping import StepKind, lambda_t, shape_rewards
from r3rag.schema import Passage, QAExample, Step, SubQuestion, Trajectory, TrajectoryStatus

ANSWERED, OUT, FORMAT = (
    TrajectoryStatus.ANSWERED,
    TrajectoryStatus.OUT_OF_STEPS,
    TrajectoryStatus.FORMAT_ERROR,
)


def retrieval(index: int, *ids: str) -> Step:
    passages = [Passage(id=i, title=f"T{i}", text=f"text {i}") for i in ids]
    return Step(index=index, analysis="think", query=f"query {index}", passages=passages)


def answer(index: int, text: str = "Velmora") -> Step:
    return Step(index=index, analysis="so", answer=text)


def invalid(index: int) -> Step:
    return Step(index=index, raw="Step 3: rambling", valid=False, issues=["missing 'The problem analysis:'"])


def trajectory(status: TrajectoryStatus, *steps: Step) -> Trajectory:
    final = steps[-1].answer if status == ANSWERED else None
    return Trajectory(example_id="q1", question="Q?", steps=list(steps), final_answer=final, status=status)


CORRECT = trajectory(ANSWERED, retrieval(1), retrieval(2), answer(3))
WRONG = trajectory(ANSWERED, retrieval(1), retrieval(2), answer(3))
OUT_OF_STEPS = trajectory(OUT, *(retrieval(i) for i in range(1, 6)))
FORMAT_ERROR = trajectory(FORMAT, retrieval(1), retrieval(2), invalid(3))

# One row per line of the reference's table, per mode: (trajectory, correct, Rel per retrieval step, rewards).
TABLE = {
    "hybrid": [
        (CORRECT, True, [0.5, 1.0], [0.8, 1.6, 2.0]),  # 1.6 x Rel; 2.0 on the answer
        (WRONG, False, [0.5, 0.25], [0.4, 0.2, 0.0]),  # 0.8 x Rel; 0 on the answer
        (OUT_OF_STEPS, None, [0.1, 0.2, 0.3, 0.4, 0.5], [0.09, 0.18, 0.27, 0.36, 0.45]),  # 0.9 x Rel
        (FORMAT_ERROR, None, [0.7, 0.3], [0.7, 0.3, -1.0]),  # Rel unscaled; -1 on the bad step
    ],
    "outcome": [  # official experience_maker_orm.py: the outcome on every step, no Rel
        (CORRECT, True, [0.5, 1.0], [2.0, 2.0, 2.0]),
        (WRONG, False, [0.5, 0.25], [0.0, 0.0, 0.0]),
        (OUT_OF_STEPS, None, [0.1, 0.2, 0.3, 0.4, 0.5], [0.0] * 5),
        (FORMAT_ERROR, None, [0.7, 0.3], [0.0, 0.0, -1.0]),
    ],
    "process": [  # official experience_maker_only_prm.py: Rel unscaled, 0 on the answer
        (CORRECT, True, [0.5, 1.0], [0.5, 1.0, 0.0]),
        (WRONG, False, [0.5, 0.25], [0.5, 0.25, 0.0]),
        (OUT_OF_STEPS, None, [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]),
        (FORMAT_ERROR, None, [0.7, 0.3], [0.7, 0.3, -1.0]),
    ],
}


def test_outcome_only_mode_pays_wrong_reward_only_to_answered_trajectories() -> None:
    """With a non-zero ``wrong_reward`` (0 by default, which hides the difference): a wrong answer earns it on
    every valid step; a trajectory that never answered earns no outcome at all, only its format penalty."""
    config = RewardConfig(mode="outcome", wrong_reward=-0.5)
    assert shape_rewards(WRONG, False, None, config).rewards == [-0.5, -0.5, -0.5]
    assert shape_rewards(OUT_OF_STEPS, None, None, config).rewards == [0.0] * 5
    assert shape_rewards(FORMAT_ERROR, None, None, config).rewards == [0.0, 0.0, -1.0]
    hybrid = RewardConfig(wrong_reward=-0.5)
    assert shape_rewards(OUT_OF_STEPS, None, [0.0] * 5, hybrid).rewards == [0.0] * 5


@pytest.mark.parametrize(
    ("mode", "traj", "correct", "rels", "expected"),
    [(mode, *row) for mode, rows in TABLE.items() for row in rows],
    ids=[f"{mode}-{name}" for mode in TABLE for name in ("correct", "wrong", "out-of-steps", "format-error")],
)
def test_reward_table(
    mode: str, traj: Trajectory, correct: bool | None, rels: list[float], expected: list[float]
):
    result = shape_rewards(traj, correct, rels, RewardConfig(mode=mode))
    assert result.rewards == pytest.approx(expected, abs=1e-12)
    assert [s.total for s in result.steps] == pytest.approx(
        [s.format + s.outcome + s.process for s in result.steps]
    )


def test_trajectory_scale_pays_lambda_times_the_mean_relevance_and_the_outcome_once() -> None:
    config = RewardConfig(scale="trajectory")
    # hybrid: 1.6 x Rel / 2 on each of two searches, the outcome untouched; lambda_T is still reported
    correct = shape_rewards(CORRECT, True, [0.5, 1.0], config)
    assert correct.rewards == pytest.approx([0.4, 0.8, 2.0]) and correct.lambda_t == 1.6
    # five searches that never answer: 0.9 x mean Rel (0.3) = 0.27 in all, where the paper's sum pays 1.35
    out = shape_rewards(OUT_OF_STEPS, None, [0.1, 0.2, 0.3, 0.4, 0.5], config)
    assert out.rewards == pytest.approx([0.018, 0.036, 0.054, 0.072, 0.09]) and sum(out.rewards) == (
        pytest.approx(0.27)
    )
    # the format penalty is not spread: only Rel is
    fmt = shape_rewards(FORMAT_ERROR, None, [0.7, 0.3], config)
    assert fmt.rewards == pytest.approx([0.35, 0.15, -1.0])
    # process-only mode spreads Rel too
    process = RewardConfig(mode="process", scale="trajectory")
    assert shape_rewards(WRONG, False, [0.5, 0.25], process).rewards == pytest.approx([0.25, 0.125, 0.0])
    # outcome-only mode: the outcome over the three valid steps (the paper's pays 2.0 on each: 6.0 in all)
    outcome = RewardConfig(mode="outcome", scale="trajectory", wrong_reward=-0.5)
    assert shape_rewards(CORRECT, True, None, outcome).rewards == pytest.approx([2 / 3] * 3)
    assert shape_rewards(WRONG, False, None, outcome).rewards == pytest.approx([-1 / 6] * 3)
    assert shape_rewards(OUT_OF_STEPS, None, None, outcome).rewards == [0.0] * 5  # no answer, no outcome
    assert shape_rewards(FORMAT_ERROR, None, None, outcome).rewards == [0.0, 0.0, -1.0]
    # a trajectory whose only step answers has no search to spread over
    direct = trajectory(ANSWERED, answer(1))
    assert shape_rewards(direct, True, [], config).rewards == [2.0]
    assert shape_rewards(direct, True, None, outcome).rewards == [2.0]


def test_hops_scale_spreads_rel_over_the_searches_or_the_gold_hops_whichever_is_more() -> None:
    """A wrong answer (lambda_T 0.8) to a 2-hop question. Under "trajectory", a second search that finds
    nothing halves the first one's pay (0.4 -> 0.2); under "hops" it costs nothing (0.2 either way), one
    that finds the second hop's passage doubles it, and only a third search dilutes (over 3, not 2)."""
    hops, mean = RewardConfig(scale="hops"), RewardConfig(scale="trajectory")
    one = trajectory(ANSWERED, retrieval(1), answer(2))
    two = WRONG
    three = trajectory(ANSWERED, retrieval(1), retrieval(2), retrieval(3), answer(4))
    assert shape_rewards(one, False, [0.5], mean).rewards == pytest.approx([0.4, 0.0])
    assert shape_rewards(two, False, [0.5, 0.0], mean).rewards == pytest.approx([0.2, 0.0, 0.0])
    assert shape_rewards(one, False, [0.5], hops, hops=2).rewards == pytest.approx([0.2, 0.0])
    assert shape_rewards(two, False, [0.5, 0.0], hops, hops=2).rewards == pytest.approx([0.2, 0.0, 0.0])
    assert shape_rewards(two, False, [0.5, 0.5], hops, hops=2).rewards == pytest.approx([0.2, 0.2, 0.0])
    three_rewards = shape_rewards(three, False, [0.5, 0.5, 0.0], hops, hops=2).rewards
    assert three_rewards == pytest.approx([0.4 / 3, 0.4 / 3, 0.0, 0.0])
    # a 4-hop chain: two searches are paid over 4; the outcome and a correct lambda_T as usual
    assert shape_rewards(CORRECT, True, [1.0, 1.0], hops, hops=4).rewards == pytest.approx([0.4, 0.4, 2.0])
    # outcome-only mode pays the outcome over the valid steps, as "trajectory" does
    outcome = RewardConfig(mode="outcome", scale="hops")
    assert shape_rewards(CORRECT, True, None, outcome, hops=2).rewards == pytest.approx([2 / 3] * 3)
    with pytest.raises(ValueError, match="reward.scale 'hops' needs the question's gold hop count, got 0"):
        shape_rewards(one, False, [0.5], hops)


def test_scorer_pays_the_hops_scale_over_each_question_s_gold_decomposition() -> None:
    """Two searches that each reach one gold passage (Rel 1/2 and 1/1 by id), a wrong answer: over the
    4-hop CHAIN's hops, 0.8 x Rel / 4 each."""
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    scorer = TrajectoryScorer(
        RewardConfig(scale="hops"), CorrectnessJudge(judges), ReferenceRelevanceJudge(judges, match="id")
    )
    chain = dataclasses.replace(CHAIN, supporting_ids=["g1", "g2"])
    searched = trajectory(ANSWERED, retrieval(1, "g1", "x"), retrieval(2, "g2"), answer(3, "1900"))
    assert scorer.score([chain], [searched])[0].rewards == pytest.approx([0.1, 0.2, 0.0])


def test_official_constants_format_penalty_and_rounding() -> None:
    config = RewardConfig.official()
    assert shape_rewards(FORMAT_ERROR, None, [0.7, 0.3], config).rewards == [0.7, 0.3, -0.9]
    # 1.6 x 0.333 = 0.5328 and 0.8 x 0.7 = 0.5599999999999999 without rounding
    assert shape_rewards(CORRECT, True, [0.333, 0.7], config).rewards == [0.533, 1.12, 2.0]
    assert shape_rewards(WRONG, False, [0.7, 0.0], config).rewards == [0.56, 0.0, 0.0]
    assert shape_rewards(WRONG, False, [0.7, 0.0], RewardConfig()).rewards[0] == 0.8 * 0.7


def test_breakdown_of_a_correct_trajectory() -> None:
    result = shape_rewards(CORRECT, True, [0.5, 1.0], RewardConfig())
    assert result.lambda_t == 1.6 and result.correct is True and result.status == ANSWERED
    first, _, last = result.steps
    assert (first.kind, first.relevance, first.process, first.outcome, first.format) == (
        StepKind.RETRIEVAL,
        0.5,
        0.8,
        0.0,
        0.0,
    )
    assert (last.kind, last.relevance, last.outcome, last.index) == (StepKind.ANSWER, None, 2.0, 3)
    logged = result.to_dict()
    assert logged["rewards"] == [0.8, 1.6, 2.0] and logged["steps"][0]["kind"] == "retrieval"


def test_format_error_breakdown_puts_the_penalty_on_the_offending_step_only() -> None:
    result = shape_rewards(FORMAT_ERROR, None, [0.7, 0.3], RewardConfig())
    assert result.lambda_t == 1.0
    assert [s.kind for s in result.steps] == [StepKind.RETRIEVAL, StepKind.RETRIEVAL, StepKind.INVALID]
    assert [s.format for s in result.steps] == [0.0, 0.0, -1.0]


def test_lambda_t_per_status_and_mode() -> None:
    config = RewardConfig(
        lambda_correct=1.5, lambda_wrong=0.5, lambda_out_of_steps=0.7, lambda_format_error=0.9
    )
    assert lambda_t(ANSWERED, True, config) == 1.5
    assert lambda_t(ANSWERED, False, config) == 0.5
    assert lambda_t(OUT, None, config) == 0.7
    assert lambda_t(FORMAT, None, config) == 0.9
    assert lambda_t(ANSWERED, True, RewardConfig(mode="process")) == 1.0
    assert shape_rewards(CORRECT, True, [0.5, 1.0], RewardConfig(mode="outcome")).lambda_t is None


def test_configured_values_are_used() -> None:
    config = RewardConfig(correct_reward=1.0, wrong_reward=-0.5, format_reward=-2.0)
    assert shape_rewards(WRONG, False, [0.0, 0.0], config).rewards == [0.0, 0.0, -0.5]
    assert shape_rewards(FORMAT_ERROR, None, [0.0, 0.0], config).rewards == [0.0, 0.0, -2.0]
    assert shape_rewards(
        CORRECT, True, [0.0, 0.0], config.model_copy(update={"mode": "outcome"})
    ).rewards == [
        1.0,
        1.0,
        1.0,
    ]


def test_edge_shapes() -> None:
    direct = trajectory(ANSWERED, answer(1))
    assert shape_rewards(direct, True, [], RewardConfig()).rewards == [2.0]
    # A failed attempt kept in an answered trajectory is still penalised; lambda_T follows the outcome.
    kept = trajectory(ANSWERED, retrieval(1), invalid(2), answer(3))
    assert shape_rewards(kept, True, [0.5], RewardConfig()).rewards == [0.8, -1.0, 2.0]
    # Format error on the very first step.
    assert shape_rewards(trajectory(FORMAT, invalid(1)), None, [], RewardConfig()).rewards == [-1.0]
    # Outcome-only mode needs no relevance scores.
    assert shape_rewards(CORRECT, True, None, RewardConfig(mode="outcome")).rewards == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("traj", "correct", "rels", "message"),
    [
        (trajectory(TrajectoryStatus.RUNNING, retrieval(1)), None, [0.5], "still running"),
        (CORRECT, None, [0.5, 1.0], "verdict"),
        (OUT_OF_STEPS, True, [0.1] * 5, "verdict"),
        (CORRECT, True, [0.5], "1 relevance scores for 2 retrieval steps"),
        (CORRECT, True, None, "needs a relevance score"),
        (CORRECT, True, [0.5, 1.2], r"\[0, 1\]"),
        (trajectory(FORMAT, retrieval(1), retrieval(2)), None, [0.1, 0.2], "last step is valid"),
        (trajectory(ANSWERED, retrieval(1), retrieval(2)), True, [0.1, 0.2], "does not end with an answer"),
        (trajectory(OUT, answer(1), retrieval(2)), None, [0.1], "answer step comes before"),
        (trajectory(OUT, Step(index=1, analysis="x")), None, [], "neither a query nor an answer"),
        (Trajectory(example_id="q", question="Q", status=OUT), None, [], "no steps"),
    ],
)
def test_inconsistent_trajectories_are_refused(traj, correct, rels, message) -> None:
    with pytest.raises(ValueError, match=message):
        shape_rewards(traj, correct, rels, RewardConfig())


# ------------------------------------------------------------------------------------ scoring end to end


EXAMPLE = QAExample(id="q1", question="Q?", answers=["Velmora", "Velmora City"], supporting_ids=["g1", "g2"])


def test_relevance_items_hold_only_new_passages() -> None:
    traj = trajectory(OUT, retrieval(1, "g1", "x"), retrieval(2, "g1", "g2"), retrieval(3, "x", "g2"))
    items = relevance_items(EXAMPLE, traj)
    assert [[p.id for p in item.passages] for item in items] == [["g1", "x"], ["g2"], []]
    assert [item.step.index for item in items] == [1, 2, 3]


def test_scorer_judges_and_shapes_a_batch() -> None:
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    relevance = ReferenceRelevanceJudge(judges, match="id")
    scorer = TrajectoryScorer(RewardConfig(), CorrectnessJudge(judges), relevance)
    right = trajectory(
        ANSWERED, retrieval(1, "g1", "x"), retrieval(2, "g1", "g2"), answer(3, "velmora city.")
    )
    wrong = trajectory(ANSWERED, retrieval(1, "x", "y"), answer(2, "Paris"))
    stuck = trajectory(OUT, retrieval(1, "g2"), retrieval(2, "g2"))
    broken = trajectory(FORMAT, retrieval(1, "g1", "g2"), invalid(2))
    results = scorer.score([EXAMPLE] * 4, [right, wrong, stuck, broken])
    # Rel = share of new passages that are gold: 1/2, then 1/1 (g1 was already seen).
    assert results[0].rewards == pytest.approx([0.8, 1.6, 2.0])
    assert results[1].rewards == pytest.approx([0.0, 0.0])
    assert results[2].rewards == pytest.approx([0.9, 0.0])  # the repeated g2 is not credited again
    assert results[3].rewards == pytest.approx([1.0, -1.0])
    assert [r.correct for r in results] == [True, False, None, None]
    stats = scorer.stats()
    assert stats["correctness/items"] == 2 and stats["relevance/items"] == 6
    assert stats["relevance/decided/no_new_passages"] == 1


def test_scorer_checks_its_inputs() -> None:
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    with pytest.raises(ValueError, match="needs a relevance judge"):
        TrajectoryScorer(RewardConfig(), CorrectnessJudge(judges))
    outcome_only = TrajectoryScorer(RewardConfig(mode="outcome"), CorrectnessJudge(judges))
    assert outcome_only.score([EXAMPLE], [CORRECT])[0].rewards == [2.0, 2.0, 2.0]
    other = QAExample(id="q2", question="Q?", answers=["x"])
    with pytest.raises(ValueError, match="paired with"):
        outcome_only.score([other], [CORRECT])
    with pytest.raises(ValueError, match="1 examples for 2"):
        outcome_only.score([EXAMPLE], [CORRECT, WRONG])


def test_gold_recall_gains_credit_each_gold_passage_to_the_step_that_reached_it_first() -> None:
    """Gold g1..g4 (a 4-hop chain): the first search reaches g1, the second g1 again and g2, the third
    nothing gold, the fourth g3 twice over: 1/4, 1/4, 0, 1/4, adding up to the trajectory's recall 3/4."""
    chain = QAExample(id="q1", question="Q?", answers=["Velmora"], supporting_ids=["g1", "g2", "g3", "g4"])
    traj = trajectory(
        ANSWERED,
        retrieval(1, "g1", "x"),
        retrieval(2, "g1", "g2"),
        retrieval(3, "x", "y"),
        retrieval(4, "g3", "g3"),
        answer(5),
    )
    assert gold_recall_gains(chain, traj, "id") == [0.25, 0.25, 0.0, 0.25]
    by_title = QAExample(id="q1", question="Q?", answers=["v"], supporting_titles=["tg2", " TG1 "])
    assert gold_recall_gains(by_title, traj, "title") == [0.5, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="example 'q1' names none"):
        gold_recall_gains(QAExample(id="q1", question="Q?", answers=["v"]), traj, "id")


def test_search_bonuses_are_added_to_each_retrieval_steps_process_reward() -> None:
    """Hybrid, step scale: a correct answer after two searches with Rel 0.5 and 1.0 (1.6 x Rel) whose
    searches earned bonuses 1.0 and 0.5 (gold_recall 2.0 x recall gains 1/2 and 1/4) on their process parts.
    In outcome mode (trajectory scale) the bonus comes on top of the outcome's share of each step."""
    hybrid = RewardConfig(gold_recall=2.0)
    result = shape_rewards(CORRECT, True, [0.5, 1.0], hybrid, [1.0, 0.5])
    assert result.rewards == pytest.approx([0.8 + 1.0, 1.6 + 0.5, 2.0])
    assert [s.process for s in result.steps] == pytest.approx([1.8, 2.1, 0.0])
    assert [s.relevance for s in result.steps] == [0.5, 1.0, None]
    outcome = RewardConfig(mode="outcome", scale="trajectory", gold_recall=1.0)
    assert shape_rewards(CORRECT, True, None, outcome, [0.5, 0.0]).rewards == pytest.approx(
        [2 / 3 + 0.5, 2 / 3, 2 / 3]
    )
    with pytest.raises(ValueError, match="bonus for every retrieval step"):
        shape_rewards(CORRECT, True, [0.5, 1.0], RewardConfig(bridge_queries=1.0))
    with pytest.raises(ValueError, match="1 search bonuses for 2 retrieval steps"):
        shape_rewards(CORRECT, True, [0.5, 1.0], hybrid, [0.5])


def test_search_bonus_needs_answer_withholds_it_from_trajectories_that_did_not_answer() -> None:
    """Hybrid, step scale, bonuses 1.0 and 0.5 on the first two searches: a right answer (lambda_T 1.6) and a
    wrong one (0.8) keep them; running out of steps after five searches (0.9, Rel 0.5 on each) and a format
    error after two (1.0) earn Rel alone. Without the switch the search that never answers earns them too."""
    withheld = RewardConfig(bridge_queries=1.0, search_bonus_needs_answer=True)
    assert shape_rewards(CORRECT, True, [0.5, 1.0], withheld, [1.0, 0.5]).rewards == pytest.approx(
        [0.8 + 1.0, 1.6 + 0.5, 2.0]
    )
    assert shape_rewards(WRONG, False, [0.5, 1.0], withheld, [1.0, 0.5]).rewards == pytest.approx(
        [0.4 + 1.0, 0.8 + 0.5, 0.0]
    )
    searches, bonuses = [0.5] * 5, [1.0, 0.5, 0.0, 0.0, 0.0]
    assert shape_rewards(OUT_OF_STEPS, None, searches, withheld, bonuses).rewards == pytest.approx([0.45] * 5)
    paid = RewardConfig(bridge_queries=1.0)
    assert shape_rewards(OUT_OF_STEPS, None, searches, paid, bonuses).rewards == pytest.approx(
        [1.45, 0.95, 0.45, 0.45, 0.45]
    )
    assert shape_rewards(FORMAT_ERROR, None, [0.5, 1.0], withheld, [1.0, 0.5]).rewards == pytest.approx(
        [0.5, 1.0, -1.0]
    )
    with pytest.raises(ValidationError, match="none is paid"):
        RewardConfig(search_bonus_needs_answer=True)


def test_scorer_pays_gold_recall_under_the_runs_matching_rule() -> None:
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    config = RewardConfig(mode="outcome", gold_recall=1.0)
    with pytest.raises(ValueError, match="gold-matching rule"):
        TrajectoryScorer(config, CorrectnessJudge(judges))
    scorer = TrajectoryScorer(config, CorrectnessJudge(judges), gold_match="id")
    stuck = trajectory(OUT, retrieval(1, "g2"), retrieval(2, "g2", "g1"))
    # EXAMPLE's gold is g1 and g2: each search reached one of them first; no answer, so no outcome.
    assert scorer.score([EXAMPLE], [stuck])[0].rewards == pytest.approx([0.5, 0.5])


def hop(question: str, answer: str) -> SubQuestion:
    return SubQuestion(question=question, answer=answer)


# The synthetic world's 4-hop chain: three bridges (the singer, the brewery, its founder), then the year.
CHAIN = QAExample(
    id="q1",
    question="In what year was the founder of the organisation the singer of Pale Horizon worked for born?",
    answers=["1880"],
    decomposition=[
        hop("Which singer recorded Pale Horizon?", "Theiin Kreius"),
        hop("Who employed Theiin Kreius?", "The Maport Brewery"),
        hop("Who established Maport Brewery?", "Lestaa Riwick"),
        hop("What year did Lestaa Riwick come into the world?", "1880"),
    ],
)


def decomposed(question: str, *hops: SubQuestion) -> QAExample:
    return QAExample(id="q2", question=question, answers=[hops[-1].answer], decomposition=list(hops))


def test_bridge_entities_are_the_hop_answers_a_later_hop_asks_about() -> None:
    """Normalised (the article dropped, so 'The Maport Brewery' matches the later 'Maport Brewery'); a
    comparison's values are asked about by no later hop; MuSiQue's ``#k`` refers to hop k (and ``#1`` is not
    ``#12``); an answer the question names already is no bridge."""
    assert bridge_entities(CHAIN) == ["theiin kreius", "maport brewery", "lestaa riwick"]
    comparison = decomposed(
        "Which is older, Zeford Audio or Iron Music?",
        hop("founding year of Zeford Audio?", "1984"),
        hop("founding year of Iron Music?", "1961"),
    )
    assert bridge_entities(comparison) == []
    party = hop("Ken Epp >> member of political party", "Conservative Party")
    musique = decomposed("Who leads the party of Ken Epp?", party, hop("federal leader of #1", "Harper"))
    assert bridge_entities(musique) == ["conservative party"]
    assert bridge_entities(decomposed("Q?", party, hop("federal leader of #12", "Harper"))) == []
    named = decomposed(
        "Who employed the singer Theiin Kreius?",
        hop("Who is Theiin Kreius?", "Theiin Kreius"),
        hop("Who employed Theiin Kreius?", "X"),
    )
    assert bridge_entities(named) == []
    with pytest.raises(ValueError, match="example 'q5' has none"):
        bridge_entities(QAExample(id="q5", question="Q?", answers=["v"]))


def searching(*queries: str) -> Trajectory:
    steps = [Step(index=i, analysis="think", query=q, passages=[]) for i, q in enumerate(queries, start=1)]
    return trajectory(ANSWERED, *steps, answer(len(queries) + 1, "1880"))


def test_bridge_query_gains_credit_each_bridge_to_the_first_query_naming_it() -> None:
    """Three bridges: the first query names none ('Kreius' alone is not the whole entity); the second names
    the singer (1/3), the third the singer again and the brewery, case and punctuation aside (1/3), the fourth
    a wrong founder (0): 0, 1/3, 1/3, 0. A question without bridges earns zeros."""
    traj = searching(
        "Which singer, Kreius perhaps, recorded Pale Horizon?",
        "Who employed Theiin Kreius?",
        "Did theiin kreius work at MAPORT BREWERY?",
        "When was Zois Fokoenn born?",
    )
    assert bridge_query_gains(CHAIN, traj) == pytest.approx([0.0, 1 / 3, 1 / 3, 0.0])
    no_bridges = QAExample(
        id="q1", question="Q?", answers=["1"], decomposition=[hop("a?", "1"), hop("b?", "2")]
    )
    assert bridge_query_gains(no_bridges, traj) == [0.0] * 4


def test_scorer_adds_the_weighted_bonuses_of_gold_recall_and_bridge_queries() -> None:
    """Outcome mode, step scale, a correct answer (2.0 on every step). Gold g1 (hop 1) and g2 (hop 2) by
    id; one bridge (the singer). Search 1 reaches g1 with the first hop's question: recall 1/2, no bridge.
    Search 2 names the singer and reaches g2: recall 1/2, bridge 1/1. gold_recall 1.0 and bridge_queries 0.5
    add 0.5 and 0.5 + 0.5 to the two searches."""
    example = QAExample(
        id="q1",
        question="Who employed the singer of Pale Horizon?",
        answers=["Maport Brewery"],
        supporting_ids=["g1", "g2"],
        decomposition=[
            hop("Which singer recorded Pale Horizon?", "Theiin Kreius"),
            hop("Who employed Theiin Kreius?", "Maport Brewery"),
        ],
    )
    steps = [
        Step(
            index=1,
            analysis="a",
            query="Which singer recorded Pale Horizon?",
            passages=[Passage("g1", "T", "x")],
        ),
        Step(index=2, analysis="b", query="Who employed Theiin Kreius?", passages=[Passage("g2", "T", "y")]),
        answer(3, "Maport Brewery"),
    ]
    traj = trajectory(ANSWERED, *steps)
    judges = JudgeConfig(correctness_llm=False, relevance="reference")
    config = RewardConfig(mode="outcome", gold_recall=1.0, bridge_queries=0.5)
    scorer = TrajectoryScorer(config, CorrectnessJudge(judges), gold_match="id")
    assert scorer.search_bonuses(example, traj) == pytest.approx([0.5, 1.0])
    assert scorer.score([example], [traj])[0].rewards == pytest.approx([2.5, 3.0, 2.0])
    bridges_only = TrajectoryScorer(
        RewardConfig(mode="outcome", bridge_queries=0.5), CorrectnessJudge(judges)
    )
    assert bridges_only.score([example], [traj])[0].rewards == pytest.approx([2.0, 2.5, 2.0])


def test_questions_lacking_what_a_search_bonus_needs_are_refused_by_file_and_id() -> None:
    bare = QAExample(id="q9", question="Q?", answers=["v"], supporting_ids=["g1"])
    check_bonus_annotations(RewardConfig(), {"train.jsonl": [bare]})  # no bonus, nothing needed
    check_bonus_annotations(RewardConfig(gold_recall=1.0), {"train.jsonl": [bare]})
    with pytest.raises(
        ValueError, match="dev.jsonl: question 'q9' has no gold decomposition, which reward.bridge"
    ):
        check_bonus_annotations(
            RewardConfig(bridge_queries=1.0), {"train.jsonl": [CHAIN], "dev.jsonl": [bare]}
        )
    with pytest.raises(ValueError, match="train.jsonl: question 'q1' has no gold supporting passages"):
        check_bonus_annotations(RewardConfig(gold_recall=1.0), {"train.jsonl": [CHAIN]})
    refused = "train.jsonl: question 'q9' has no gold decomposition, which reward.scale 'hops' needs"
    with pytest.raises(ValueError, match=refused):
        check_bonus_annotations(RewardConfig(scale="hops"), {"train.jsonl": [CHAIN, bare]})
