"""The oracle teacher's words: the analysis text of each step, and reformulated queries after a miss.

A policy fine-tuned on one template learns the template, not the behaviour (measured on this project: a
model trained on two question templates kept the format on new ones but answered none), so every part of an
analysis has several phrasings, picked by a seeded random stream per question. The parts are the ones a
careful person would write: the plan (step 1), what the last documents established, quoting the sentence
that states it, or why they missed (another entity, a namesake, the right entity without the fact), what to
look up next, and, at the end, how the facts combine into the answer (comparisons compare the two values).

Reformulations are what the synthetic world is built to need: relations are phrased several ways in its
passages, names repeat, and a person's facts are spread over several passages with the same title. A
reformulated query keeps the entity and swaps the relation's words for other wordings, or adds what the
chain already says about the entity (the role that brought us to it: a film's director is a film director).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from r3rag.coldstart.plans import Hop, Plan
from r3rag.sentences import split_sentences

_YEAR = re.compile(r"\b(\d{3,4})\b")
_NTH = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")

# -- analysis parts: {q} a sub-question, {x} an entity, {a}/{b} the compared entities, {s} a quoted sentence,
#    {t} a passage title, {ans} an answer, {nth} the document's position in the step's results.
OPEN_CHAIN = (
    "The question links several facts, so I will find them one at a time. First: {q}",
    "I need to break the question into simpler questions. The first one is: {q}",
    "This takes more than one search. I will start with the innermost fact: {q}",
    "Let me work from the inside out. First I need to know: {q}",
    'The first fact I need is the answer to "{q}"',
    "To answer this I first have to find out: {q}",
)
OPEN_COMPARE = (
    "The question compares {a} and {b}, so I need the same fact about each. I will start with {a}: {q}",
    "To compare {a} with {b}, I will look them up one after the other. First: {q}",
    "I need information on both {a} and {b}. Starting with {a}: {q}",
    "This is a comparison of {a} and {b}. First I will search for {a}: {q}",
)
NEXT = (
    "Next I need to find out: {q}",
    "The next question is: {q}",
    "Now I can move on to the next fact: {q}",
    "With that known, the next thing to look up is: {q}",
    'Now I need the answer to "{q}"',
)
NEXT_OTHER = (
    "Now the same for {b}: {q}",
    "Next, {b}: {q}",
    "I still need the corresponding fact for {b}: {q}",
    "That settles {a}. Now {b}: {q}",
)
FOUND = (
    'The passage on {t} says: "{s}" So the answer to "{q}" is {ans}.',
    'According to the documents, "{s}" This answers "{q}": {ans}.',
    'The {nth} document answers it: "{s}" So it is {ans}.',
    'From the documents about {t}: "{s}" That gives {ans}.',
    'I found what I needed: "{s}" Hence the answer is {ans}.',
    '"{s}" ({t}). So "{q}" is answered by {ans}.',
)
FOUND_NO_ANSWER = (
    'The passage on {t} says: "{s}"',
    'According to the documents, "{s}"',
    'The {nth} document is the relevant one: "{s}"',
)
FOUND_NO_SENTENCE = (
    'The passage on {t} gives the answer to "{q}": {ans}.',
    'The documents answer "{q}": {ans}.',
)
KNOWN = (
    'An earlier document already answers "{q}": "{s}" So it is {ans}.',
    'I do not need to search for "{q}": the passage on {t} I already have says "{s}" That gives {ans}.',
    'The documents from before already say "{s}", which answers "{q}": {ans}.',
)
MISS_OTHER_ENTITY = (
    'The results are about {titles}, not {x}, so they do not answer "{q}".',
    "None of these documents is about {x}: they cover {titles}.",
    "These passages concern {titles} rather than {x}.",
)
MISS_NAMESAKE = (
    'The passage is about {near}, whose name only resembles {x}; it does not answer "{q}".',
    'Careful: {near} is not {x}. The documents do not answer "{q}" yet.',
    '{near} is a different entry from {x}, so I still need "{q}".',
)
MISS_FACT = (
    'The passages on {x} do not say anything that answers "{q}".',
    'I got documents about {x}, but none of them answers "{q}".',
    'These documents mention {x} without answering "{q}".',
    'The answer to "{q}" is not in these passages about {x}.',
)
MISS_GENERIC = ('None of these documents answers "{q}".', 'The documents do not answer "{q}" yet.')
MISS_EMPTY = ("The search brought back no new documents.", "That search found nothing I had not seen.")
RETRY = (
    "Let me search again with different words.",
    "I will rephrase the query.",
    "I will try another query.",
    "A search worded differently may find it.",
    "Let me try a more specific query.",
)
CONCLUDE = (
    "So the answer to the question is {ans}.",
    "That completes the chain: the answer is {ans}.",
    "This answers the original question: {ans}.",
    "Putting the steps together, the answer is {ans}.",
    "Therefore the answer is {ans}.",
)
COMPARE_VALUES = (
    "So {a} has {va} and {b} has {vb}.",
    "To sum up: {a}: {va}; {b}: {vb}.",
    "{a} gives {va}, while {b} gives {vb}.",
)
COMPARE_VALUES_BRIDGED = (
    "So {a} leads to {la}, with {va}, and {b} leads to {lb}, with {vb}.",
    "To sum up: {a} -> {la}: {va}; {b} -> {lb}: {vb}.",
)
EARLIER = ("{va} is earlier than {vb}.", "{va} comes before {vb}.")
LATER = ("{va} is later than {vb}.", "{va} comes after {vb}.")
SAME = ("The two are the same.", "Both are the same.")
DIFFERENT = ("The two are different.", "They are not the same.")
CONCLUDE_COMPARE = ("So the answer is {ans}.", "Hence the answer is {ans}.", "The answer is therefore {ans}.")
CONCLUDE_COMPARE_UNSTATED = (
    "Comparing what the documents say about {a} and {b}, the answer is {ans}.",
    "Putting the two together, the answer is {ans}.",
)


@dataclass(slots=True)
class Fact:
    """Where a hop's answer was read: the step whose documents held it, the passage (id, title, 1-based
    position among that step's results), and the sentence that states it (None when no single sentence
    contains the answer)."""

    hop: Hop
    step: int
    passage_id: str
    title: str
    position: int
    sentence: str | None

    def to_dict(self) -> dict[str, object]:
        return {"step": self.step, "passage_id": self.passage_id, "sentence": self.sentence}


def evidence_sentence(text: str, answer: str, hints: Sequence[str] = ()) -> str | None:
    """The first sentence of ``text`` containing the answer, else one containing a hint (the next hop's
    entity, for a bridge whose answer the dataset does not give), else None."""
    sentences = split_sentences(text)
    for needle in ([answer] if answer else []) + [h for h in hints if h]:
        for sentence in sentences:
            if needle.lower() in sentence.lower():
                return sentence
    return None


class Phraser:
    """Picks one phrasing of each analysis part from a per-question random stream."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def _pick(self, options: Sequence[str], **fill: str) -> str:
        return self.rng.choice(options).format(**fill)

    def opening(self, plan: Plan, hop: Hop) -> str:
        if plan.compared is not None:
            a, b = plan.compared
            return self._pick(OPEN_COMPARE, a=a, b=b, q=hop.query)
        return self._pick(OPEN_CHAIN, q=hop.query)

    def next(self, plan: Plan, index: int, hop: Hop) -> str:
        if plan.compared is not None and index == plan.second_start:
            a, b = plan.compared
            return self._pick(NEXT_OTHER, a=a, b=b, q=hop.query)
        return self._pick(NEXT, q=hop.query)

    def found(self, fact: Fact, known: bool = False) -> str:
        hop = fact.hop
        nth = _NTH[fact.position - 1] if fact.position <= len(_NTH) else f"number {fact.position}"
        fill = {"q": hop.query, "t": fact.title, "ans": hop.answer, "nth": nth}
        if fact.sentence is None:
            return self._pick(FOUND_NO_SENTENCE, **fill)
        fill["s"] = fact.sentence
        if not hop.answer:
            return self._pick(FOUND_NO_ANSWER, **fill)
        return self._pick(KNOWN if known else FOUND, **fill)

    def miss(self, hop: Hop, titles: Sequence[str]) -> str:
        """Why the last search missed, judged from what came back: nothing new, another entity (a namesake
        if its name is close), or the right entity without the fact."""
        if not titles:
            return self._pick(MISS_EMPTY)
        x = hop.subject
        if not x:
            return self._pick(MISS_GENERIC, q=hop.query)
        distinct = list(dict.fromkeys(titles))
        if any(_same_name(t, x) for t in distinct):
            return self._pick(MISS_FACT, x=x, q=hop.query)
        near = [t for t in distinct if _near_name(t, x)]
        if near:
            return self._pick(MISS_NAMESAKE, near=near[0], x=x, q=hop.query)
        return self._pick(MISS_OTHER_ENTITY, titles=_join(distinct), x=x, q=hop.query)

    def retry(self) -> str:
        return self._pick(RETRY)

    def conclusion(self, plan: Plan, facts: dict[int, Fact]) -> str:
        if plan.compared is None or plan.compare_hops is None:
            return self._pick(CONCLUDE, ans=plan.answer)
        a, b = plan.compared
        hop_a, hop_b = (plan.hops[i] for i in plan.compare_hops)
        va, vb = hop_a.answer, hop_b.answer
        if not va or not vb:
            return self._pick(CONCLUDE_COMPARE_UNSTATED, a=a, b=b, ans=plan.answer)
        la, lb = (
            hop_a.subject or facts[plan.compare_hops[0]].title,
            hop_b.subject or facts[plan.compare_hops[1]].title,
        )
        if _same_name(la, a) and _same_name(lb, b):
            values = self._pick(COMPARE_VALUES, a=a, b=b, va=va, vb=vb)
        else:
            values = self._pick(COMPARE_VALUES_BRIDGED, a=a, b=b, la=la, lb=lb, va=va, vb=vb)
        return " ".join([values, self._relation(va, vb), self._pick(CONCLUDE_COMPARE, ans=plan.answer)])

    def _relation(self, va: str, vb: str) -> str:
        """How two compared values relate: earlier/later for years, same/different otherwise."""
        ya, yb = _YEAR.search(va), _YEAR.search(vb)
        if ya and yb and ya.group(1) != yb.group(1):
            return self._pick(EARLIER if int(ya.group(1)) < int(yb.group(1)) else LATER, va=va, vb=vb)
        return self._pick(SAME if va.strip().lower() == vb.strip().lower() else DIFFERENT)


def _same_name(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _near_name(title: str, name: str) -> bool:
    """A different but confusable name: Tomas Vargas for Tomas Varga, Paper Kingdoms for Secret Kingdoms."""
    return difflib.SequenceMatcher(None, title.lower(), name.lower()).ratio() >= 0.8


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------------------ reformulation

# (relation, how to recognise it in a sub-question, other wordings of it; {x} is the entity). The checks run
# in order, so "When was X founded?" is a founding year before it is a founder.
_RELATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "birth_year",
        r"(?=.*\b(born|birth|into the world)\b)(?=.*\b(when|year|date)\b)",
        (
            "{x} year of birth",
            "In which year was {x} born?",
            "{x} was born in the year",
            "{x} birth date",
            "What year did {x} come into the world?",
        ),
    ),
    (
        "birthplace",
        r"\b(born|birth|birthplace|native|hometown)\b",
        (
            "{x} birthplace",
            "{x} was born in the city of",
            "Which town is {x} a native of?",
            "hometown of {x}",
        ),
    ),
    ("father", r"\b(father|fathered)\b", ("{x} father", "Who was {x}'s father?", "{x} son or daughter of")),
    (
        "spouse",
        r"\b(married|marry|spouse|wife|husband)\b",
        ("{x} married", "{x} spouse", "Who was {x} married to?", "{x} wed"),
    ),
    (
        "employer",
        r"\b(employ\w*|work for|worked for|career)\b",
        ("{x} worked for", "{x} employed by", "{x} career", "Which company employed {x}?"),
    ),
    (
        "capital",
        r"\b(capital|seat of government)\b",
        ("capital of {x}", "{x} seat of government", "The government of {x} sits in"),
    ),
    (
        "founded",
        r"(?=.*\b(found\w*|establish\w*)\b)(?=.*\b(when|year|date)\b)",
        ("{x} founded in", "year {x} was established", "{x} has existed since", "{x} founding year"),
    ),
    (
        "founder",
        r"\b(found\w*|establish\w*|started)\b",
        ("{x} founded by", "founder of {x}", "{x} was established by", "Who started {x}?"),
    ),
    (
        "headquarters",
        r"\b(headquarter\w*|based|head office)\b",
        ("{x} headquarters", "{x} is based in", "head office of {x}", "city where {x} is based"),
    ),
    (
        "release_year",
        r"(?=.*\b(released|premiere\w*|come out|came out|published|appear)\b)(?=.*\b(when|year|date)\b)",
        ("{x} release year", "{x} came out in", "year {x} was released", "{x} first appeared in"),
    ),
    (
        "director",
        r"\b(direct\w*|filmmaker)\b",
        ("{x} film directed by", "director of the film {x}", "{x} is a film by", "Who made the film {x}?"),
    ),
    (
        "author",
        r"\b(wrote|write|writer|author)\b",
        ("{x} novel written by", "author of {x}", "{x} is a novel by", "Who is the writer of {x}?"),
    ),
    (
        "singer",
        r"\b(recorded|singer|album)\b",
        (
            "{x} album recorded by",
            "{x} is an album by the singer",
            "singer of {x}",
            "artist who recorded {x}",
        ),
    ),
    (
        "producer",
        r"\b(produc\w*|studio)\b",
        ("{x} produced by", "production company of {x}", "{x} film studio", "Which studio made {x}?"),
    ),
    (
        "publisher",
        r"\b(publish\w*|publisher)\b",
        ("{x} publisher", "{x} was published by", "publishing house of {x}", "Which company published {x}?"),
    ),
    ("label", r"\blabel\b", ("{x} record label", "{x} released on the label", "label that released {x}")),
    (
        "country",
        r"\b(country|located)\b",
        ("{x} is a city in", "Which country does {x} belong to?", "{x} located in country", "{x} lies in"),
    ),
)
_COMPILED = tuple((name, re.compile(pattern), wordings) for name, pattern, wordings in _RELATIONS)
# The occupation a creator relation implies about its answer: what a person passage says they are.
_ROLES = {"director": "film director", "author": "novelist", "singer": "singer"}


def relation_of(query: str) -> str | None:
    """The relation a sub-question asks for (one of the names above), or None."""
    lowered = query.lower()
    for name, pattern, _ in _COMPILED:
        if pattern.search(lowered):
            return name
    return None


def reformulations(hop: Hop, previous: Hop | None, rng: random.Random) -> list[str]:
    """Other queries for a hop whose first search missed, in the order the oracle tries them.

    They keep the hop's entity and change the rest: another wording of the relation, a keyword query, or
    the entity's role from the chain so far (the director of a film is a film director, which is what the
    right one of two namesakes' passages says). Shuffled per question, so the data shows every kind.
    """
    x = hop.subject
    if not x:
        words = " ".join(w for w in re.findall(r"[\w'-]+", hop.query) if len(w) > 2)
        return [words] if words and words.lower() != hop.query.lower() else []
    relation = relation_of(hop.query)
    wordings = next((w for name, _, w in _COMPILED if name == relation), None)
    if wordings is not None:
        candidates = [w.format(x=x) for w in wordings]
    elif hop.relation:
        candidates = [f"{x} {hop.relation}", f"{hop.relation} of {x}"]
    else:
        rest = [w for w in re.findall(r"[\w'-]+", hop.query) if w.lower() not in x.lower() and len(w) > 3]
        candidates = [" ".join([x, *rest])]
    rng.shuffle(candidates)
    role = _ROLES.get(relation_of(previous.query) or "") if previous is not None else None
    if role and previous is not None and previous.answer == x:
        keyword = next((c for c in candidates if c.lower().startswith(x.lower())), f"{x}")
        candidates.insert(rng.randrange(min(2, len(candidates)) + 1), f"{keyword} {role}")
    seen = {hop.query.lower()}
    out = []
    for candidate in candidates:
        if candidate.lower() not in seen:
            seen.add(candidate.lower())
            out.append(candidate)
    return out
