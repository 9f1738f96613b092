"""Gold decompositions -> hop plans the oracle teacher can search for, one natural query per hop.

Each dataset writes its gold chain differently: the synthetic world as natural sub-questions; MuSiQue as
``"Ken Epp >> member of political party"`` / ``"federal leader of #1"`` (``#k`` is the answer of hop k);
2WikiMultiHopQA as evidence triples, kept by the loader as ``"subject >> relation"`` hops; HotpotQA only as
supporting facts (two titles, no sub-questions). A :class:`Plan` is the common form: the hops in search
order, each with a query a person could have written, the passages that state its answer, and the entity it
is about (which reformulations keep); plus, for comparison questions, which two hops hold the values the
final step compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from r3rag.schema import QAExample

COMPARISON_TYPES = frozenset({"comparison", "bridge_comparison"})

_REFERENCE = re.compile(r"#(\d+)")
_FUNCTION_WORDS = frozenset(
    re.findall(
        r"\w+",
        "a an the of in on at to for by with and or is was were are be been do does did what which who whom "
        "whose when where why how many much that this these those as from its it his her their than more "
        "most first later earlier same",
    )
)
_WHEN_RELATION = re.compile(r"\b(date|year|inception|founded|established|published|released|dissolved)\b")
_WHERE_RELATION = re.compile(r"\b(place|location|located|headquarters|country|city|residence|born in)\b")
_WHO_RELATION = re.compile(
    r"\b(director|father|mother|spouse|child|sibling|performer|author|founder|founded by|creator|composer|"
    r"producer|screenwriter|editor|leader|owner|owned by|member|head|chairperson|employer|student|teacher)\b"
)


class PlanError(ValueError):
    """The example has no gold chain the oracle can follow; the message says what is missing."""


@dataclass(slots=True)
class Hop:
    """One fact to find. ``answer`` is empty when the dataset does not state the hop's answer (HotpotQA's
    bridge hop); ``subject`` is the entity the hop asks about (empty when unknown); ``relation`` is the
    relation as the source names it (``"date of birth"``), or empty for a natural-language sub-question."""

    query: str
    answer: str
    supporting_ids: list[str]
    supporting_titles: list[str]
    subject: str = ""
    relation: str = ""


@dataclass(slots=True)
class Plan:
    """The hops in search order and what the final step does with them.

    ``compared`` names the two entities a comparison question is about, ``compare_hops`` the two hops
    whose answers are compared, and ``second_start`` the first hop about the second entity; all are None
    for a chain, whose answer is the last hop's.
    """

    hops: list[Hop]
    answer: str
    compared: tuple[str, str] | None = None
    compare_hops: tuple[int, int] | None = None
    second_start: int | None = None


def plan_for(example: QAExample) -> Plan:
    """The hop plan of an example with a gold decomposition (or HotpotQA supporting facts)."""
    if not example.answers or not example.answers[0].strip():
        raise PlanError(f"{example.id}: no gold answer")
    if example.decomposition:
        plan = _from_decomposition(example)
    elif example.supporting_titles:
        plan = _from_supporting_titles(example)
    else:
        raise PlanError(f"{example.id}: no decomposition and no supporting titles")
    for n, hop in enumerate(plan.hops, start=1):
        if not hop.supporting_ids and not hop.answer:
            raise PlanError(f"{example.id}: hop {n} has neither supporting passages nor an answer to check")
    return plan


def _from_decomposition(example: QAExample) -> Plan:
    hops: list[Hop] = []
    for n, sub in enumerate(example.decomposition, start=1):
        text = _resolve_references(sub.question, hops, example.id, n)
        subject, relation = "", ""
        if ">>" in text:
            subject, _, relation = (part.strip() for part in text.partition(">>"))
            if not subject or not relation:
                raise PlanError(f"{example.id}: hop {n} {sub.question!r} is not 'subject >> relation'")
            query = relation_question(subject, relation)
        else:
            query = _as_question(text)
            subject = next((t for t in sub.supporting_titles if t and t.lower() in text.lower()), "")
        hops.append(
            Hop(
                query=query,
                answer=sub.answer.strip(),
                supporting_ids=list(sub.supporting_ids),
                supporting_titles=list(sub.supporting_titles),
                subject=subject,
                relation=relation,
            )
        )
    return Plan(hops=hops, answer=example.answers[0].strip(), **_comparison(example, hops))


def _comparison(example: QAExample, hops: list[Hop]) -> dict[str, Any]:
    """Which hops a comparison compares: the world lists one chain then the other; 2Wiki lists both first
    hops, then both second hops, so in both layouts the compared values are at known places."""
    if example.type not in COMPARISON_TYPES or len(hops) < 2 or len(hops) % 2:
        return {}
    start = len(hops) // 2 if example.dataset == "world" else 1
    leaves = (start - 1, len(hops) - 1) if example.dataset == "world" else (len(hops) - 2, len(hops) - 1)
    first, second = hops[0], hops[start]
    names = (first.subject or _title(first), second.subject or _title(second))
    return {"compared": names, "compare_hops": leaves, "second_start": start}


def _from_supporting_titles(example: QAExample) -> Plan:
    """HotpotQA: one hop per supporting title, searched by the title with the question's other words.

    For a bridge question the title the question names comes first and the bridge entity second; for a
    comparison both are named and compared. Only the last hop of a bridge has a known answer.
    """
    titles = list(dict.fromkeys(example.supporting_titles))
    ids = dict(zip(example.supporting_titles, example.supporting_ids, strict=False))
    if len(titles) != len(example.supporting_ids):
        ids = {}  # ids cannot be paired with titles: check hops by answer text instead
    question = example.question.lower()
    titles.sort(key=lambda t: 0 if _core(t).lower() in question else 1)
    keywords = _keywords(example.question)
    comparison = example.type in COMPARISON_TYPES
    hops = []
    for n, title in enumerate(titles):
        extra = [w for w in keywords if w.lower() not in title.lower()][:5]
        last = n == len(titles) - 1
        hops.append(
            Hop(
                query=" ".join([_core(title), *extra]),
                answer=example.answers[0].strip() if last and not comparison else "",
                supporting_ids=[ids[title]] if title in ids else [],
                supporting_titles=[title],
                subject=_core(title),
            )
        )
    if comparison and len(hops) == 2:
        return Plan(hops, example.answers[0].strip(), (hops[0].subject, hops[1].subject), (0, 1), 1)
    return Plan(hops, example.answers[0].strip())


def _resolve_references(text: str, earlier: list[Hop], example_id: str, n: int) -> str:
    """Replace ``#k`` with the answer of hop k (MuSiQue's notation)."""

    def answer(match: re.Match[str]) -> str:
        k = int(match.group(1))
        if not 1 <= k < n or not earlier[k - 1].answer:
            raise PlanError(f"{example_id}: hop {n} refers to #{k}, which has no earlier answer")
        return earlier[k - 1].answer

    return _REFERENCE.sub(answer, text)


def relation_question(subject: str, relation: str) -> str:
    """``("Ken Epp", "member of political party")`` -> ``"What is the member of political party of Ken
    Epp?"``, with Who/When/Where chosen from the relation's words."""
    words = relation.strip().rstrip("?")
    lowered = words.lower()
    if _WHEN_RELATION.search(lowered):
        return f"What is the {words} of {subject}?"
    if _WHO_RELATION.search(lowered):
        return f"Who is the {words} of {subject}?"
    if _WHERE_RELATION.search(lowered):
        return f"Where is the {words} of {subject}?"
    return f"What is the {words} of {subject}?"


def _as_question(text: str) -> str:
    """A sub-question as a query: capitalised, ending in a question mark (MuSiQue writes them lower case)."""
    text = " ".join(text.split()).rstrip(" ?")
    return text[:1].upper() + text[1:] + "?"


def _core(title: str) -> str:
    """A Wikipedia title without its disambiguation: ``"Silver Star (Amtrak train)"`` -> ``"Silver Star"``."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip() or title


def _title(hop: Hop) -> str:
    return _core(hop.supporting_titles[0]) if hop.supporting_titles else ""


def _keywords(question: str) -> list[str]:
    """Content words of a question, in order: what a keyword query keeps."""
    words = re.findall(r"[\w'-]+", question)
    return list(dict.fromkeys(w for w in words if w.lower() not in _FUNCTION_WORDS and len(w) > 1))
