"""ReAct: Thought, then ``Search[query]`` (the results are the next Observation) or ``Finish[answer]``."""

from __future__ import annotations

import re

from pydantic import Field

from r3rag.evaluation.methods.base import Action, BatchedMethod, MethodSettings, Row
from r3rag.evaluation.prompts import (
    INVALID_ACTION,
    ReActReply,
    ReActTurn,
    clean_answer,
    format_passages,
    parse_react,
    react_prompt,
    react_stop,
)
from r3rag.schema import Trajectory, TrajectoryStatus

NO_ACTION = "no Search[...] or Finish[...] action"
_ACTION_LINE = re.compile(r"(?i)action\s*\d*\s*:[ \t]*([^\n]*)")


class ReAct(BatchedMethod):
    """A turn without a readable action is answered with an "invalid action" observation and costs its step,
    as in ReAct's own loop; the trajectory goes on."""

    name = "react"
    title = "ReAct"
    position = 30

    class Settings(MethodSettings):
        """ReAct's own settings: its budget per turn."""

        max_new_tokens: int = Field(128, ge=1, description="Tokens per call (one turn).")

    @staticmethod
    def _turns(trajectory: Trajectory) -> list[ReActTurn]:
        turns = []
        for step in trajectory.steps:
            if step.query is not None:
                observation = format_passages(step.passages) or "(no documents found)"
                turns.append(ReActTurn(step.analysis, f"Search[{step.query}]", observation))
            else:
                written = _ACTION_LINE.search(step.raw)
                turns.append(
                    ReActTurn(step.analysis, written.group(1).strip() if written else "", INVALID_ACTION)
                )
        return turns

    def _run(self, rows: list[Row]) -> None:
        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            prompts = [react_prompt(r.example.question, self._turns(r.trajectory)) for r in open_rows]
            completions = self._generate(open_rows, prompts, f"{index}:act", stop=react_stop(index))
            actions = [_action(parse_react(completion.text)) for completion in completions]
            open_rows = self._take_actions(open_rows, completions, actions, index, NO_ACTION)
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS


def _action(reply: ReActReply) -> Action:
    """``Finish[answer]`` answers (cleaned of quotes and a final full stop), ``Search[query]`` searches."""
    if reply.kind == "finish":
        return Action("answer", reply.thought, clean_answer(reply.argument))
    if reply.kind == "search":
        return Action("search", reply.thought, reply.argument)
    return Action("none", reply.thought)
