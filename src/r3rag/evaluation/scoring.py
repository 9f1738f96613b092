"""Scores of each prediction at every step budget, and their aggregation into the numbers the report prints.

A prediction is scored once, when it is written: its final answer (EM, F1, cover-EM, Acc), the answer it had
at each step budget 1..max_steps (the answer counts at budget ``t`` only if it was given at a step ``<= t``,
as in the official ``cal_metric.py``), the gold passages it retrieved, and what it cost. The report only
averages these records, so a resumed run and an uninterrupted one give the same table.

Which EM is which: ``em`` here is plain SQuAD exact match of the raw final answer against every gold alias
(after normalisation). The paper's EM and F1 are computed after a 72B LLM has extracted a short answer from
the response, so they are more lenient; Acc (the judge) is the paper's Acc when an LLM judge is configured,
and exact match alone otherwise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from r3rag.gold import MatchRule
from r3rag.rewards.judges import CorrectnessItem, CorrectnessJudge, failed_judgement
from r3rag.rewards.metrics import cover_exact_match, exact_match, supporting_recall, token_f1
from r3rag.schema import QAExample, Step, Trajectory


def prediction_at(trajectory: Trajectory, budget: int) -> str | None:
    """The answer that counts at step budget ``budget``: the latest valid answer given at a step <= budget."""
    answer = None
    for step in trajectory.steps:
        if step.index <= budget and step.is_answer:
            answer = step.answer
    return answer


def retrieved(step: Step) -> bool:
    """Whether a step searched: it has a query and is valid (every valid query is searched), or it kept the
    passages of a search that happened before the step failed (FLARE's re-generation)."""
    return step.query is not None and (step.valid or bool(step.passages))


def score_trajectories(
    examples: Sequence[QAExample],
    trajectories: Sequence[Trajectory],
    judge: CorrectnessJudge,
    max_steps: int,
    gold: MatchRule | Sequence[MatchRule],
) -> list[dict[str, Any]]:
    """One score record per trajectory; the distinct answers of every budget go to the judge in one batch.
    ``judge_failed`` says whether a verdict it used fell back because the judge's calls failed (the runner
    then records the question as failed, to be run again, instead of writing the record).

    ``gold`` is how gold passages are recognised for gold recall (:func:`~r3rag.gold.resolve_gold_match`'s
    rule): one rule for every example, or one per example (a chunk may mix datasets).
    """
    if len(examples) != len(trajectories):
        raise ValueError(f"{len(trajectories)} trajectories for {len(examples)} examples")
    rules = [gold] * len(examples) if isinstance(gold, str) else list(gold)
    if len(rules) != len(examples):
        raise ValueError(f"{len(rules)} gold-matching rules for {len(examples)} examples")
    budgets = range(1, max_steps + 1)
    items: dict[CorrectnessItem, int] = {}
    for example, trajectory in zip(examples, trajectories, strict=True):
        for answer in {trajectory.final_answer, *(prediction_at(trajectory, t) for t in budgets)}:
            items.setdefault(CorrectnessItem(example.question, answer, tuple(example.answers)), len(items))
    verdicts = judge.judge_many(list(items))

    def acc(example: QAExample, answer: str | None) -> float:
        return float(
            verdicts[items[CorrectnessItem(example.question, answer, tuple(example.answers))]].correct
        )

    records = []
    for example, trajectory, rule in zip(examples, trajectories, rules, strict=True):
        answer = trajectory.final_answer
        at_budget = [prediction_at(trajectory, t) for t in budgets]
        used = [
            verdicts[items[CorrectnessItem(example.question, a, tuple(example.answers))]]
            for a in {answer, *at_budget}
        ]
        passages = [p for s in trajectory.steps for p in s.passages]
        recall = supporting_recall(passages, example.supporting_ids, example.supporting_titles, rule)
        verdict = verdicts[items[CorrectnessItem(example.question, answer, tuple(example.answers))]]
        records.append(
            {
                "prediction": answer,
                "status": trajectory.status.value,
                "em": exact_match(answer, example.answers),
                "f1": token_f1(answer, example.answers),
                "cover_em": cover_exact_match(answer, example.answers),
                "acc": float(verdict.correct),
                "judged_by": verdict.source,
                "budget_acc": [acc(example, a) for a in at_budget],
                "budget_em": [exact_match(a, example.answers) for a in at_budget],
                "budget_f1": [token_f1(a, example.answers) for a in at_budget],
                "steps": max((s.index for s in trajectory.steps), default=0),
                "retrievals": sum(retrieved(s) for s in trajectory.steps),
                "recall": recall,
                "prompt_tokens": trajectory.prompt_tokens,
                "completion_tokens": trajectory.completion_tokens,
                "judge_failed": any(failed_judgement(v) for v in used),
            }
        )
    return records


@dataclass(slots=True)
class Summary:
    """The averages of one (method, dataset, top-k) cell. Rates are fractions in [0, 1].

    ``tokens_per_correct`` is the paper's efficiency figure (Table 4): the mean number of generated tokens
    of the questions answered correctly (None when none was). ``recall`` is the mean share of gold
    supporting passages retrieved, over the questions that mark any; ``top_k`` is None, and so is
    ``recall``, for a method that does not retrieve.
    """

    method: str
    dataset: str
    top_k: int | None
    n: int
    acc: float
    f1: float
    em: float
    cover_em: float
    recall: float | None
    retrievals: float
    steps: float
    completion_tokens: float
    tokens_per_correct: float | None
    budget_acc: list[float]
    statuses: dict[str, int] = field(default_factory=dict)


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def summarize(records: Iterable[dict[str, Any]]) -> list[Summary]:
    """One Summary per (method, dataset, top_k) in the order first seen."""
    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record["dataset"], record["top_k"])].append(record)
    summaries = []
    for (method, dataset, top_k), group in groups.items():
        correct = [r["completion_tokens"] for r in group if r["acc"]]
        budgets = len(group[0]["budget_acc"])
        summaries.append(
            Summary(
                method=method,
                dataset=dataset,
                top_k=top_k,
                n=len(group),
                acc=fmean(r["acc"] for r in group),
                f1=fmean(r["f1"] for r in group),
                em=fmean(r["em"] for r in group),
                cover_em=fmean(r["cover_em"] for r in group),
                recall=None if top_k is None else _mean_or_none(r["recall"] for r in group),
                retrievals=fmean(r["retrievals"] for r in group),
                steps=fmean(r["steps"] for r in group),
                completion_tokens=fmean(r["completion_tokens"] for r in group),
                tokens_per_correct=fmean(correct) if correct else None,
                budget_acc=[fmean(r["budget_acc"][t] for r in group) for t in range(budgets)],
                statuses=dict(Counter(r["status"] for r in group)),
            )
        )
    return summaries
