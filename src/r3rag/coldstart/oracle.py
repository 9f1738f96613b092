"""The oracle teacher: expert trajectories from gold decompositions, searched with the real retriever.

No LLM is needed, which is what makes the cold start work offline. For each question the oracle follows
its gold chain (:mod:`~r3rag.coldstart.plans`): one step per hop, whose analysis says what the documents
so far established and what to look up next, and whose query is the hop's sub-question. The query goes to
the real retriever, through the same passage selection the agent uses (top-k, skipping passages seen
earlier in the trajectory), and the documents are cut to what the policy will see (``max_doc_chars``).

A hop counts as found only if a gold passage of the hop came back and the sentence stating its answer is in
the visible part; the analysis then quotes that sentence. So the data never teaches answering from a
document the model did not see. When a search misses, the next step says why (another entity, a namesake,
the right entity without the fact) and searches again with a reformulated query; a trajectory is kept only
if every hop is eventually found within the step budget. The last step states the facts, compares them
for a comparison question, and gives the gold answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from r3rag.agent import select_passages
from r3rag.coldstart.phrasing import Fact, Phraser, evidence_sentence, reformulations
from r3rag.coldstart.plans import Hop, Plan, PlanError, plan_for
from r3rag.coldstart.records import Attempt, TeacherResult
from r3rag.config import ColdStartConfig
from r3rag.gold import GoldMatch, GoldSet, MatchRule
from r3rag.retrieval.base import Retriever
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.sentences import split_sentences
from r3rag.steps import format_documents

REJECTED = "rejected"


@dataclass(slots=True)
class _Document:
    """A retrieved passage as the policy sees it: ``visible`` is the part of its contents left after the
    step's documents were cut to ``max_doc_chars``; ``position`` is its 1-based rank in the step."""

    passage: Passage
    visible: str
    step: int
    position: int


class _Rejected(Exception):
    """The oracle could not write a trajectory the policy could follow; the message says why."""


class OracleTeacher:
    """Writes trajectories from gold chains; see the module docstring. ``gold`` says how a hop's gold
    passages are recognised among the retrieved ones: :func:`~r3rag.gold.resolve_gold_match` over the
    questions and this retriever."""

    label = "oracle"

    def __init__(self, retriever: Retriever, config: ColdStartConfig, gold: GoldMatch):
        self.retriever = retriever
        self.config = config
        self.gold = gold
        self.max_steps = config.teacher_max_steps or config.agent.max_steps

    def solve(self, examples: Sequence[QAExample]) -> Iterator[TeacherResult]:
        for example in examples:
            yield self.solve_one(example)

    def solve_one(self, example: QAExample) -> TeacherResult:
        walk = _Walk(self, example, random.Random(f"{self.config.oracle.seed}:{example.id}"))
        try:
            trajectory = walk.run()
        except (PlanError, _Rejected) as e:
            partial = walk.trajectory(TrajectoryStatus.OUT_OF_STEPS, None)
            attempt = Attempt(0, None, REJECTED, None, str(e), partial)
            return TeacherResult(example, self.label, None, [attempt])
        attempt = Attempt(0, None, trajectory.status.value, trajectory.final_answer, "")
        return TeacherResult(example, self.label, trajectory, [attempt])

    def search(self, query: str, seen: set[str]) -> list[Passage]:
        """One retrieval step exactly as the agent does it."""
        agent = self.config.agent
        extra = len(seen) if agent.dedup_passages else 0
        (hits,) = self.retriever.search([query], agent.top_k + extra)
        return select_passages(hits, seen, agent.top_k, agent.dedup_passages)


class _Walk:
    """One question's trajectory, built hop by hop."""

    def __init__(self, teacher: OracleTeacher, example: QAExample, rng: random.Random):
        self.teacher, self.example, self.rng = teacher, example, rng
        self.phraser = Phraser(rng)
        self.steps: list[Step] = []
        self.seen: set[str] = set()
        self.documents: list[_Document] = []
        self.report: list[str] = []  # what the next analysis says about the documents so far
        self.facts: dict[int, Fact] = {}
        self.counts = {"searches": 0, "reformulations": 0, "known_hops": 0}

    def run(self) -> Trajectory:
        plan = plan_for(self.example)
        oracle = self.teacher.config.oracle
        for i, hop in enumerate(plan.hops):
            hints = [plan.hops[i + 1].subject] if i + 1 < len(plan.hops) else []
            if oracle.skip_found_hops and self.steps:
                fact = _locate(hop, self.documents, hints, self.teacher.gold.rule)
                if fact is not None:
                    self.facts[i] = fact
                    self.report.append(self.phraser.found(fact, known=True))
                    self.counts["known_hops"] += 1
                    continue
            previous = plan.hops[i - 1] if i else None
            queries = [hop.query, *reformulations(hop, previous, self.rng)][: oracle.max_queries_per_hop]
            for attempt, query in enumerate(queries):
                intent = self._intent(plan, i, hop) if attempt == 0 else self.phraser.retry()
                found = self._search(hop, query, intent, hints)
                self.counts["reformulations"] += attempt > 0
                if found is not None:
                    self.facts[i] = found
                    self.report.append(self.phraser.found(found))
                    break
            else:
                raise _Rejected(f"hop {i + 1} ({hop.query!r}) not found in {len(queries)} searches")
        final = Step(
            index=len(self.steps) + 1,
            analysis=" ".join([*self.report, self.phraser.conclusion(plan, self.facts)]),
            answer=plan.answer,
        )
        self.steps.append(final)
        return self.trajectory(TrajectoryStatus.ANSWERED, plan.answer)

    def _intent(self, plan: Plan, index: int, hop: Hop) -> str:
        return self.phraser.opening(plan, hop) if not self.steps else self.phraser.next(plan, index, hop)

    def _search(self, hop: Hop, query: str, intent: str, hints: list[str]) -> Fact | None:
        """Write a retrieval step, run it, and return the hop's fact if its documents show it."""
        if len(self.steps) + 2 > self.teacher.max_steps:  # this step and the final answer
            raise _Rejected(f"needs more than {self.teacher.max_steps} steps")
        step = Step(index=len(self.steps) + 1, analysis=" ".join([*self.report, intent]), query=query)
        step.passages = self.teacher.search(query, self.seen)
        self.steps.append(step)
        self.seen |= {p.id for p in step.passages}
        self.counts["searches"] += 1
        documents = _visible(step, self.teacher.config.agent.max_doc_chars)
        self.documents += documents
        self.report = []
        fact = _locate(hop, documents, hints, self.teacher.gold.rule)
        if fact is None:
            self.report.append(self.phraser.miss(hop, [d.passage.title for d in documents]))
        return fact

    def trajectory(self, status: TrajectoryStatus, answer: str | None) -> Trajectory:
        return Trajectory(
            example_id=self.example.id,
            question=self.example.question,
            steps=list(self.steps),
            final_answer=answer,
            status=status,
            metadata={
                "teacher": OracleTeacher.label,
                **self.counts,
                "evidence": [self.facts[i].to_dict() for i in sorted(self.facts)],
            },
        )


def _visible(step: Step, max_chars: int | None) -> list[_Document]:
    """Each passage of a step with the part of it the policy sees once the documents are joined and cut."""
    shown = format_documents(step.passages, max_chars)
    out, start = [], 0
    for position, passage in enumerate(step.passages, start=1):
        contents = passage.contents
        out.append(_Document(passage, shown[start : start + len(contents)], step.index, position))
        start += len(contents) + 1
    return out


def _locate(hop: Hop, documents: Sequence[_Document], hints: Sequence[str], rule: MatchRule) -> Fact | None:
    """The hop's fact, if one of the documents is a gold passage of the hop and shows it.

    The passage must be one of the hop's gold passages, recognised by ``rule`` (ids, else titles; or
    titles); a hop with no gold passages accepts any passage stating the answer. The quoted sentence must be
    visible: the sentence holding the answer; when the dataset gives no answer for the hop, a sentence
    naming the next hop's entity (or the first one); when the answer is stated only indirectly, the whole
    passage.
    """
    gold = GoldSet.of(hop.supporting_ids, hop.supporting_titles, rule)
    for doc in documents:
        passage = doc.passage
        if gold and passage not in gold:
            continue
        text = passage.text
        if not hop.answer:
            sentence = evidence_sentence(text, "", hints) or next(iter(split_sentences(text)), None)
            if sentence and sentence in doc.visible:
                return Fact(hop, doc.step, passage.id, passage.title, doc.position, sentence)
            continue
        if hop.answer.lower() in text.lower():
            sentence = evidence_sentence(text, hop.answer)
            if sentence and sentence in doc.visible:
                return Fact(hop, doc.step, passage.id, passage.title, doc.position, sentence)
            continue
        if gold and len(doc.visible) == len(passage.contents):
            return Fact(hop, doc.step, passage.id, passage.title, doc.position, None)
    return None
