"""The reason-retrieve loop: a batch of questions worked through step by step by a policy and a retriever.

All open questions advance together. Each step is one batched ``generate`` call for the questions still
open (plus one per re-generation round, for the steps that came back malformed) and one batched ``search``
call for the steps that asked for documents, so throughput grows with the batch instead of being paid per
question as in the official code's rollout. The loop knows nothing of the backend or the retriever beyond
their protocols, nor of rewards or trainers: a PPO trainer, the evaluation runner or a veRL adapter wrap it.

A question ends when its step gives a final answer (``answered``), when a step stays malformed after the
allowed re-generations (``format-error``; a backend error counts as one, with the message in
``metadata["errors"]``), or when the step budget runs out (``out-of-steps``; optionally one more turn asks
for the final answer, and a valid one makes the trajectory ``answered`` with ``metadata["forced_answer"]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from r3rag.config import AgentConfig
from r3rag.llm.base import Completion, Conversation, Generator, SamplingParams
from r3rag.retrieval.base import Retriever
from r3rag.runs import derive_seed
from r3rag.schema import Passage, QAExample, Step, Trajectory, TrajectoryStatus
from r3rag.steps import build_messages, parse_step

StepCallback = Callable[[Trajectory, Step], None]
"""Called once per finished step (after its retrieval), in batch order; ``r3rag ask`` prints with it."""

FORCED_NOT_ANSWER = "the forced final step did not give a final answer"


@dataclass(slots=True)
class _Row:
    """One question in flight."""

    position: int
    trajectory: Trajectory
    temperature: float
    occurrence: int  # earlier rows with the same example id (an RL rollout repeats each question)
    seen: set[str] = field(default_factory=set)


class Agent:
    """Runs questions through ``generator`` (the policy) and ``retriever``, as :class:`AgentConfig` says."""

    def __init__(self, generator: Generator, retriever: Retriever, config: AgentConfig | None = None):
        self.generator = generator
        self.retriever = retriever
        self.config = config or AgentConfig()

    def run(
        self,
        examples: Sequence[QAExample],
        temperatures: Sequence[float] | None = None,
        on_step: StepCallback | None = None,
    ) -> list[Trajectory]:
        """One trajectory per example, in order.

        ``temperatures`` gives each example its own sampling temperature (an RL rollout repeats each question
        at 0.1/0.4/0.7/1.0); by default all use ``config.temperature``.
        """
        if temperatures is not None and len(temperatures) != len(examples):
            raise ValueError(f"{len(temperatures)} temperatures for {len(examples)} examples")
        occurrences: Counter[str] = Counter()
        rows = []
        for n, ex in enumerate(examples):
            temperature = self.config.temperature if temperatures is None else float(temperatures[n])
            trajectory = Trajectory(example_id=ex.id, question=ex.question)
            trajectory.metadata.update(temperature=temperature, regenerations=0)
            if self.config.record_token_ids:
                trajectory.metadata["step_token_ids"] = []
            rows.append(_Row(n, trajectory, temperature, occurrence=occurrences[ex.id]))
            occurrences[ex.id] += 1

        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            if not open_rows:
                break
            open_rows = self._advance(open_rows, index, on_step)
        if open_rows and self.config.force_answer:
            self._force_answers(open_rows, self.config.max_steps + 1, on_step)
        else:
            for row in open_rows:
                row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS
        return [row.trajectory for row in rows]

    def _advance(self, rows: list[_Row], index: int, on_step: StepCallback | None) -> list[_Row]:
        """Generate step ``index`` for the open rows, retrieve for the queries; return the rows still open."""
        retrieving = []
        for row, step in zip(rows, self._generate_steps(rows, index, forced=False), strict=True):
            row.trajectory.steps.append(step)
            if not step.valid:
                row.trajectory.status = TrajectoryStatus.FORMAT_ERROR
            elif step.is_answer:
                row.trajectory.status = TrajectoryStatus.ANSWERED
                row.trajectory.final_answer = step.answer
            else:
                retrieving.append(row)
        if retrieving:
            self._retrieve(retrieving)
        if on_step is not None:
            for row in rows:
                on_step(row.trajectory, row.trajectory.steps[-1])
        return retrieving

    def _force_answers(self, rows: list[_Row], index: int, on_step: StepCallback | None) -> None:
        for row, step in zip(rows, self._generate_steps(rows, index, forced=True), strict=True):
            trajectory = row.trajectory
            trajectory.metadata["forced_answer"] = step.valid
            if step.valid:
                trajectory.steps.append(step)
                trajectory.status = TrajectoryStatus.ANSWERED
                trajectory.final_answer = step.answer
                if on_step is not None:
                    on_step(trajectory, step)
            else:
                trajectory.status = TrajectoryStatus.OUT_OF_STEPS
                trajectory.metadata["forced_answer_raw"] = step.raw

    def _generate_steps(self, rows: list[_Row], index: int, forced: bool) -> list[Step]:
        """Step ``index`` for each row: one batched call, then re-generation rounds for the malformed ones.

        A row that is still malformed after the last round gets its last attempt (``valid=False``).
        """
        steps: dict[int, Step] = {}
        accepted: dict[int, Completion] = {}
        pending = rows
        for attempt in range(self.config.max_format_retries + 1):
            completions = self.generator.generate(
                [self._messages(row, forced) for row in pending],
                [self._sampling(row, index, attempt) for row in pending],
            )
            malformed = []
            for row, completion in zip(pending, completions, strict=True):
                row.trajectory.prompt_tokens += completion.prompt_tokens
                row.trajectory.completion_tokens += completion.completion_tokens
                step = self._to_step(completion, index, forced, row.trajectory)
                steps[row.position], accepted[row.position] = step, completion
                if not step.valid:
                    malformed.append(row)
            if not malformed or attempt == self.config.max_format_retries:
                break
            for row in malformed:
                row.trajectory.metadata["regenerations"] += 1
            pending = malformed
        if self.config.record_token_ids:
            for row in rows:
                if not forced or steps[row.position].valid:
                    row.trajectory.metadata["step_token_ids"].append(
                        {
                            "prompt": accepted[row.position].prompt_token_ids,
                            "completion": accepted[row.position].completion_token_ids,
                        }
                    )
        return [steps[row.position] for row in rows]

    @staticmethod
    def _to_step(completion: Completion, index: int, forced: bool, trajectory: Trajectory) -> Step:
        if completion.finish_reason == "error":
            trajectory.metadata.setdefault("errors", []).append(
                completion.error or "unknown generation error"
            )
            return Step(index=index, valid=False, issues=[f"generation error: {completion.error}"])
        step = parse_step(completion.text, expected_index=index)
        if forced and step.valid and not step.is_answer:
            step.valid = False
            step.issues.append(FORCED_NOT_ANSWER)
        return step

    def _messages(self, row: _Row, forced: bool) -> Conversation:
        c = self.config
        messages = build_messages(
            row.trajectory.question, row.trajectory.steps, c.system_prompt, c.max_doc_chars
        )
        if forced:  # the step format itself has no "answer now" turn; the instruction rides on the user turn
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n{c.force_answer_prompt}"}
        return messages

    def _sampling(self, row: _Row, index: int, attempt: int) -> SamplingParams:
        c = self.config
        temperature = row.temperature if attempt == 0 else max(row.temperature, c.retry_temperature)
        return SamplingParams(
            temperature=temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            stop=(*c.stop, f"\nStep {index + 1}:"),
            seed=None if c.seed is None else _row_seed(c.seed, row, index, attempt),
        )

    def _retrieve(self, rows: list[_Row]) -> None:
        """One batched search for every retrieval step; fills ``step.passages`` with unseen passages.

        With deduplication the search asks for ``top_k`` plus as many passages as the most-read trajectory has
        seen, so that ``top_k`` new ones remain even if all the seen ones come back first.
        """
        c = self.config
        extra = max(len(row.seen) for row in rows) if c.dedup_passages else 0
        queries = [row.trajectory.steps[-1].query or "" for row in rows]
        for row, hits in zip(rows, self.retriever.search(queries, c.top_k + extra), strict=True):
            chosen = select_passages(hits, row.seen, c.top_k, c.dedup_passages)
            row.seen |= {p.id for p in chosen}
            row.trajectory.steps[-1].passages = chosen


def select_passages(hits: Sequence[Passage], seen: set[str], k: int, dedup: bool) -> list[Passage]:
    """What a retrieval step keeps of a ranking: the first ``k`` distinct hits, minus those already ``seen``
    in the trajectory when ``dedup``. The oracle teacher retrieves through this too, so its trajectories
    hold exactly the documents the agent would have put in front of the policy."""
    chosen: list[Passage] = []
    ids: set[str] = set()
    for passage in hits:
        if passage.id in ids or (dedup and passage.id in seen):
            continue
        chosen.append(passage)
        ids.add(passage.id)
        if len(chosen) == k:
            break
    return chosen


def _row_seed(seed: int, row: _Row, index: int, attempt: int) -> int:
    """A seed per (run seed, example, repeat, step, attempt): different for every retry, and the same whatever
    else is in the batch, so a question samples the same trajectory at batch size 1 and 32."""
    return derive_seed(seed, row.trajectory.example_id, row.occurrence, index, attempt)
