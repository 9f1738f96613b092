"""Search-R1's tag protocol, so its released RL-trained checkpoints are evaluated in this harness.

Search-R1 (and the systems built on its rollout) trains a model to reason in ``<think> ... </think>``, to ask
a search engine with ``<search> query </search>``, to read the results the loop appends as
``"\\n\\n<information>{documents}</information>\\n\\n"``, and to end with ``<answer> ... </answer>``; each
document reads ``Doc i(Title: title) text``. Served through an OpenAI-compatible server (vLLM), such a
checkpoint runs here on the same retriever, top-k, step budget, decoding and scorer as R3-RAG.

One step is one generation, as for R3-RAG: it stops at ``</search>`` or ``</answer>``. A search step's
documents are shown after it in the next prompt; an answer ends the trajectory. A reply with no readable
action (no tag, an empty one, or one cut by the token budget) gets a note saying how to act, as Search-R1's
own loop answers an invalid action, and costs its step. When the budget runs out the trajectory ends
``out-of-steps``: Search-R1's loop allows one more answer-only turn after its last search, which would make
the last budget differ from the first steps of a longer run (see :mod:`~r3rag.evaluation.methods.base`).

What the Generator protocol cannot express, and how this differs from Search-R1's own loop:

- it takes chat conversations only, so every call is rendered through the model's chat template: a base
  checkpoint's prompt cannot be sent as raw text, and the server's template (with the shared system turn)
  decides how the prompt is wrapped;
- it cannot continue an assistant message, so, like every method here, each step is a new reply to one user
  turn rebuilt from the instruction, the question and the transcript so far (the model's earlier replies and
  the information blocks, exactly as the loop would have appended them), where Search-R1 appends to the text
  it is generating.

The instruction is our own wording of the protocol.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from r3rag.evaluation.methods.base import Action, BatchedMethod, MethodSettings, Row
from r3rag.schema import Passage, Trajectory, TrajectoryStatus

SEARCH_STOP = ("</search>", "</answer>")
NO_ACTION = "no <search> query or <answer>"
INVALID_NOTE = (
    "\nThat was not a valid action. To search, write the query between <search> and </search>; "
    "to answer, write the answer between <answer> and </answer>. Try again.\n"
)

_ACTION = re.compile(r"<(search|answer)>(.*?)(</\1>|$)", re.DOTALL)
_THINK_TAGS = re.compile(r"</?think>")


def instruction(question: str) -> str:
    """The first part of every prompt: the protocol in our words, then the question."""
    return (
        "Answer the question below. Each time you receive new information, reason about it first, between "
        "<think> and </think>. When you lack knowledge you need, search for it by writing a query between "
        "<search> and </search>; the top results will come back between <information> and </information>. "
        "Search as many times as you need. Once you know the answer, give it between <answer> and "
        "</answer>, with no explanation, for example <answer> Paris </answer>. "
        f"Question: {question}\n"
    )


def information(passages: Sequence[Passage]) -> str:
    """A search's results as the protocol appends them: numbered ``Doc i(Title: ...)`` lines in tags."""
    documents = "".join(f"Doc {n}(Title: {p.title}) {p.text}\n" for n, p in enumerate(passages, start=1))
    return f"\n\n<information>{documents}</information>\n\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply read: the action, its argument, the reasoning before it, and the reply up to the action's
    end (the closing tag included), which is what the transcript keeps."""

    kind: Literal["search", "answer", "none"]
    argument: str
    thought: str
    kept: str


def parse_reply(text: str, finish_reason: str = "stop") -> Reply:
    """The first ``<search>`` or ``<answer>`` of a reply. The stop string that ended the reply is not in
    ``text``, so an action may run to its end; one that the token budget cut (``finish_reason ==
    "length"``) or that is empty is no action. Never raises."""
    match = _ACTION.search(text)
    if match is None:
        return Reply("none", "", _thought(text), text)
    kind, argument, closed = match.group(1), match.group(2).strip(), match.group(3)
    thought = _thought(text[: match.start()])
    if not argument or (not closed and finish_reason == "length"):
        return Reply("none", "", thought, text)
    kept = text[: match.end(2)] + f"</{kind}>"
    return Reply("search" if kind == "search" else "answer", argument, thought, kept)


def _thought(text: str) -> str:
    return _THINK_TAGS.sub("", text).strip()


def transcript(trajectory: Trajectory) -> str:
    """What the model wrote and was shown so far: each search reply with its information block, each invalid
    reply with the note that answered it."""
    parts = []
    for step in trajectory.steps:
        if step.query is not None:
            parts.append(parse_reply(step.raw).kept + information(step.passages))
        else:
            parts.append(step.raw + INVALID_NOTE)
    return "".join(parts)


class SearchR1(BatchedMethod):
    """Search-R1's ``<search>`` / ``<information>`` / ``<answer>`` loop over the shared budget and top-k."""

    name = "search-r1"
    title = "Search-R1"
    position = 80
    by_default = False

    class Settings(MethodSettings):
        """Search-R1's own settings: its budget per turn (top-k and step budget are the shared ones)."""

        max_new_tokens: int = Field(
            500, ge=1, description="Tokens per turn (Search-R1's training scripts: max response length 500)."
        )

    def _run(self, rows: list[Row]) -> None:
        open_rows = rows
        for index in range(1, self.config.max_steps + 1):
            if not open_rows:
                break
            prompts = [instruction(r.example.question) + transcript(r.trajectory) for r in open_rows]
            completions = self._generate(open_rows, prompts, f"{index}:turn", stop=SEARCH_STOP)
            replies = [parse_reply(completion.text, completion.finish_reason) for completion in completions]
            actions = [Action(reply.kind, reply.thought, reply.argument) for reply in replies]
            open_rows = self._take_actions(open_rows, completions, actions, index, NO_ACTION)
        for row in open_rows:
            row.trajectory.status = TrajectoryStatus.OUT_OF_STEPS
