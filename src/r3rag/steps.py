"""The step format: the one contract between the policy, the teacher, the trainer and the evaluation.

R3-RAG's plain-text schema (paper Fig. 2, official code). One assistant turn is one step::

    Step 2:
    The problem analysis: <reasoning over everything so far>
    The retrieval query: <one query>            (or)    The final answer: <answer>

The policy always sees a single user turn holding the question and every earlier step, each retrieval step
followed by the documents it fetched (FlashRAG ``contents``: title line, then text)::

    The question: <question>
    Step 1:
    The problem analysis: ...
    The retrieval query: ...
    The retrieval documents: <title>\\n<text>\\n<title>\\n<text>

Rendering goes through the tokenizer's own chat template, so any chat model gets its own special tokens.
Parsing never raises: whatever a model writes becomes a :class:`~r3rag.schema.Step`, with ``valid`` and a
list of ``issues`` saying what was wrong. Unlike the official parser, a query is kept whole (it is not cut
at its first ``?``), step numbers of any width are read, and repeated or conflicting markers are reported
instead of silently resolved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from r3rag.schema import Passage, Step

QUESTION_PREFIX = "The question:"
ANALYSIS = "The problem analysis:"
QUERY = "The retrieval query:"
ANSWER = "The final answer:"
DOCUMENTS = "The retrieval documents:"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Issues the parser reports. The first group makes a step invalid; the second is only reported, unless the
# caller parses strictly.
MISSING_ANALYSIS = "missing 'The problem analysis:'"
EMPTY_ANALYSIS = "empty problem analysis"
MISSING_DECISION = "no 'The retrieval query:' or 'The final answer:' after the analysis"
EMPTY_QUERY = "empty retrieval query"
EMPTY_ANSWER = "empty final answer"
MISSING_HEADER = "missing 'Step k:' header"
WRONG_NUMBER = "step number {got}, expected {expected}"
BOTH_DECISIONS = "both a retrieval query and a final answer; the first one is used"
REPEATED_MARKER = "'{marker}' appears more than once"
TRAILING_TEXT = "text after the step"
STRAY_TEXT = "other text between the analysis and the query or answer"
FATAL_ISSUES = frozenset({MISSING_ANALYSIS, EMPTY_ANALYSIS, MISSING_DECISION, EMPTY_QUERY, EMPTY_ANSWER})

# The header is a line of its own start ("... as in step 4: ..." inside a sentence is prose), after optional
# indentation or markdown emphasis ("### Step 2:", "**Step 2:**"). A marker, a new step header at the start of
# a line, or a markdown rule ends a field. Horizontal whitespace only (never \s*) so that scanning stays
# linear on adversarial runs of whitespace.
_HEADER = re.compile(r"(?im)^[ \t#*>]*step[ \t]*(\d{1,9})[ \t]*:")
_FIELD_END = re.compile(
    r"(?i)the problem analysis:|the retrieval query:|the final answer:|the retrieval documents:"
    r"|\n[ \t]*step[ \t]*\d+[ \t]*:|###"
)
_MARKERS = {name: re.compile(re.escape(name), re.IGNORECASE) for name in (ANALYSIS, QUERY, ANSWER, DOCUMENTS)}


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that rendering needs."""

    chat_template: str | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def format_step(step: Step) -> str:
    """The assistant text of a step: what the policy writes, and the SFT target."""
    decision = f"{QUERY} {step.query}" if step.query is not None else f"{ANSWER} {step.answer or ''}"
    return f"Step {step.index}:\n{ANALYSIS} {step.analysis}\n{decision}"


def format_documents(passages: Sequence[Passage], max_chars: int | None = None) -> str:
    """The documents of one step as the policy sees them: ``contents`` joined by newlines, optionally cut.

    ``max_chars`` bounds the whole joined string of the step, as the official RL code does with 512.
    """
    joined = "\n".join(p.contents for p in passages)
    return joined if max_chars is None else joined[:max_chars]


def render_context(question: str, steps: Sequence[Step], max_doc_chars: int | None = None) -> str:
    """The single user turn: the question, then every earlier step with the documents it retrieved."""
    parts = [f"{QUESTION_PREFIX} {question}"]
    for step in steps:
        parts.append(format_step(step))
        if step.query is not None:
            parts.append(f"{DOCUMENTS} {format_documents(step.passages, max_doc_chars)}")
    return "\n".join(parts)


def build_messages(
    question: str,
    steps: Sequence[Step] = (),
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_doc_chars: int | None = None,
) -> list[dict[str, str]]:
    """The chat messages that ask the policy for its next step."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": render_context(question, steps, max_doc_chars)})
    return messages


def render_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, str]]) -> str:
    """Messages -> the prompt string, through the tokenizer's own chat template (never a hand-written one)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template; use an instruct/chat model or set "
            "tokenizer.chat_template before rendering R3-RAG prompts"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _clean(field: str) -> str:
    """Strip whitespace, markdown '#', and the literal backslash-n the official corpus appends."""
    field = field.strip()
    while field.endswith("\\n"):
        field = field[:-2].rstrip()
    return field.strip("#").strip()


def parse_step(text: str, expected_index: int | None = None, strict: bool = False) -> Step:
    """Parse one model output into a Step. Never raises.

    The analysis is the text after the first ``The problem analysis:``; whichever of ``The retrieval query:``
    and ``The final answer:`` comes first after it decides the step, and its field runs to the next marker,
    the next ``Step k:`` line, or the end. With ``strict``, any issue at all (a missing header, a second
    decision, text after the step) makes the step invalid; otherwise only a missing or empty field does.
    """
    issues: list[str] = []
    step = Step(index=expected_index or 0, raw=text)

    analysis_match = _MARKERS[ANALYSIS].search(text)
    header = _HEADER.search(text, 0, analysis_match.start() if analysis_match else len(text))
    if header is None:
        issues.append(MISSING_HEADER)
    else:
        step.index = int(header.group(1))
        if expected_index is not None and step.index != expected_index:
            issues.append(WRONG_NUMBER.format(got=step.index, expected=expected_index))

    if analysis_match is None:
        return _finish(step, [*issues, MISSING_ANALYSIS], strict)

    after_analysis = analysis_match.end()
    query_match = _MARKERS[QUERY].search(text, after_analysis)
    answer_match = _MARKERS[ANSWER].search(text, after_analysis)
    decisions = [m for m in (query_match, answer_match) if m is not None]
    if not decisions:
        step.analysis = _clean(_field(text, after_analysis)[0])
        return _finish(step, [*issues, MISSING_DECISION], strict)
    decision = min(decisions, key=lambda m: m.start())
    if len(decisions) == 2:
        issues.append(BOTH_DECISIONS)

    analysis, analysis_end = _field(text, after_analysis)
    step.analysis = _clean(analysis)
    if text[analysis_end : decision.start()].strip():
        issues.append(STRAY_TEXT)
    if not step.analysis:
        issues.append(EMPTY_ANALYSIS)
    value, end = _field(text, decision.end())
    value = _clean(value)
    if decision is query_match:
        step.query = value
        if not value:
            issues.append(EMPTY_QUERY)
    else:
        step.answer = value
        if not value:
            issues.append(EMPTY_ANSWER)

    for name, pattern in _MARKERS.items():
        if len(pattern.findall(text)) > 1:
            issues.append(REPEATED_MARKER.format(marker=name))
    if text[end:].strip():
        issues.append(TRAILING_TEXT)
    return _finish(step, issues, strict)


def _field(text: str, start: int) -> tuple[str, int]:
    """The text from ``start`` to the next field end, and where it ends."""
    end_match = _FIELD_END.search(text, start)
    end = end_match.start() if end_match else len(text)
    return text[start:end], end


def _finish(step: Step, issues: list[str], strict: bool) -> Step:
    step.issues = issues
    step.valid = not issues if strict else not FATAL_ISSUES.intersection(issues)
    return step
