"""The judges' prompts and the strict parsers of their replies: the whole text contract with a judge LLM.

Each prompt asks for free reasoning first (judges are more accurate when they may think) and a fixed last
line. The parsers accept only that line, in a small set of harmless variants (case, surrounding spaces,
markdown emphasis, a final period); anything else is "unparseable" and the caller falls back and counts it.
If several such lines appear they must agree. Text written by the policy is flattened to one line and cut,
so it cannot forge a line of the prompt's structure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r3rag.llm.base import Conversation
from r3rag.schema import Passage

_MAX_ANSWER_CHARS = 1000
_MARKDOWN = str.maketrans("", "", "*`#_")
_VERDICT_LINE = re.compile(r"verdict\s*:\s*(correct|incorrect)\s*\.?", re.IGNORECASE)
_SCORE_LINE = re.compile(r"score\s*:\s*(\d+(?:\.\d+)?|\.\d+)\s*\.?", re.IGNORECASE)

_CORRECTNESS_SYSTEM = "You grade answers to quiz questions against an answer key. You are careful and terse."

_CORRECTNESS_USER = """\
Decide whether the candidate answer to the question gives the same answer as at least one of the reference \
answers.

Question: {question}
Reference answers (matching any one of them is enough):
{golds}
Candidate answer: {answer}

The candidate is correct if it names the same person, thing, place, date, number or yes/no as a reference \
answer, even in another form (an abbreviation, a full name for a surname, another date format) or with extra \
detail that is true. It is incorrect if it gives a different answer, offers several answers that disagree, \
only hedges, or says the answer cannot be found.

Give one short sentence of reasoning. Then write a last line that is exactly "Verdict: correct" or \
"Verdict: incorrect"."""

_RELEVANCE_SYSTEM = "You rate search results for a question-answering system. You are careful and terse."

_RELEVANCE_USER = """\
A system is answering the question below by searching a document collection one query at a time. Rate how \
useful the documents returned by one of its searches are for answering the question.

Question: {question}
{step}Documents returned by this search:
{documents}

Score 1.0 if the documents state a fact the answer depends on, such as the answer itself or a link in the \
chain of facts that leads to it. Score about 0.5 if they are about the right entity or topic but the needed \
fact is missing or only hinted at. Score 0.0 if they are unrelated to the question. Use one decimal place.

Give one short sentence of reasoning. Then write a last line of the form "Score: <number between 0 and 1>"."""

_RELEVANCE_STEP = "What the system was looking for: {analysis}\nIts search query: {query}\n"


def _one_line(text: str, limit: int | None = _MAX_ANSWER_CHARS) -> str:
    return " ".join(text.split())[:limit]


def correctness_prompt(question: str, answer: str, golds: Sequence[str]) -> Conversation:
    """The conversation asking whether ``answer`` matches any of ``golds`` (every alias is shown)."""
    gold_lines = "\n".join(f"- {_one_line(g)}" for g in golds)
    user = _CORRECTNESS_USER.format(question=_one_line(question), golds=gold_lines, answer=_one_line(answer))
    return [{"role": "system", "content": _CORRECTNESS_SYSTEM}, {"role": "user", "content": user}]


def relevance_prompt(
    question: str,
    passages: Sequence[Passage],
    analysis: str | None = None,
    query: str | None = None,
    max_doc_chars: int | None = None,
) -> Conversation:
    """The conversation asking how useful one step's documents are; the step's analysis and query are shown
    only when given (the official judge sees them, the paper's does not)."""
    documents = "\n".join(
        f"[{i}] {_one_line(f'{p.title}: {p.text}', max_doc_chars)}" for i, p in enumerate(passages, start=1)
    )
    step = ""
    if analysis is not None or query is not None:
        step = _RELEVANCE_STEP.format(analysis=_one_line(analysis or ""), query=_one_line(query or ""))
    user = _RELEVANCE_USER.format(question=_one_line(question), step=step, documents=documents)
    return [{"role": "system", "content": _RELEVANCE_SYSTEM}, {"role": "user", "content": user}]


def _final_values(text: str, pattern: re.Pattern[str]) -> set[str]:
    """The values of every line that is exactly ``pattern`` (after dropping markdown emphasis)."""
    values = set()
    for line in text.splitlines():
        match = pattern.fullmatch(line.translate(_MARKDOWN).strip())
        if match:
            values.add(match.group(1).lower())
    return values


def parse_verdict(text: str) -> bool | None:
    """True / False from a ``Verdict: correct|incorrect`` line; None if there is none or they disagree."""
    values = _final_values(text, _VERDICT_LINE)
    return values == {"correct"} if len(values) == 1 else None


def parse_score(text: str) -> float | None:
    """The number on a ``Score: x`` line, unclamped; None if there is none or several that disagree."""
    values = {float(v) for v in _final_values(text, _SCORE_LINE)}
    return values.pop() if len(values) == 1 else None
