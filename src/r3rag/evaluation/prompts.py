"""The baselines' prompts and the parsers of their replies: our own wording, one small format per method.

Every prompt is a single user turn rebuilt at each step (the question, the documents, the transcript so far),
after the same system turn R3-RAG gets, so all methods see their context the same way and any chat model
renders it through its own template. The formats are the methods' own, kept plain so that a model that was
never trained on them can follow them from the instruction and, for Self-Ask and ReAct, one worked example
about invented entities (so the example cannot leak an answer):

- CoT, RAG with CoT, ITER-RETGEN: free reasoning that ends with ``So the answer is: <short answer>``;
  when that line is missing, one more call asks for the short answer alone (the official baselines fall
  back to a direct-answer prompt the same way).
- IRCoT and FLARE: one reasoning sentence per call (one per line), the last one ``So the answer is: ...``.
- Self-Ask: ``Follow up:`` / ``Intermediate answer:`` / ``So the final answer is:``.
- ReAct: ``Thought k:`` / ``Action k: Search[query]`` or ``Finish[answer]`` / ``Observation k:``.

Parsers never raise: a reply they cannot read gives ``None`` and the method records why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from r3rag.schema import Passage

ANSWER_LINE = "So the answer is:"
FINAL_ANSWER_LINE = "So the final answer is:"

_SHORT_ANSWER = "a short phrase (a name, a date, a number, yes or no), not a sentence"
_ANSWER_MARKER = r"\b(?:so\s+)?the\s+(?:final\s+)?answer\s+is\s*:?"
_ANSWER = re.compile(rf"(?i){_ANSWER_MARKER}[ \t]*([^\n]*)")
_REPEATED_MARKER = re.compile(rf"(?i){_ANSWER_MARKER}")
_FOLLOW_UP = re.compile(r"(?i)follow[ -]?up\s*:[ \t]*([^\n]*)")
_ACTION = re.compile(r"(?i)action\s*\d*\s*:\s*(search|finish)\s*\[([^\]\n]*)\]?")
_THOUGHT = re.compile(r"(?i)thought\s*\d*\s*:\s*")
_ACTION_START = re.compile(r"(?i)\n?\s*action\s*\d*\s*:")

# One invented worked example for Self-Ask and ReAct (no real entity, so no answer can leak from it).
_EXAMPLE_QUESTION = "Which river flows through the capital of the country where the Orvane Glacier is?"
_SELF_ASK_EXAMPLE = f"""Question: {_EXAMPLE_QUESTION}
Are follow up questions needed here: Yes.
Follow up: In which country is the Orvane Glacier?
Intermediate answer: The Orvane Glacier is in Norlund.
Follow up: What is the capital of Norlund?
Intermediate answer: The capital of Norlund is Veskar.
Follow up: Which river flows through Veskar?
Intermediate answer: The Tamm river flows through Veskar.
{FINAL_ANSWER_LINE} Tamm"""
_REACT_EXAMPLE = f"""Question: {_EXAMPLE_QUESTION}
Thought 1: I need the country of the Orvane Glacier first.
Action 1: Search[Orvane Glacier]
Observation 1: [1] Orvane Glacier
The Orvane Glacier is a glacier in northern Norlund.
Thought 2: It is in Norlund. Now I need the capital of Norlund and its river.
Action 2: Search[capital of Norlund]
Observation 2: [1] Norlund
Norlund is a country whose capital, Veskar, lies on the Tamm river.
Thought 3: The capital Veskar lies on the Tamm river.
Action 3: Finish[Tamm]"""


def format_passages(passages: Sequence[Passage]) -> str:
    """Documents as numbered FlashRAG ``contents`` blocks (title line, then text)."""
    return "\n".join(f"[{n}] {p.title}\n{p.text}" for n, p in enumerate(passages, start=1))


def _documents_block(passages: Sequence[Passage]) -> str:
    return f"Documents:\n{format_passages(passages)}\n\n" if passages else ""


def clean_answer(text: str) -> str:
    """A short answer without the decoration models add: quotes, markdown bold, a final full stop."""
    previous = None
    while text != previous:  # "**Paris**." and "'Paris.'" both need more than one pass
        previous = text
        text = text.strip().strip("*`\"'").strip().removesuffix(".")
    return text


def extract_answer(text: str) -> str | None:
    """The text after the first ``(So) the (final) answer is:`` up to the end of its line; None if absent."""
    match = _ANSWER.search(text)
    if match is None:
        return None
    answer = clean_answer(_REPEATED_MARKER.sub(" ", match.group(1)))  # "answer is: So the answer is: X"
    return answer or None


def first_line(text: str) -> str:
    """The first non-empty line: a model asked for one sentence may still start with a blank line."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def reasoning_prompt(question: str, passages: Sequence[Passage] = ()) -> str:
    """CoT (no documents), RAG with CoT and each ITER-RETGEN iteration (with documents)."""
    source = "Use the documents below. " if passages else ""
    return (
        f"Answer the question. {source}Think step by step in a few sentences, then give the answer on a last "
        f'line of the form "{ANSWER_LINE} <answer>", where <answer> is {_SHORT_ANSWER}.\n\n'
        f"{_documents_block(passages)}Question: {question}"
    )


def direct_answer_prompt(question: str, passages: Sequence[Passage] = ()) -> str:
    """The fallback when a reasoning reply has no answer line: ask for the short answer alone."""
    return (
        f"{_documents_block(passages)}Question: {question}\n"
        f"Reply with the answer only: {_SHORT_ANSWER}. No explanation."
    )


def next_sentence_prompt(question: str, passages: Sequence[Passage], sentences: Sequence[str]) -> str:
    """IRCoT and FLARE: the reasoning so far, one sentence per line; ask for the next line only."""
    so_far = "\n".join(sentences) if sentences else "(nothing yet)"
    return (
        "Answer the question by reasoning one sentence per line, each sentence building on the documents "
        f'and the lines before it. When you know the answer, write a last line "{ANSWER_LINE} <answer>", '
        f"where <answer> is {_SHORT_ANSWER}.\n\n"
        f"{_documents_block(passages)}Question: {question}\n"
        f"Reasoning so far:\n{so_far}\n\nWrite the next line only."
    )


@dataclass(frozen=True, slots=True)
class SelfAskTurn:
    """One earlier Self-Ask turn: what the model wrote before its follow-up, the follow-up, its documents."""

    lead: str
    follow_up: str
    passages: Sequence[Passage]


def self_ask_prompt(question: str, turns: Sequence[SelfAskTurn]) -> str:
    """The Self-Ask transcript so far; the model continues it up to its next follow-up or final answer."""
    transcript = f"Question: {question}\nAre follow up questions needed here:"
    for turn in turns:
        transcript += (
            f" {turn.lead}\nFollow up: {turn.follow_up}\n"
            f"Documents:\n{format_passages(turn.passages) or '(no documents found)'}\nIntermediate answer:"
        )
    return (
        "Answer the question by asking yourself simpler follow-up questions. Documents found for each "
        "follow-up are shown after it; read them, write the intermediate answer, then ask the next "
        f'follow-up, or end with "{FINAL_ANSWER_LINE} <answer>", where <answer> is {_SHORT_ANSWER}.\n\n'
        f"Example:\n{_SELF_ASK_EXAMPLE}\n\n"
        "Continue the transcript below. Write only the next lines, up to and including the next "
        f'"Follow up:" question or the final answer.\n\n{transcript}'
    )


SELF_ASK_STOP = ("Intermediate answer:", "\nDocuments:", "\nQuestion:")


@dataclass(frozen=True, slots=True)
class SelfAskReply:
    """A parsed Self-Ask continuation: the text before the decision, then a follow-up or a final answer."""

    lead: str
    follow_up: str | None = None
    answer: str | None = None


def parse_self_ask(text: str) -> SelfAskReply | None:
    """Whichever comes first, a final answer or a follow-up question; None when there is neither."""
    answer, follow_up = _ANSWER.search(text), _FOLLOW_UP.search(text)
    decision = min((m for m in (answer, follow_up) if m is not None), key=lambda m: m.start(), default=None)
    if decision is None:
        return None
    lead = " ".join(text[: decision.start()].split())
    value = decision.group(1).strip()
    if not value:
        return None
    if decision is answer:
        return SelfAskReply(lead, answer=clean_answer(value))
    return SelfAskReply(lead, follow_up=value)


@dataclass(frozen=True, slots=True)
class ReActTurn:
    """One earlier ReAct turn: the thought, the action as written, and what it observed."""

    thought: str
    action: str
    observation: str


def react_prompt(question: str, turns: Sequence[ReActTurn]) -> str:
    """The ReAct transcript so far; the model writes the next Thought and Action."""
    transcript = "".join(
        f"Thought {n}: {t.thought}\nAction {n}: {t.action}\nObservation {n}: {t.observation}\n"
        for n, t in enumerate(turns, start=1)
    )
    return (
        "Answer the question by alternating Thought, Action and Observation. A Thought reasons about what "
        "you know and what is missing. An Action is one of:\n"
        "Search[query]: search the documents; the results come back as the next Observation.\n"
        f"Finish[answer]: give the final answer, {_SHORT_ANSWER}.\n\n"
        f"Example:\n{_REACT_EXAMPLE}\n\n"
        "Continue below: write the next Thought and Action only.\n\n"
        f"Question: {question}\n{transcript}"
    )


def react_stop(step: int) -> tuple[str, ...]:
    return ("\nObservation", f"Observation {step}:", "\nQuestion:")


@dataclass(frozen=True, slots=True)
class ReActReply:
    """A parsed ReAct turn; ``kind`` is ``search`` or ``finish``, or None when no action could be read."""

    thought: str
    kind: str | None
    argument: str


def parse_react(text: str) -> ReActReply:
    """The thought (text before the action, without its ``Thought k:`` label) and the first action."""
    action = _ACTION.search(text)
    before = text[: action.start()] if action else text
    thought = " ".join(_THOUGHT.sub("", _ACTION_START.split(before, maxsplit=1)[0], count=1).split())
    if action is None or not action.group(2).strip():
        return ReActReply(thought, None, "")
    return ReActReply(thought, action.group(1).lower(), action.group(2).strip())


INVALID_ACTION = "Invalid action. Write Search[query] or Finish[answer]."
