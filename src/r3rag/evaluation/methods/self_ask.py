"""Self-Ask: the model asks itself follow-up questions, each searched, until it states the final answer."""

from __future__ import annotations

from pydantic import Field

from r3rag.evaluation.methods.base import BatchedMethod, MethodSettings, Row
from r3rag.evaluation.prompts import SELF_ASK_STOP, SelfAskTurn, parse_self_ask, self_ask_prompt
from r3rag.schema import Step, Trajectory, TrajectoryStatus

NO_DECISION = "no follow-up question or final answer"


class SelfAsk(BatchedMethod):
    """Each follow-up question is searched and its documents shown; the model writes the intermediate answer
    and the next follow-up, until ``So the final answer is:``."""

    name = "self-ask"
    title = "Self-Ask"
    position = 40

    class Settings(MethodSettings):
        """Self-Ask's own settings: its budget per turn."""

        max_new_tokens: int = Field(128, ge=1, description="Tokens per call (one turn).")

    @staticmethod
    def _turns(trajectory: Trajectory) -> list[SelfAskTurn]:
        return [SelfAskTurn(s.analysis, s.query, s.passages) for s in trajectory.steps if s.query is not None]

    def _run(self, rows: list[Row]) -> None:
        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            prompts = [self_ask_prompt(r.example.question, self._turns(r.trajectory)) for r in open_rows]
            retrieving = []
            for row, completion in zip(
                open_rows, self._generate(open_rows, prompts, f"{index}:ask", stop=SELF_ASK_STOP), strict=True
            ):
                reply = parse_self_ask(completion.text)
                if reply is None:
                    self._failed(row, index, completion.text, NO_DECISION)
                elif reply.answer is not None:
                    self._answered(
                        row, Step(index=index, analysis=reply.lead, answer=reply.answer, raw=completion.text)
                    )
                else:
                    row.trajectory.steps.append(
                        Step(index=index, analysis=reply.lead, query=reply.follow_up, raw=completion.text)
                    )
                    retrieving.append(row)
            self._search_last_queries(retrieving)
            open_rows = retrieving
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS
