"""Every method on a two-hop toy question with rule-based generators: the steps it takes, what it retrieves,
what it answers, and that one run at budget 5 scores every smaller budget as a run with that budget does."""

from __future__ import annotations

import re

import pytest

from eval_fixtures import (
    ANSWER_FACT,
    BRIDGE_FACT,
    FILM,
    QUESTION,
    STUDIO,
    RuleGenerator,
    TriggerRetriever,
    example,
    transcript,
)
from r3rag.config import JudgeConfig
from r3rag.evaluation.config import EvalConfig
from r3rag.evaluation.methods.base import NO_ANSWER_LINE
from r3rag.evaluation.methods.react import NO_ACTION
from r3rag.evaluation.methods.registry import build_method, method_names
from r3rag.evaluation.methods.search_r1 import INVALID_NOTE
from r3rag.evaluation.prompts import INVALID_ACTION
from r3rag.evaluation.scoring import score_trajectories
from r3rag.rewards.judges import CorrectnessJudge
from r3rag.schema import Trajectory, TrajectoryStatus

METHODS = method_names()
TRICKY = f"Tricky: {QUESTION}"  # ReAct first writes a turn without an action


def reasoning_rule(prompt: str) -> str:
    """CoT, RAG with CoT, ITER-RETGEN: answers once the studio passage is shown; with only the film passage,
    reasons without an answer line (so the direct-answer fallback runs)."""
    if "Reply with the answer only" in prompt:
        return "Ada Vale" if ANSWER_FACT in prompt else "Vale Studio"
    if ANSWER_FACT in prompt:
        return "Vale Studio was founded by Ada Vale.\nSo the answer is: Ada Vale."
    if BRIDGE_FACT in prompt:
        return "Silver Harbour was made by Vale Studio."
    return "I do not know this film.\nSo the answer is: Bob"


def sentence_rule(prompt: str) -> tuple[str, list[float]]:
    """IRCoT and FLARE: one sentence per call; confident only when a document backs it."""
    so_far = prompt.split("Reasoning so far:")[1]
    if ANSWER_FACT in prompt:
        return "So the answer is: Ada Vale", [-0.01, -0.02]
    if BRIDGE_FACT in prompt and "Vale Studio" not in so_far:
        return "Silver Harbour was made by Vale Studio.\nMore text.", [-0.05, -0.1]
    if BRIDGE_FACT in prompt:
        return "Someone founded Vale Studio.", [-0.1, -2.0]
    return "Silver Harbour was made by some studio.", [-2.0, -0.1]


def self_ask_rule(prompt: str) -> str:
    t = transcript(prompt)
    if ANSWER_FACT in t:
        return "Ada Vale.\nSo the final answer is: Ada Vale"
    if BRIDGE_FACT in t:
        return "Vale Studio.\nFollow up: Who founded Vale Studio?\nIntermediate answer: invented"
    return "Yes.\nFollow up: Which studio made Silver Harbour?\nIntermediate answer: invented"


def react_rule(prompt: str) -> str:
    t = transcript(prompt)
    if ANSWER_FACT in t:
        return "Thought: Ada Vale founded it.\nAction: Finish[Ada Vale]"
    if BRIDGE_FACT in t:
        return "Thought: now the founder.\nAction: Search[Vale Studio founder]\nObservation: invented"
    if "Tricky" in prompt and INVALID_ACTION not in t:
        return "Thought: let me think about it."
    return "Thought: I need the film's studio.\nAction: Search[Silver Harbour]"


def search_r1_rule(prompt: str) -> str:
    t = transcript(prompt)
    if ANSWER_FACT in t:
        return "<think>Ada Vale founded it.</think>\n<answer> Ada Vale </answer>"
    if BRIDGE_FACT in t:
        return (
            "<think>Now the founder.</think>\n<search> Vale Studio founder </search>\n\n<information>invented"
        )
    if "Tricky" in prompt and INVALID_NOTE not in t:
        return "<think>Let me think about it.</think>"
    return "<think>I need the film's studio.</think>\n<search> Silver Harbour </search>"


def r3rag_rule(prompt: str) -> str:
    index = len(re.findall(r"(?m)^Step \d+:", prompt)) + 1
    head = f"Step {index}:\nThe problem analysis: "
    if ANSWER_FACT in prompt:
        return head + "The studio was founded by Ada Vale.\nThe final answer: Ada Vale"
    if BRIDGE_FACT in prompt:
        return head + "The film was made by Vale Studio.\nThe retrieval query: Who founded Vale Studio?"
    return head + "I need the studio of the film.\nThe retrieval query: Which studio made Silver Harbour?"


RULES = {
    "cot": reasoning_rule,
    "rag-cot": reasoning_rule,
    "iter-retgen": reasoning_rule,
    "ircot": sentence_rule,
    "flare": sentence_rule,
    "self-ask": self_ask_rule,
    "react": react_rule,
    "search-r1": search_r1_rule,
    "r3rag": r3rag_rule,
}
TOP_K = {"cot": None, "rag-cot": 16}


def run(
    method: str, examples: list, max_steps: int = 5, **fields
) -> tuple[list[Trajectory], RuleGenerator, TriggerRetriever]:
    generator, retriever = RuleGenerator(RULES[method]), TriggerRetriever()
    config = EvalConfig(max_steps=max_steps, **fields)
    built = build_method(method, generator, retriever, config, TOP_K.get(method, 2))
    return built.run(examples), generator, retriever


# method -> (status, answer, step indices, searches, answer found at step)
EXPECTED = {
    "cot": ("answered", "Bob", [1], 0),
    "rag-cot": ("answered", "Vale Studio", [1], 1),
    "iter-retgen": ("answered", "Ada Vale", [1, 2, 3, 4, 5], 5),
    "ircot": ("answered", "Ada Vale", [0, 1, 2], 2),
    "flare": ("answered", "Ada Vale", [1, 2], 2),
    "self-ask": ("answered", "Ada Vale", [1, 2, 3], 2),
    "react": ("answered", "Ada Vale", [1, 2, 3], 2),
    "search-r1": ("answered", "Ada Vale", [1, 2, 3], 2),
    "r3rag": ("answered", "Ada Vale", [1, 2, 3], 2),
}


def test_every_method_has_an_expectation() -> None:
    assert set(EXPECTED) == set(METHODS) == set(RULES)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_takes_the_expected_steps(method: str) -> None:
    (trajectory,), generator, retriever = run(method, [example()])
    status, answer, indices, searches = EXPECTED[method]
    assert trajectory.status.value == status
    assert trajectory.final_answer == answer
    assert [s.index for s in trajectory.steps] == indices
    assert sum(len(queries) for queries, _ in retriever.calls) == searches
    assert trajectory.metadata["method"] == method
    assert trajectory.completion_tokens > 0 and trajectory.prompt_tokens > 0


def test_cot_needs_no_retriever() -> None:
    config = EvalConfig()
    (trajectory,) = build_method("cot", RuleGenerator(reasoning_rule), None, config, None).run([example()])
    assert trajectory.final_answer == "Bob"
    assert all(not s.passages for s in trajectory.steps)


def test_rag_cot_searches_the_question_for_rag_top_k_and_falls_back_to_a_direct_answer() -> None:
    (trajectory,), generator, retriever = run("rag-cot", [example()])
    assert retriever.calls == [([QUESTION], 16)]
    (step,) = trajectory.steps
    assert step.query == QUESTION and [p.id for p in step.passages] == ["film"]
    assert step.issues == [NO_ANSWER_LINE] and step.valid
    assert trajectory.metadata["direct_answer_fallbacks"] == 1
    assert (
        "Reply with the answer only" in generator.calls[1][0]
        and "Silver Harbour is a 1950 film" in generator.calls[1][0]
    )


def test_iter_retgen_queries_with_the_previous_generation() -> None:
    (trajectory,), _, retriever = run("iter-retgen", [example()], max_steps=2)
    assert [queries for queries, _ in retriever.calls] == [
        [QUESTION],
        [f"{QUESTION} Silver Harbour was made by Vale Studio."],
    ]
    assert [s.answer for s in trajectory.steps] == ["Vale Studio", "Ada Vale"]


def test_ircot_accumulates_new_documents_up_to_its_cap() -> None:
    (trajectory,), generator, _ = run("ircot", [example()])
    assert [[p.id for p in s.passages] for s in trajectory.steps] == [["film"], ["studio"], []]
    assert trajectory.steps[1].query == "Silver Harbour was made by Vale Studio."  # the first line only
    (capped,), generator, _ = run("ircot", [example()], ircot={"max_passages": 1})
    assert capped.status is TrajectoryStatus.OUT_OF_STEPS  # the studio passage never reaches the prompt
    assert all(STUDIO.text not in call[0] for call in generator.calls)


def test_flare_retrieves_only_for_unsure_sentences() -> None:
    (trajectory,), generator, retriever = run("flare", [example()])
    assert [q for queries, _ in retriever.calls for q in queries] == [
        "Silver Harbour was made by some studio.",
        "Someone founded Vale Studio.",
    ]
    assert trajectory.metadata["confidence"] == pytest.approx([0.1353, 0.1353], abs=1e-4)
    assert trajectory.steps[0].analysis == "Silver Harbour was made by Vale Studio."  # the re-generation
    # the look-ahead of step 2 sees the film passage retrieved at step 1
    assert FILM.text in generator.calls[2][0]

    (confident,), _, retriever = run("flare", [example()], flare={"threshold": 0.1})
    assert retriever.calls == [] and confident.status is TrajectoryStatus.OUT_OF_STEPS


def test_flare_without_token_probabilities_retrieves_every_step() -> None:
    def no_probabilities(prompt: str) -> str:
        return sentence_rule(prompt)[0]

    generator, retriever = RuleGenerator(no_probabilities), TriggerRetriever()
    method = build_method("flare", generator, retriever, EvalConfig(flare={"threshold": 0.0}), 2)
    (trajectory,) = method.run([example()])
    assert trajectory.metadata["confidence"] == [None, None]
    assert len(retriever.calls) == 2 and trajectory.final_answer == "Ada Vale"


def test_self_ask_shows_each_follow_up_with_its_documents() -> None:
    (trajectory,), generator, _ = run("self-ask", [example()])
    assert [s.query for s in trajectory.steps] == [
        "Which studio made Silver Harbour?",
        "Who founded Vale Studio?",
        None,
    ]
    assert [s.analysis for s in trajectory.steps] == ["Yes.", "Vale Studio.", "Ada Vale."]
    second = transcript(generator.calls[1][0])
    assert "Follow up: Which studio made Silver Harbour?\nDocuments:\n[1] Silver Harbour" in second
    assert second.endswith("Intermediate answer:")


def test_react_answers_an_invalid_action_and_goes_on() -> None:
    trajectories, generator, _ = run("react", [example(), example("q2", TRICKY)])
    tricky = trajectories[1]
    assert [s.valid for s in tricky.steps] == [False, True, True, True]
    assert tricky.steps[0].issues == [NO_ACTION]
    assert f"Observation 1: {INVALID_ACTION}" in generator.calls[1][1]
    assert tricky.final_answer == "Ada Vale"
    assert "Observation 1: [1] Silver Harbour" in generator.calls[1][0]


@pytest.mark.parametrize("method", METHODS)
def test_methods_batch_their_questions(method: str) -> None:
    _, one_generator, one_retriever = run(method, [example()])
    trajectories, generator, retriever = run(method, [example(f"q{i}") for i in range(3)])
    assert len(generator.calls) == len(one_generator.calls)
    assert len(retriever.calls) == len(one_retriever.calls)
    assert {t.final_answer for t in trajectories} == {EXPECTED[method][1]}


@pytest.mark.parametrize("method", METHODS)
def test_budget_curve_of_one_run_equals_runs_with_smaller_budgets(method: str) -> None:
    judge = CorrectnessJudge(JudgeConfig(correctness_llm=False))
    examples = [example(), example("q2", TRICKY)]
    full, _, _ = run(method, examples, max_steps=5)
    curves = score_trajectories(examples, full, judge, max_steps=5, gold="id")
    for budget in range(1, 6):
        alone, _, _ = run(method, examples, max_steps=budget)
        scores = score_trajectories(examples, alone, judge, max_steps=budget, gold="id")
        for curve, score in zip(curves, scores, strict=True):
            assert curve["budget_acc"][budget - 1] == score["acc"]
            assert curve["budget_em"][budget - 1] == score["em"]
            assert curve["budget_f1"][budget - 1] == score["f1"]
    if method not in ("cot", "rag-cot"):  # the iterative methods answer at some step > 1
        assert curves[0]["budget_acc"][0] == 0.0 and curves[0]["budget_acc"][-1] == 1.0
