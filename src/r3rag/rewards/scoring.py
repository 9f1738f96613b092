"""From finished trajectories to per-step rewards: the judges in two batches, then the shaping arithmetic.

This is the one place that decides what each judge sees: the correctness judge gets the final answer with
every gold alias, and the relevance judge gets, for each valid retrieval step, only the passages that step
newly retrieved (a passage fetched again later is not credited twice, as in the official rollout, which
deduplicates across the trajectory). The search bonuses of ours are computed here too: with
``RewardConfig.gold_recall``, each retrieval step's share of the question's gold passages that it reached
first, under the run's gold-matching rule; with ``RewardConfig.bridge_queries``, each retrieval step's share
of the question's bridge entities that its query named first. An RL trainer or a veRL adapter calls
:meth:`TrajectoryScorer.score` once per rollout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from r3rag.config import RewardConfig
from r3rag.gold import GoldSet, MatchRule
from r3rag.rewards.judges import CorrectnessItem, CorrectnessJudge, RelevanceItem, RelevanceJudge
from r3rag.rewards.metrics import normalize_answer
from r3rag.rewards.shaping import TrajectoryReward, shape_rewards
from r3rag.schema import Passage, QAExample, Trajectory, TrajectoryStatus


def relevance_items(example: QAExample, trajectory: Trajectory) -> list[RelevanceItem]:
    """One item per valid retrieval step, in order, holding the passages no earlier step retrieved."""
    seen: set[str] = set()
    items = []
    for step in trajectory.steps:
        if not step.is_retrieval:
            continue
        new: list[Passage] = []
        for passage in step.passages:
            if passage.id not in seen:
                seen.add(passage.id)
                new.append(passage)
        items.append(RelevanceItem(example, step, tuple(new)))
    return items


def gold_recall_gains(example: QAExample, trajectory: Trajectory, rule: MatchRule) -> list[float]:
    """For each valid retrieval step, in order: the share of the example's gold supporting passages that
    step retrieved and no earlier step had; they add up to the trajectory's recall of the gold passages."""
    gold = GoldSet.of(example.supporting_ids, example.supporting_titles, rule)
    if not gold:
        raise ValueError(
            f"reward.gold_recall needs gold supporting passages: example {example.id!r} names none"
        )
    reached: set[str] = set()
    gains = []
    for step in trajectory.steps:
        if not step.is_retrieval:
            continue
        new = {gold.key(p) for p in step.passages if p in gold} - reached
        reached |= new
        gains.append(len(new) / len(gold))
    return gains


def gold_hops(example: QAExample) -> int:
    """The question's number of gold hops: the length of its gold decomposition (0 without one)."""
    return len(example.decomposition)


def check_bonus_annotations(config: RewardConfig, sources: Mapping[str, Sequence[QAExample]]) -> None:
    """Fail before any rollout, naming the file and the question, when the reward needs gold annotation a
    question lacks (gold passages for ``gold_recall``, a decomposition for ``bridge_queries`` and for
    ``scale`` "hops"); scoring would otherwise stop the run at the first rollout that samples it."""
    for source, examples in sources.items():
        for example in examples:
            if config.gold_recall and not (example.supporting_ids or example.supporting_titles):
                missing, field = "gold supporting passages", "gold_recall"
            elif config.bridge_queries and not example.decomposition:
                missing, field = "gold decomposition", "bridge_queries"
            elif config.scale == "hops" and not gold_hops(example):
                missing, field = "gold decomposition", "scale 'hops'"
            else:
                continue
            raise ValueError(
                f"{source}: question {example.id!r} has no {missing}, which reward.{field} needs"
            )


def names_entity(text: str, entity: str) -> bool:
    """Whether normalised ``text`` contains the normalised ``entity`` as whole words."""
    return f" {entity} " in f" {text} "


def bridge_entities(example: QAExample) -> list[str]:
    """The answers of the example's gold hops that a later hop asks about (by name, or as MuSiQue's ``#k``),
    normalised, in hop order: the entities a chain passes through. A comparison's compared values, the last
    hop's answer and anything the question itself names are not bridges."""
    if not example.decomposition:
        raise ValueError(f"reward.bridge_queries needs a gold decomposition: example {example.id!r} has none")
    question = normalize_answer(example.question)
    hops = example.decomposition
    bridges: list[str] = []
    for k, hop in enumerate(hops[:-1], start=1):
        entity = normalize_answer(hop.answer)
        if not entity or entity in bridges or names_entity(question, entity):
            continue
        reference = re.compile(rf"#{k}(?!\d)")
        later = hops[k:]
        if any(
            reference.search(h.question) or names_entity(normalize_answer(h.question), entity) for h in later
        ):
            bridges.append(entity)
    return bridges


def bridge_query_gains(example: QAExample, trajectory: Trajectory) -> list[float]:
    """For each valid retrieval step, in order: the share of the example's bridge entities its query names
    and no earlier query did (all zero for a question without bridges); they add up to the share of the
    chain the trajectory searched its way along."""
    bridges = bridge_entities(example)
    named: set[str] = set()
    gains = []
    for step in trajectory.steps:
        if not step.is_retrieval:
            continue
        query = normalize_answer(step.query or "")
        new = {b for b in bridges if names_entity(query, b)} - named
        named |= new
        gains.append(len(new) / len(bridges) if bridges else 0.0)
    return gains


def _final_answer(trajectory: Trajectory) -> str | None:
    if trajectory.final_answer is not None:
        return trajectory.final_answer
    return trajectory.steps[-1].answer if trajectory.steps else None


class TrajectoryScorer:
    """The hybrid reward for a batch of trajectories, each paired with the example it answers.

    A relevance judge is needed unless the reward is outcome-only, which asks for no relevance at all;
    ``gold_match``, the rule :func:`~r3rag.gold.resolve_gold_match` decided for the training questions and
    the index, is needed when the reward pays ``gold_recall``.
    """

    def __init__(
        self,
        config: RewardConfig,
        correctness: CorrectnessJudge,
        relevance: RelevanceJudge | None = None,
        gold_match: MatchRule | None = None,
    ) -> None:
        if relevance is None and config.mode != "outcome":
            raise ValueError(f"reward mode {config.mode!r} needs a relevance judge")
        if config.gold_recall and gold_match is None:
            raise ValueError(
                "reward.gold_recall needs the gold-matching rule (id or title): "
                "pass r3rag.gold.resolve_gold_match(...).rule as gold_match"
            )
        self.config = config
        self.correctness = correctness
        self.relevance = relevance
        self.gold_match = gold_match

    def score(
        self, examples: Sequence[QAExample], trajectories: Sequence[Trajectory]
    ) -> list[TrajectoryReward]:
        """Rewards for ``trajectories[i]`` answering ``examples[i]``."""
        if len(examples) != len(trajectories):
            raise ValueError(f"{len(examples)} examples for {len(trajectories)} trajectories")
        for example, trajectory in zip(examples, trajectories, strict=True):
            if example.id != trajectory.example_id:
                raise ValueError(
                    f"trajectory of {trajectory.example_id!r} paired with example {example.id!r}"
                )

        answered = [i for i, t in enumerate(trajectories) if t.status == TrajectoryStatus.ANSWERED]
        verdicts = self.correctness.judge_many(
            [
                CorrectnessItem(
                    examples[i].question, _final_answer(trajectories[i]), tuple(examples[i].answers)
                )
                for i in answered
            ]
        )
        correct: list[bool | None] = [None] * len(trajectories)
        for i, verdict in zip(answered, verdicts, strict=True):
            correct[i] = verdict.correct

        per_trajectory = [relevance_items(ex, t) for ex, t in zip(examples, trajectories, strict=True)]
        relevances: list[list[float] | None] = [None] * len(trajectories)
        if self.relevance is not None and self.config.mode != "outcome":
            flat = self.relevance.score_many([item for items in per_trajectory for item in items])
            start = 0
            for i, items in enumerate(per_trajectory):
                relevances[i] = flat[start : start + len(items)]
                start += len(items)

        bonuses: list[list[float] | None] = [None] * len(trajectories)
        if self.config.pays_search_bonus:
            pairs = zip(examples, trajectories, strict=True)
            bonuses = [self.search_bonuses(ex, t) for ex, t in pairs]

        return [
            shape_rewards(t, correct[i], relevances[i], self.config, bonuses[i], gold_hops(examples[i]))
            for i, t in enumerate(trajectories)
        ]

    def search_bonuses(self, example: QAExample, trajectory: Trajectory) -> list[float]:
        """Each valid retrieval step's bonus beyond Rel, weighted: gold_recall x its gold-recall gain +
        bridge_queries x its bridge-query gain (zeros when neither is paid)."""
        retrievals = sum(step.is_retrieval for step in trajectory.steps)
        total = [0.0] * retrievals
        parts: list[tuple[float, list[float]]] = []
        if self.config.gold_recall and self.gold_match is not None:
            parts.append((self.config.gold_recall, gold_recall_gains(example, trajectory, self.gold_match)))
        if self.config.bridge_queries:
            parts.append((self.config.bridge_queries, bridge_query_gains(example, trajectory)))
        for weight, gains in parts:
            total = [t + weight * g for t, g in zip(total, gains, strict=True)]
        return total

    def stats(self) -> dict[str, int]:
        """Both judges' counters, prefixed, for one metrics log line."""
        out = {f"correctness/{k}": v for k, v in self.correctness.stats.as_dict().items()}
        if self.relevance is not None:
            out.update({f"relevance/{k}": v for k, v in self.relevance.stats.as_dict().items()})
        return out
