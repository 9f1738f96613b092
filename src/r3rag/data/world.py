"""The synthetic world: the embedded default data, a fictional world with multi-hop questions over it.

People, cities, countries, organisations and works (films, novels, albums) with attributes and relations,
rendered as encyclopedia-style passages, and questions of the four classic multi-hop types (compositional
/ bridge, comparison, inference, bridge-comparison) plus 3- and 4-hop chains, each with its gold answer,
gold supporting passages and gold decomposition into sub-questions. Every name is invented, so no
pretrained model can answer from memory: it has to retrieve.

Difficulty is built in on purpose (see :class:`~r3rag.config.WorldConfig`): families share surnames and
first names repeat; some people have near-namesakes (Tomas Varga / Tomas Vargan) and some works near-
identical titles; a person's facts are split over two passages with the same title; passages name other
people in passing; every relation is phrased several ways in passages and in questions, so the words of a
question often are not the words of the passage. Everything follows from the seed.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from r3rag.config import QuestionType, WorldConfig
from r3rag.data.corpus import write_corpus
from r3rag.data.datasets import write_flashrag
from r3rag.gold import GoldSet, MatchRule
from r3rag.schema import Passage, QAExample, SubQuestion, passage_id_for

# ---------------------------------------------------------------------------------------------- entities


@dataclass
class Entity:
    """A person, city, country, organisation or work. ``attrs`` maps a relation to an entity key or a value;
    ``facts`` maps the same relation to the id of the one passage that states it."""

    key: str
    kind: str  # person | city | country | org | work
    name: str
    subtype: str = ""  # org: studio | publisher | label | company; work: film | novel | album
    attrs: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    pronoun: str = "they"
    occupation: str = ""


@dataclass
class World:
    config: WorldConfig
    entities: dict[str, Entity]
    passages: list[Passage]
    train: list[QAExample]
    dev: list[QAExample]

    def stats(self) -> dict[str, Any]:
        """Counts a person can check against the config: passages, entities, questions per type and hops."""

        def per_type(examples: list[QAExample]) -> dict[str, int]:
            return dict(sorted(Counter(e.type for e in examples).items()))

        return {
            "passages": len(self.passages),
            "entities": dict(sorted(Counter(e.kind for e in self.entities.values()).items())),
            "train": {"questions": len(self.train), "types": per_type(self.train)},
            "dev": {"questions": len(self.dev), "types": per_type(self.dev)},
            "hops": dict(sorted(Counter(e.metadata["hops"] for e in self.train + self.dev).items())),
        }


# ------------------------------------------------------------------------------------------------- names

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "st",
    "th",
]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ei", "au"]
_FIRST_ENDS = ["", "n", "s", "a", "o", "el", "ia", "in", "ar", "is"]
_SURNAME_ENDS = [
    "ov",
    "ard",
    "ski",
    "en",
    "ley",
    "ton",
    "ez",
    "berg",
    "ani",
    "ell",
    "ski",
    "ius",
    "wick",
    "ac",
]
_CITY_ENDS = [
    "by",
    "ora",
    "holm",
    "grad",
    "mouth",
    "vale",
    "stead",
    "ford",
    "heim",
    "ona",
    "ium",
    "wick",
    "port",
]
_COUNTRY_ENDS = ["ia", "land", "mark", "istan", "ovia", "ara", "enia", "ay"]
_ADJECTIVES = [
    "Silver",
    "Hollow",
    "Northern",
    "Quiet",
    "Crimson",
    "Last",
    "Distant",
    "Broken",
    "Golden",
    "Winter",
    "Paper",
    "Glass",
    "Silent",
    "Burning",
    "Lonely",
    "Iron",
    "Velvet",
    "Hidden",
    "Amber",
    "Pale",
    "Bitter",
    "Endless",
    "Secret",
    "Wild",
    "Salt",
    "Copper",
    "Scarlet",
    "Frozen",
    "Sleeping",
    "Painted",
]
_NOUNS = [
    "Harbour",
    "Lantern",
    "Orchard",
    "Tide",
    "Garden",
    "Mirror",
    "Bridge",
    "River",
    "Season",
    "Letter",
    "Kingdom",
    "Crown",
    "Shadow",
    "Field",
    "Tower",
    "Island",
    "Compass",
    "Song",
    "Window",
    "Road",
    "Feather",
    "Meadow",
    "Signal",
    "Voyage",
    "Canal",
    "Horizon",
    "Chapel",
    "Furnace",
    "Archive",
    "Lighthouse",
]
_OCCUPATIONS_BY_WORK = {"film": "film director", "novel": "novelist", "album": "singer"}
_OTHER_OCCUPATIONS = [
    "architect",
    "engineer",
    "physician",
    "painter",
    "lawyer",
    "chemist",
    "sculptor",
    "economist",
    "photographer",
    "diplomat",
    "journalist",
    "botanist",
]
_ORG_SUFFIXES = {
    "studio": ["Pictures", "Films", "Studios", "Motion Pictures"],
    "publisher": ["Press", "Books", "Publishing House", "& Sons Publishers"],
    "label": ["Records", "Music", "Sound Recordings", "Audio"],
    "company": ["Shipping Company", "Textiles", "Engineering", "Brewery", "Instruments", "Trading Company"],
}
_ORG_KIND_NAMES = {
    "studio": "film studio",
    "publisher": "publishing house",
    "label": "record label",
    "company": "company",
}
_PRODUCER_KIND = {"film": "studio", "novel": "publisher", "album": "label"}


class _Names:
    """Unique invented names. Syllable strings can collide across kinds; one registry keeps them apart."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set[str]()

    def _word(self, syllables: int, ends: Sequence[str]) -> str:
        core = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
        return (core + self.rng.choice(ends)).capitalize()

    def fresh(self, make: Callable[[], str], what: str = "names") -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used and len(name) >= 4:
                self.used.add(name)
                return name
        raise ValueError(
            f"the world ran out of distinct {what} after {len(self.used):,} names; their stems come from the "
            "other entities' names, so raise the number of people and cities with it (or use --scale)"
        )

    def pool(self, size: int, syllables: tuple[int, int], ends: Sequence[str], what: str) -> list[str]:
        make = lambda: self._word(self.rng.randint(*syllables), ends)  # noqa: E731
        return [self.fresh(make, what) for _ in range(size)]


def _near_surname(surname: str, rng: random.Random) -> str:
    """A surname one small edit away (Varga -> Vargas, Vargae, Vergan), mostly ones an English stemmer undoes,
    so that BM25 cannot tell the two people apart and only reading the passage can."""
    vowel = next((i for i in range(len(surname) - 1, 0, -1) if surname[i] in "aeiou"), None)
    edits = [surname + "s", surname + "s", surname + "e", surname + "n"]
    if vowel is not None:
        edits.append(
            surname[:vowel] + rng.choice([v for v in "aeiou" if v != surname[vowel]]) + surname[vowel + 1 :]
        )
    return rng.choice(edits)


def _echo_title(title: str, rng: random.Random) -> str:
    """A title that echoes another: The Silver Harbour -> Silver Harbour, Return to Silver Harbour, ..."""
    bare = title.removeprefix("The ")
    options = [f"Return to {bare}", f"{title} II", f"{bare} Revisited", f"Beyond {bare}"]
    return rng.choice(options + [bare] * (bare != title))


# ---------------------------------------------------------------------------------------------- phrasing


def _pick(rng: random.Random, options: Sequence[str], variety: float) -> str:
    """One phrasing; ``variety`` limits the choice to the first options (0 = always the canonical one)."""
    n = max(1, round(len(options) * variety))
    return rng.choice(list(options[:n]))


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _pronouns(p: Entity) -> dict[str, str]:
    he = p.pronoun
    return {
        "he": he,
        "He": he.capitalize(),
        "his": {"he": "his", "she": "her"}[he],
        "His": {"he": "His", "she": "Her"}[he],
        "child": {"he": "son", "she": "daughter"}[he],
    }


# Passage sentences. Placeholders: {name} the subject, {o} the object, {year}, pronouns from _pronouns().
_BIRTH_BOTH = [
    "{name} was born in {city} in {year}.",
    "{name} was born in {year} in the city of {city}.",
    "Born in {city} in {year}, {name} grew up there.",
]
_BIRTH_YEAR = [
    "{name} was born in {year}.",
    "{He} was born in the year {year}.",
    "{His} year of birth is {year}.",
    "{year} was the year of {his} birth.",
    "{He} came into the world in {year}.",
]
_BIRTH_PLACE = [
    "{He} was born in {city}.",
    "{He} is a native of {city}.",
    "{His} birthplace is {city}.",
    "{city} is the town where {he} was born.",
    "{He} grew up in {city}, where {he} had been born.",
]
_FATHER = [
    "{He} is the {child} of {o}.",
    "{His} father was {o}.",
    "{o} was {his} father.",
    "{He} was raised by {his} father, {o}.",
]
_OCCUPATION = [
    "{name} is {a} {occupation}.",
    "{name} works as {a} {occupation}.",
    "By profession, {name} is {a} {occupation}.",
]
_FREELANCE = [
    "{He} worked independently as {a} {occupation} all {his} life.",
    "{He} never held a salaried post and worked on commission.",
    "{He} ran a small practice of {his} own.",
]
_RESIDENCE = [
    "{He} lives in {o}.",
    "{He} later settled in {o}.",
    "{He} has a house in {o}.",
    "{He} moved to {o} in later life.",
]
_EMPLOYER = [
    "{name} worked for {o}.",
    "{He} spent most of {his} career at {o}.",
    "{He} was employed by {o} for many years.",
    "{o} employed {name} for much of {his} working life.",
    "{He} joined {o}, where {he} stayed until retirement.",
]
_SPOUSE = [
    "{name} married {o}.",
    "{He} was married to {o}.",
    "{His} spouse was {o}.",
    "{He} and {o} were wed after a long engagement.",
]
_MENTION_PERSON = [
    "{He} often collaborated with {o}.",
    "{He} was a rival of {o}.",
    "{He} shared an office with {o} for a time.",
    "{His} mentor was {o}.",
]
_HONOUR = [
    "{He} received the Order of {o} in {year}.",
    "{He} was honoured by the city of {o} in {year}.",
    "In {year}, {he} gave the founding lecture of the {o} Academy.",
    "{He} won the {o} Prize in {year}.",
]
_MENTION_FRIEND = [
    "{His} longtime friend was {o}.",
    "{He} was a neighbour of {o}.",
    "{He} corresponded for years with {o}.",
]
_CITY_COUNTRY = [
    "{name} is a city in {o}.",
    "{name} lies in {o}.",
    "{name} is located in the northern part of {o}.",
    "The town of {name} belongs to {o}.",
    "{name} is one of the oldest settlements of {o}.",
]
_CITY_FOUNDED = [
    "It was founded in {year}.",
    "Its founding dates to {year}.",
    "The settlement was first recorded in {year}.",
]
_COUNTRY_CAPITAL = [
    "The capital of {name} is {o}.",
    "{o} is the capital of {name}.",
    "{name}'s seat of government is {o}.",
    "The government of {name} sits in {o}.",
]
_COUNTRY_INTRO = [
    "{name}, officially the Republic of {name}, is a country.",
    "{name} is a small republic.",
    "{name} is a country with a long coastline.",
]
_ORG_FOUNDER = [
    "{name} is a {kind} founded by {o}.",
    "{o} founded {name}.",
    "{name} was established by {o}.",
    "The founder of {name} was {o}.",
    "{o} started {name} with a small loan.",
]
_ORG_FOUNDED = [
    "It was founded in {year}.",
    "It opened its doors in {year}.",
    "The firm dates from {year}.",
    "{name} has existed since {year}.",
]
_ORG_HQ = [
    "It is headquartered in {o}.",
    "Its head office is in {o}.",
    "{name} has its headquarters in {o}.",
    "The firm is based in {o}.",
]
_ORG_MENTION = [
    "{o} later served as its chairman.",
    "{o} was among its first employees.",
    "{o} once tried to buy the firm.",
]
_WORK_CREATOR = {
    "film": [
        "{name} is a film directed by {o}.",
        "{name} is a film by the director {o}.",
        "{o} directed {name}.",
        "Directed by {o}, {name} was shot on location.",
    ],
    "novel": [
        "{name} is a novel by {o}.",
        "{o} wrote {name}.",
        "{name} was written by {o}.",
        "The novel {name} is the work of {o}.",
    ],
    "album": [
        "{name} is an album by {o}.",
        "{o} recorded {name}.",
        "{name} is a studio album by the singer {o}.",
        "The album {name} was recorded by {o}.",
    ],
}
_WORK_YEAR = {
    "film": ["It was released in {year}.", "It premiered in {year}.", "The film came out in {year}."],
    "novel": ["It was published in {year}.", "It first appeared in {year}.", "The book came out in {year}."],
    "album": ["It was released in {year}.", "It came out in {year}.", "The record appeared in {year}."],
}
_WORK_PRODUCER = {
    "film": ["It was produced by {o}.", "{o} produced the film.", "The production company was {o}."],
    "novel": ["It was published by {o}.", "{o} published the book.", "The publisher was {o}."],
    "album": ["It was released on the {o} label.", "{o} released the album.", "The record label was {o}."],
}
_WORK_MENTION = {
    "film": ["It stars {o}.", "The lead role is played by {o}."],
    "novel": ["The book is dedicated to {o}.", "{o} wrote its foreword."],
    "album": ["It features guest vocals by {o}.", "{o} plays piano on two tracks."],
}

# Questions. ``_ASK`` asks for a relation of {x} (a name or a noun phrase); ``_NP`` names the related entity
# as a noun phrase, so chains compose: "When was the founder of the studio that produced X born?".
_ASK: dict[str, list[str]] = {
    "birth_year": [
        "When was {x} born?",
        "In what year was {x} born?",
        "What is the birth year of {x}?",
        "What year did {x} come into the world?",
    ],
    "birthplace": [
        "Where was {x} born?",
        "In which city was {x} born?",
        "What is the birthplace of {x}?",
        "What town is {x} a native of?",
    ],
    "father": ["Who is the father of {x}?", "Who was {x}'s father?", "Who fathered {x}?"],
    "spouse": ["Who is {x} married to?", "Who is the spouse of {x}?", "Whom did {x} marry?"],
    "employer": [
        "Which organisation did {x} work for?",
        "Who employed {x}?",
        "Where did {x} spend most of their career?",
    ],
    "country": ["In which country is {x}?", "Which country is {x} located in?", "{x} is in which country?"],
    "capital": [
        "What is the capital of {x}?",
        "Which city is the capital of {x}?",
        "Where is the seat of government of {x}?",
    ],
    "founder": ["Who founded {x}?", "Who was the founder of {x}?", "Who established {x}?"],
    "founded": [
        "When was {x} founded?",
        "In what year was {x} established?",
        "What is the founding year of {x}?",
    ],
    "headquarters": [
        "Where is {x} headquartered?",
        "In which city is {x} based?",
        "Where is the head office of {x}?",
    ],
    "creator:film": ["Who directed {x}?", "Who was the director of {x}?", "Which filmmaker made {x}?"],
    "creator:novel": ["Who wrote {x}?", "Who is the author of {x}?", "Which writer wrote {x}?"],
    "creator:album": ["Who recorded {x}?", "Which singer recorded {x}?", "Whose album is {x}?"],
    "year:film": ["When was {x} released?", "In what year did {x} premiere?", "What year did {x} come out?"],
    "year:novel": [
        "When was {x} published?",
        "In what year did {x} first appear?",
        "What year did {x} come out?",
    ],
    "year:album": ["When was {x} released?", "In what year did {x} come out?", "What year was {x} released?"],
    "producer:film": [
        "Which studio produced {x}?",
        "What company produced {x}?",
        "Who was the production company of {x}?",
    ],
    "producer:novel": ["Who published {x}?", "Which publisher published {x}?", "What company put out {x}?"],
    "producer:album": [
        "Which label released {x}?",
        "On what record label did {x} come out?",
        "Who released {x}?",
    ],
}
_NP: dict[str, list[str]] = {
    "birthplace": ["the birthplace of {x}", "the city where {x} was born", "the hometown of {x}"],
    "father": ["the father of {x}", "{x}'s father"],
    "spouse": ["the spouse of {x}", "the person {x} married"],
    "employer": ["the employer of {x}", "the organisation {x} worked for"],
    "country": ["the country {x} is in", "the country where {x} lies"],
    "capital": ["the capital of {x}"],
    "founder": ["the founder of {x}", "the person who founded {x}"],
    "headquarters": ["the city where {x} is headquartered", "the home city of {x}"],
    "creator:film": ["the director of {x}", "the person who directed {x}", "the filmmaker behind {x}"],
    "creator:novel": ["the author of {x}", "the writer of {x}", "the person who wrote {x}"],
    "creator:album": ["the singer who recorded {x}", "the artist behind {x}"],
    "producer:film": ["the studio that produced {x}", "the production company of {x}"],
    "producer:novel": ["the publisher of {x}", "the company that published {x}"],
    "producer:album": ["the label that released {x}", "the record label of {x}"],
}
# Two relations read better fused: "In which country was X born?" instead of "... the birthplace of X?".
_ASK_FUSED = {
    ("birthplace", "country"): ["In which country was {x} born?", "What country was {x} born in?"],
    ("headquarters", "country"): ["In which country is {x} based?", "In what country is {x} headquartered?"],
}
_NP_FUSED = {
    ("birthplace", "country"): ["the country where {x} was born", "the native country of {x}"],
    ("headquarters", "country"): ["the country where {x} is based"],
}

# Question shapes: compositional (2 hops) and chain (3-4 hops) paths from a start entity kind.
_PATHS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "compositional": [
        ("work", ("creator", "birth_year")),
        ("work", ("creator", "birthplace")),
        ("work", ("producer", "founder")),
        ("work", ("producer", "founded")),
        ("work", ("producer", "headquarters")),
        ("work", ("creator", "employer")),
        ("person", ("birthplace", "country")),
        ("person", ("employer", "founder")),
        ("person", ("employer", "headquarters")),
        ("person", ("spouse", "birthplace")),
        ("person", ("spouse", "birth_year")),
        ("person", ("father", "birthplace")),
        ("org", ("founder", "birth_year")),
        ("org", ("founder", "birthplace")),
        ("org", ("headquarters", "country")),
    ],
    "chain": [
        ("work", ("creator", "birthplace", "country")),
        ("work", ("producer", "founder", "birth_year")),
        ("work", ("producer", "founder", "birthplace")),
        ("work", ("producer", "headquarters", "country")),
        ("work", ("creator", "employer", "founder")),
        ("work", ("creator", "father", "birth_year")),
        ("org", ("founder", "birthplace", "country")),
        ("person", ("employer", "founder", "birth_year")),
        ("person", ("employer", "headquarters", "country")),
        ("person", ("spouse", "birthplace", "country")),
        ("work", ("creator", "birthplace", "country", "capital")),
        ("work", ("producer", "founder", "birthplace", "country")),
        ("work", ("creator", "employer", "founder", "birth_year")),
        ("work", ("producer", "headquarters", "country", "capital")),
        ("person", ("employer", "founder", "birthplace", "country")),
    ],
}
# Inference: a kinship term that names a composition of relations (2Wiki's "inference" type).
_INFERENCE = [
    (
        ("father", "father"),
        [
            "Who is the paternal grandfather of {x}?",
            "Who was {x}'s paternal grandfather?",
            "Who is the father of {x}'s father?",
        ],
    ),
    (("spouse", "father"), ["Who is the father-in-law of {x}?", "Who was {x}'s father-in-law?"]),
    (("father", "spouse"), ["Who did the father of {x} marry?", "Who was {x}'s father married to?"]),
]
# Comparison and bridge-comparison: (start kind, bridge relations, compared attribute, question templates).
# Templates with {which} ask for the earlier or later one; "same" templates are yes/no.
_COMPARE_ORDER = [
    (
        "person",
        (),
        "birth_year",
        ["Who was born {first}, {a} or {b}?", "Which of {a} and {b} was born {first}?"],
    ),
    ("work", (), "year", ["Which came out {first}, {a} or {b}?", "Which was released {first}, {a} or {b}?"]),
    ("org", (), "founded", ["Which was founded {first}, {a} or {b}?", "Which is {older}, {a} or {b}?"]),
    (
        "work",
        ("creator",),
        "birth_year",
        ["Whose creator was born {first}, {a} or {b}?", "Which work's creator was born {first}: {a} or {b}?"],
    ),
    (
        "org",
        ("founder",),
        "birth_year",
        [
            "Which organisation's founder was born {first}, {a} or {b}?",
            "The founder of which was born {first}, {a} or {b}?",
        ],
    ),
    (
        "work",
        ("producer",),
        "founded",
        [
            "Which was made by the {older} company, {a} or {b}?",
            "Whose producing company was founded {first}, {a} or {b}?",
        ],
    ),
    (
        "person",
        ("father",),
        "birth_year",
        ["Whose father was born {first}, {a} or {b}?", "Which of {a} and {b} has the {older} father?"],
    ),
]
_COMPARE_SAME = [
    (
        "person",
        (),
        "birthplace",
        ["Were {a} and {b} born in the same city?", "Do {a} and {b} share a hometown?"],
    ),
    (
        "work",
        (),
        "creator",
        ["Do {a} and {b} have the same creator?", "Were {a} and {b} made by the same person?"],
    ),
    (
        "work",
        ("creator",),
        "birthplace",
        [
            "Were the creators of {a} and {b} born in the same city?",
            "Do the creators of {a} and {b} come from the same town?",
        ],
    ),
    ("org", ("founder",), "birthplace", ["Were the founders of {a} and {b} born in the same city?"]),
    ("work", ("creator",), "employer", ["Did the creators of {a} and {b} work for the same organisation?"]),
]


# ------------------------------------------------------------------------------------------------ builder


class _WorldBuilder:
    def __init__(self, config: WorldConfig):
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.names = _Names(self.rng)
        self.entities: dict[str, Entity] = {}
        self.passages: list[Passage] = []
        self.people: list[Entity] = []  # fixed once the people exist: titles and passages draw from them
        self.cities: list[Entity] = []

    def add(self, entity: Entity) -> Entity:
        self.entities[entity.key] = entity
        return entity

    def of_kind(self, kind: str, subtype: str | None = None) -> list[Entity]:
        return [
            e for e in self.entities.values() if e.kind == kind and (subtype is None or e.subtype == subtype)
        ]

    def phrase(self, options: Sequence[str]) -> str:
        return _pick(self.rng, options, self.cfg.paraphrase_variety)

    # -- the world's facts --------------------------------------------------------------------------------

    def build_places(self) -> None:
        cfg, rng = self.cfg, self.rng
        countries = [
            self.add(Entity(f"country{i}", "country", n))
            for i, n in enumerate(self.names.pool(cfg.countries, (1, 2), _COUNTRY_ENDS, "country names"))
        ]
        for i, name in enumerate(self.names.pool(cfg.cities, (1, 2), _CITY_ENDS, "city names")):
            country = countries[i] if i < len(countries) else rng.choice(countries)
            self.add(
                Entity(
                    f"city{i}",
                    "city",
                    name,
                    attrs={"country": country.key, "founded": str(rng.randint(850, 1850))},
                )
            )
            if i < len(countries):
                country.attrs["capital"] = f"city{i}"
        for country in countries:
            country.aliases = [f"the Republic of {country.name}", f"Republic of {country.name}"]

    def build_people(self) -> None:
        cfg, rng = self.cfg, self.rng
        firsts = self.names.pool(max(20, cfg.people // 8), (1, 2), _FIRST_ENDS, "first names")
        surnames = self.names.pool(max(20, cfg.people // 5), (1, 2), _SURNAME_ENDS, "surnames")
        cities = self.of_kind("city")
        occupations = list(_OCCUPATIONS_BY_WORK.values()) * 3 + _OTHER_OCCUPATIONS
        base = round(cfg.people / (1 + cfg.namesake_rate))
        taken: set[str] = set()
        people: list[Entity] = []

        def person(first: str, last: str, year: int) -> Entity:
            entity = Entity(
                f"person{len(people)}",
                "person",
                f"{first} {last}",
                attrs={"birth_year": str(year), "birthplace": rng.choice(cities).key},
                pronoun=rng.choice(["he", "she"]),
                occupation=rng.choice(occupations),
            )
            taken.add(entity.name)
            people.append(self.add(entity))
            return entity

        for year in sorted(rng.randint(1860, 1995) for _ in range(base)):
            fathers = [
                p for p in people if p.pronoun == "he" and 20 <= year - int(p.attrs["birth_year"]) <= 45
            ]
            father = rng.choice(fathers) if fathers and rng.random() < 0.55 else None
            last = father.name.split()[1] if father else rng.choice(surnames)
            first = rng.choice(firsts)
            if f"{first} {last}" in taken:
                continue
            child = person(first, last, year)
            if father:
                child.attrs["father"] = father.key
        for original in rng.sample(people, min(len(people), cfg.people - len(people))):
            first, last = original.name.split()
            name_last = _near_surname(last, rng)
            if f"{first} {name_last}" not in taken:
                near = person(first, name_last, int(original.attrs["birth_year"]) + rng.randint(-6, 6))
                near.occupation = original.occupation
        unmarried = list(people)
        rng.shuffle(unmarried)
        for p in unmarried[: len(unmarried) // 3]:
            if "spouse" in p.attrs:
                continue
            age = int(p.attrs["birth_year"])
            partners = [
                q
                for q in people
                if q is not p
                and abs(int(q.attrs["birth_year"]) - age) <= 8
                and "spouse" not in q.attrs
                and q.attrs.get("father") != p.attrs.get("father")
            ]
            if partners:
                p.attrs["spouse"] = rng.choice(partners[:50]).key

    def build_organisations(self) -> None:
        cfg, rng = self.cfg, self.rng
        people, cities = self.of_kind("person"), self.of_kind("city")
        kinds = ["studio", "publisher", "label", "company"]
        surnames = sorted({p.name.split()[1] for p in people})

        def stem() -> str:
            return rng.choice([rng.choice(surnames), rng.choice(_ADJECTIVES), rng.choice(cities).name])

        def org_name(kind: str, stems: list[str]) -> str:
            """A stem and a suffix of the kind; a stem that has every suffix of the kind taken gives way to
            another (without that, a big world runs out: "Silver" has only four studio names)."""
            suffixes = _ORG_SUFFIXES[kind]
            if all(f"{stems[-1]} {suffix}" in self.names.used for suffix in suffixes):
                stems.append(stem())
            return f"{stems[-1]} {rng.choice(suffixes)}"

        for i in range(cfg.organisations):
            kind = kinds[i % len(kinds)]
            stems = [stem()]
            name = self.names.fresh(partial(org_name, kind, stems), "org names")
            founders = [p for p in people if int(p.attrs["birth_year"]) <= 1975]
            founder = rng.choice(founders)
            founded = int(founder.attrs["birth_year"]) + rng.randint(22, 50)
            self.add(
                Entity(
                    f"org{i}",
                    "org",
                    name,
                    subtype=kind,
                    attrs={
                        "founder": founder.key,
                        "founded": str(founded),
                        "headquarters": rng.choice(cities).key,
                    },
                )
            )
        orgs = self.of_kind("org")
        for p in people:
            born = int(p.attrs["birth_year"])
            options = [
                o for o in orgs if int(o.attrs["founded"]) <= born + 40 and o.attrs["founder"] != p.key
            ]
            if options and rng.random() < 0.7:
                p.attrs["employer"] = rng.choice(options).key

    def build_works(self) -> None:
        cfg, rng = self.cfg, self.rng
        originals: list[str] = []  # echoes are made from original titles only: no "X II II"
        work_kinds = list(_OCCUPATIONS_BY_WORK)
        self.people, self.cities = self.of_kind("person"), self.of_kind("city")  # fixed from here on
        creators_of = {
            kind: [
                p
                for p in self.people
                if p.occupation == _OCCUPATIONS_BY_WORK[kind] and int(p.attrs["birth_year"]) <= 1995
            ]
            for kind in work_kinds
        }
        producers_of = {kind: self.of_kind("org", _PRODUCER_KIND[kind]) for kind in work_kinds}
        for i in range(cfg.works):
            kind = work_kinds[i % 3]
            creator = rng.choice(creators_of[kind])
            born = int(creator.attrs["birth_year"])
            year = rng.randint(born + 20, min(born + 70, 2024))
            producers = [o for o in producers_of[kind] if int(o.attrs["founded"]) <= year]
            if not producers:
                continue
            echo = bool(originals) and rng.random() < cfg.title_echo_rate
            title = self.names.fresh(partial(self.title, originals if echo else None), "work titles")
            if not echo:
                originals.append(title)
            work = self.add(
                Entity(
                    f"work{i}",
                    "work",
                    title,
                    subtype=kind,
                    attrs={"creator": creator.key, "year": str(year), "producer": rng.choice(producers).key},
                )
            )
            if title.startswith("The "):
                work.aliases = [title.removeprefix("The ")]

    def title(self, echo_of: list[str] | None) -> str:
        """A new work title, or, given earlier titles, an echo of one of them."""
        rng = self.rng
        if echo_of:
            return _echo_title(rng.choice(echo_of), rng)
        return rng.choice(
            [
                f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
                f"{rng.choice(_NOUNS)} of {rng.choice(self.cities).name}",
                f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}s",
                f"A {rng.choice(_NOUNS)} for {rng.choice(self.people).name.split()[0]}",
            ]
        )

    # -- passages -----------------------------------------------------------------------------------------

    def add_passage(
        self, title: str, sentences: list[str], facts: list[tuple[Entity, str]], lead: int = 1
    ) -> None:
        """Render a passage (the first ``lead`` sentences stay first, the rest are shuffled) and record it as
        the source of each (entity, relation) in ``facts``."""
        head, tail = sentences[:lead], sentences[lead:]
        self.rng.shuffle(tail)
        text = " ".join(head + tail)
        pid = passage_id_for(title, text)
        self.passages.append(Passage(id=pid, title=title, text=text))
        for entity, relation in facts:
            entity.facts[relation] = pid

    def name(self, key: str) -> str:
        return self.entities[key].name

    def mentions(
        self, templates: Sequence[str], fill: dict[str, str], exclude: set[str], most: int
    ) -> list[str]:
        """Up to ``most`` sentences naming other, unrelated people: retrieval noise, never a queried fact."""
        chosen = [
            t
            for t in self.rng.sample(list(templates), min(most, len(templates)))
            if self.rng.random() < self.cfg.mention_rate
        ]
        others = [o for o in self.rng.sample(self.people, len(chosen)) if o.key not in exclude]
        return [t.format(**fill | {"o": o.name}) for t, o in zip(chosen, others, strict=False)]

    def person_passages(self, p: Entity) -> None:
        """Three passages with the same title, as an article cut into chunks: early life (birth, father),
        career (employer), personal life (spouse, residence). A name query alone cannot tell them apart."""
        rng, pro = self.rng, _pronouns(p)
        fill = {
            "name": p.name,
            **pro,
            "occupation": p.occupation,
            "a": _article(p.occupation),
            "city": self.name(p.attrs["birthplace"]),
            "year": p.attrs["birth_year"],
        }
        early = [self.phrase(_OCCUPATION).format(**fill)]
        if rng.random() < self.cfg.indirect_rate:
            age = rng.choice([30, 40, 50, 60])
            early += [
                f"{pro['He']} turned {age} in {int(p.attrs['birth_year']) + age}.",
                self.phrase(_BIRTH_PLACE).format(**fill),
            ]
        elif rng.random() < 0.4:
            early.append(self.phrase(_BIRTH_BOTH).format(**fill))
        else:
            early += [self.phrase(_BIRTH_YEAR).format(**fill), self.phrase(_BIRTH_PLACE).format(**fill)]
        facts = [(p, "birth_year"), (p, "birthplace")]
        if "father" in p.attrs:
            early.append(self.phrase(_FATHER).format(**fill, o=self.name(p.attrs["father"])))
            facts.append((p, "father"))
        self.add_passage(p.name, early, facts)

        exclude = {p.key, p.attrs.get("spouse", ""), p.attrs.get("father", "")}
        named = fill | {"He": p.name}  # a chunk opens with the name, not a pronoun
        if "employer" in p.attrs:
            career = [self.phrase(_EMPLOYER).format(**named, o=self.name(p.attrs["employer"]))]
        else:
            career = [self.phrase(_FREELANCE).format(**named)]
        self.add_passage(
            p.name,
            career + self.mentions(_MENTION_PERSON, fill, exclude, 2),
            [(p, "employer")] if "employer" in p.attrs else [],
        )

        personal = [self.phrase(_RESIDENCE).format(**named, o=rng.choice(self.cities).name)]
        if "spouse" in p.attrs:
            personal.append(self.phrase(_SPOUSE).format(**fill, o=self.name(p.attrs["spouse"])))
        self.add_passage(
            p.name,
            personal + self.mentions(_MENTION_FRIEND, fill, exclude, 2),
            [(p, "spouse")] if "spouse" in p.attrs else [],
        )

        if (
            rng.random() < 0.5
        ):  # a fourth chunk: dates and places that answer nothing, but look like they might
            year = int(p.attrs["birth_year"]) + rng.randint(25, 60)
            honour = self.phrase(_HONOUR).format(**named | {"year": year, "o": rng.choice(self.cities).name})
            self.add_passage(p.name, [honour, *self.mentions(_MENTION_PERSON, fill, exclude, 1)], [])

    def place_passages(self) -> None:
        for city in self.of_kind("city"):
            fill = {"name": city.name, "year": city.attrs["founded"], "o": self.name(city.attrs["country"])}
            sentences = [self.phrase(_CITY_COUNTRY).format(**fill), self.phrase(_CITY_FOUNDED).format(**fill)]
            self.add_passage(city.name, sentences, [(city, "country"), (city, "founded")], lead=2)
        for country in self.of_kind("country"):
            fill = {"name": country.name, "o": self.name(country.attrs["capital"])}
            neighbour = self.rng.choice([c for c in self.of_kind("country") if c is not country])
            sentences = [
                self.phrase(_COUNTRY_INTRO).format(**fill),
                self.phrase(_COUNTRY_CAPITAL).format(**fill),
                f"It shares a border with {neighbour.name}.",
            ]
            self.add_passage(country.name, sentences, [(country, "capital")])

    def org_passages(self, org: Entity) -> None:
        fill = {
            "name": org.name,
            "kind": _ORG_KIND_NAMES[org.subtype],
            "year": org.attrs["founded"],
            "o": self.name(org.attrs["founder"]),
        }
        sentences = [
            self.phrase(_ORG_FOUNDER).format(**fill),
            self.phrase(_ORG_FOUNDED).format(**fill),
            self.phrase(_ORG_HQ).format(**fill | {"o": self.name(org.attrs["headquarters"])}),
        ]
        sentences += self.mentions(_ORG_MENTION, fill, {org.attrs["founder"]}, 1)
        self.add_passage(org.name, sentences, [(org, "founder"), (org, "founded"), (org, "headquarters")])

    def work_passages(self, work: Entity) -> None:
        kind = work.subtype
        fill = {"name": work.name, "year": work.attrs["year"], "o": self.name(work.attrs["creator"])}
        sentences = [
            self.phrase(_WORK_CREATOR[kind]).format(**fill),
            self.phrase(_WORK_YEAR[kind]).format(**fill),
            self.phrase(_WORK_PRODUCER[kind]).format(**fill | {"o": self.name(work.attrs["producer"])}),
        ]
        sentences += self.mentions(_WORK_MENTION[kind], fill, {work.attrs["creator"]}, 2)
        self.add_passage(work.name, sentences, [(work, "creator"), (work, "year"), (work, "producer")])

    def build_passages(self) -> None:
        self.people, self.cities = self.of_kind("person"), self.of_kind("city")
        for p in self.people:
            self.person_passages(p)
        self.place_passages()
        for org in self.of_kind("org"):
            self.org_passages(org)
        for work in self.of_kind("work"):
            self.work_passages(work)


# ----------------------------------------------------------------------------------------------- questions


def _relation_key(relation: str, entity: Entity) -> str:
    """Relations whose phrasing depends on the kind of work: creator:film, producer:novel, ..."""
    return f"{relation}:{entity.subtype}" if relation in ("creator", "producer", "year") else relation


class _Pool:
    """The entities one split's questions start from, grouped once by kind and by kind and subtype (in
    their original order): questions draw from these groups thousands of times."""

    def __init__(self, split: str, entities: Sequence[Entity]):
        self.split = split
        self.sides: Counter[tuple[str, str]] = Counter()  # (question type, answer side) of accepted questions
        self.by_kind: dict[str, list[Entity]] = defaultdict(list)
        self.by_subtype: dict[tuple[str, str], list[Entity]] = defaultdict(list)
        for entity in entities:
            self.by_kind[entity.kind].append(entity)
            self.by_subtype[entity.kind, entity.subtype].append(entity)

    def lagging(self, qtype: str, side: str, other: str, rng: random.Random) -> bool:
        """Whether the next ``qtype`` question should take ``side`` rather than ``other``: the side fewer
        accepted questions took so far, a coin on a tie."""
        have, rival = self.sides[qtype, side], self.sides[qtype, other]
        return have < rival or (have == rival and rng.random() < 0.5)


class _QuestionMaker:
    """Turns relation paths over the world into questions with answers, supporting passages and hops."""

    def __init__(self, builder: _WorldBuilder):
        self.b, self.rng = builder, builder.rng
        self.entities = builder.entities

    def value(self, entity: Entity, relation: str) -> tuple[str, Entity | None]:
        """The value of a relation (a display string) and the entity it points to, if any."""
        raw = entity.attrs[relation]
        target = self.entities.get(raw)
        return (target.name if target else raw), target

    def hop(self, entity: Entity, relation: str) -> SubQuestion:
        pid = entity.facts[relation]
        question = self.b.phrase(_ASK[_relation_key(relation, entity)]).format(x=entity.name)
        value, _ = self.value(entity, relation)
        return SubQuestion(
            question=question, answer=value, supporting_ids=[pid], supporting_titles=[entity.name]
        )

    def walk(self, start: Entity, path: Sequence[str]) -> tuple[list[SubQuestion], list[Entity], str] | None:
        """Follow a path of relations; None when some entity on it lacks the relation."""
        hops, chain, current = [], [start], start
        for i, relation in enumerate(path):
            if relation not in current.attrs:
                return None
            hops.append(self.hop(current, relation))
            value, target = self.value(current, relation)
            if i < len(path) - 1:
                if target is None:
                    return None
                chain.append(target)
                current = target
        return hops, chain, value

    def reach(self, start: Entity, path: Sequence[str]) -> tuple[list[Entity], str] | None:
        """What :meth:`walk` reaches (the entities on the path and the final value), without phrasing a hop
        (so without drawing from the seed): for counting the questions a world can make."""
        chain, current = [start], start
        for i, relation in enumerate(path):
            if relation not in current.attrs:
                return None
            value, target = self.value(current, relation)
            if i < len(path) - 1:
                if target is None:
                    return None
                chain.append(target)
                current = target
        return chain, value

    def path_templates(self, chain: list[Entity], path: Sequence[str]) -> list[Sequence[str]]:
        """The phrasings a path's question is composed of, innermost first: nested noun phrases for the
        bridge relations, then the final ask (two relations fused into one where that reads better)."""
        templates: list[Sequence[str]] = []
        i, last = 0, len(path) - 1
        while i < last:
            pair = (path[i], path[i + 1])
            if pair in _NP_FUSED and i + 1 < last:
                templates.append(_NP_FUSED[pair])
                i += 2
            elif pair in _ASK_FUSED and i + 1 == last:
                templates.append(_ASK_FUSED[pair])
                return templates
            else:
                templates.append(_NP[_relation_key(path[i], chain[i])])
                i += 1
        templates.append(_ASK[_relation_key(path[last], chain[last])])
        return templates

    def phrase_path(self, start: Entity, chain: list[Entity], path: Sequence[str]) -> str:
        """Compose the question text: each phrasing wraps the noun phrase so far, starting from the name."""
        x = start.name
        for options in self.path_templates(chain, path):
            x = self.b.phrase(options).format(x=x)
        return _capitalise(x)

    def phrasings(self, options: Sequence[str]) -> int:
        """How many of ``options`` are in use (as :func:`_pick` limits them)."""
        return max(1, round(len(options) * self.b.cfg.paraphrase_variety))

    def capacity(self, qtype: str, pool: _Pool) -> int:
        """How many distinct questions of ``qtype`` can start from ``pool``: every start entity the type's
        paths can be walked from, times the phrasings of its question (for comparisons, every ordered pair
        of entities that can be compared). An upper bound: it counts phrasings, not the strings they make."""
        total = 0
        if qtype in ("compositional", "chain"):
            for kind, path in _PATHS[qtype]:
                for start in pool.by_kind[kind]:
                    if reached := self.reach(start, path):
                        total += math.prod(map(self.phrasings, self.path_templates(reached[0], path)))
        elif qtype == "inference":
            for path, templates in _INFERENCE:
                for start in pool.by_kind["person"]:
                    reached = self.reach(start, path)
                    total += self.phrasings(templates) * bool(reached and reached[1] != start.name)
        else:
            for kind, bridge, attribute, templates in _COMPARE_ORDER + _COMPARE_SAME:
                if bool(bridge) != (qtype == "bridge_comparison"):
                    continue
                yes_no = (kind, bridge, attribute, templates) in _COMPARE_SAME
                for (group_kind, _), group in pool.by_subtype.items():
                    if group_kind != kind:
                        continue
                    values = [r[1] for e in group if (r := self.reach(e, (*bridge, attribute)))]
                    # yes/no asks about any two; earlier/later only about two that differ, either way round
                    same = len(values) if yes_no else sum(c * c for c in Counter(values).values())
                    total += (len(values) ** 2 - same) * self.phrasings(templates) * (1 if yes_no else 2)
        return total

    def example(
        self,
        qtype: str,
        question: str,
        answer: str,
        hops: list[SubQuestion],
        aliases: Sequence[str],
        **metadata: Any,
    ) -> QAExample:
        supporting = list(dict.fromkeys(pid for h in hops for pid in h.supporting_ids))
        titles = list(dict.fromkeys(t for h in hops for t in h.supporting_titles))
        return QAExample(
            id="",
            question=question,
            answers=[answer, *aliases],
            supporting_ids=supporting,
            supporting_titles=titles,
            decomposition=hops,
            dataset="world",
            type=qtype,
            metadata={"hops": len(hops), **metadata},
        )

    def aliases(self, target: Entity | None) -> list[str]:
        return list(target.aliases) if target else []

    def compositional(self, qtype: str, pool: _Pool) -> QAExample | None:
        kind, path = self.rng.choice(_PATHS[qtype])
        start = self.rng.choice(pool.by_kind[kind])
        walked = self.walk(start, path)
        if walked is None:
            return None
        hops, chain, answer = walked
        target = self.entities.get(chain[-1].attrs[path[-1]])
        return self.example(
            qtype, self.phrase_path(start, chain, path), answer, hops, self.aliases(target), path=list(path)
        )

    def inference(self, pool: _Pool) -> QAExample | None:
        path, templates = self.rng.choice(_INFERENCE)
        start = self.rng.choice(pool.by_kind["person"])
        walked = self.walk(start, path)
        if walked is None:
            return None
        hops, _, answer = walked
        if answer == start.name:
            return None
        question = self.b.phrase(templates).format(x=start.name)
        return self.example("inference", question, answer, hops, [], path=list(path))

    def comparison(self, qtype: str, pool: _Pool) -> QAExample | None:
        """Two entities of the same kind, each followed through the bridge to the compared attribute.

        The answer's side is chosen, not left to chance, so that a split's answers are half "yes", half "no"
        and half the first entity named, half the second (:meth:`_Pool.lagging`): two random people almost
        never share a hometown, so "no" would always be right, and a side drawn by a coin drifts with every
        draw that fails (a "yes" finds no matching pair more often than a "no"), which left dev questions
        80% "no" and made a constant answer a strategy RL could learn.
        """
        bridged = qtype == "bridge_comparison"
        kind, bridge, attribute, templates = self.rng.choice(
            [c for c in _COMPARE_ORDER + _COMPARE_SAME if bool(c[1]) == bridged]
        )
        path = (*bridge, attribute)
        a = self.rng.choice(pool.by_kind[kind])
        walked_a = self.walk(a, path)
        if walked_a is None:
            return None
        hops_a, _, value_a = walked_a
        yes_no = (kind, bridge, attribute, templates) in _COMPARE_SAME
        want_same = yes_no and pool.lagging(qtype, "yes", "no", self.rng)
        others = [e for e in pool.by_subtype[kind, a.subtype] if e is not a]
        self.rng.shuffle(others)
        for b in others[:200]:
            walked_b = self.walk(b, path)
            if walked_b is not None and (walked_b[2] == value_a) == want_same:
                break
        else:
            return None
        hops_b, _, value_b = walked_b
        hops = hops_a + hops_b
        fill = {"a": a.name, "b": b.name}
        if yes_no:
            question = self.b.phrase(templates).format(**fill)
            return self.example(
                qtype,
                question,
                "yes" if want_same else "no",
                hops,
                [],
                compare=attribute,
                bridge=list(bridge),
                side="yes" if want_same else "no",
            )
        first_wins = pool.lagging(qtype, "first", "second", self.rng)
        earlier = (int(value_a) < int(value_b)) == first_wins
        words = {"first": "first", "older": "older"} if earlier else {"first": "later", "older": "younger"}
        if not earlier and attribute == "founded":
            words["older"] = "newer"
        winner = a if first_wins else b
        question = self.b.phrase(templates).format(**fill, **words)
        return self.example(
            qtype,
            question,
            winner.name,
            hops,
            list(winner.aliases),
            compare=attribute,
            bridge=list(bridge),
            order="earlier" if earlier else "later",
            side="first" if first_wins else "second",
        )

    def make(self, qtype: str, pool: _Pool) -> QAExample | None:
        if qtype in ("compositional", "chain"):
            return self.compositional(qtype, pool)
        if qtype == "inference":
            return self.inference(pool)
        return self.comparison(qtype, pool)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _type_quotas(count: int, type_mix: dict[QuestionType, float]) -> dict[QuestionType, int]:
    """Exact per-type counts in proportion to the weights (largest remainders get the rounding)."""
    weights = {t: w for t, w in type_mix.items() if w > 0}
    total = sum(weights.values())
    shares = {t: count * w / total for t, w in weights.items()}
    quotas = {t: int(s) for t, s in shares.items()}
    for t in sorted(shares, key=lambda t: shares[t] - quotas[t], reverse=True)[
        : count - sum(quotas.values())
    ]:
        quotas[t] += 1
    return quotas


def _check_capacity(
    maker: _QuestionMaker, pool: _Pool, count: int, type_mix: dict[QuestionType, float]
) -> None:
    """Refuse, before any question is drawn, more questions of a type than the split can make."""
    quotas = _type_quotas(count, type_mix)
    capacity = {qtype: maker.capacity(qtype, pool) for qtype, quota in quotas.items() if quota}
    short = [qtype for qtype, most in capacity.items() if quotas[qtype] > most]
    if not short:
        return
    weights = {t: w for t, w in type_mix.items() if w > 0}
    most = min(int(capacity[t] * sum(weights.values()) / weights[t]) for t in short) + len(weights)
    while most > 0 and any(q > capacity.get(t, q) for t, q in _type_quotas(most, type_mix).items()):
        most -= 1
    asked = ", ".join(f"{quotas[t]:,} {t} (it can make {capacity[t]:,})" for t in short)
    raise ValueError(
        f"this world can make at most {most:,} distinct {pool.split} questions with this type_mix, not "
        f"{count:,}: they would need {asked}; raise --scale (the world's sizes), ask for fewer "
        f"{pool.split} questions, or lower the weight of {', '.join(short)} in type_mix"
    )


def _questions(
    maker: _QuestionMaker,
    pool: _Pool,
    count: int,
    type_mix: dict[QuestionType, float],
    seen: set[str],
) -> list[QAExample]:
    """``count`` distinct questions in the proportions of ``type_mix``, shuffled, with ids in final order."""
    out: list[QAExample] = []
    split = pool.split
    for qtype, quota in _type_quotas(count, type_mix).items():
        made, attempts = 0, 0
        while made < quota:
            attempts += 1
            if attempts > 500 * quota:  # capacity counts phrasings, not strings: a bound, not a promise
                raise ValueError(
                    f"found only {made:,} of {quota:,} distinct {qtype} {split} questions in "
                    f"{attempts - 1:,} draws; raise --scale (the world's sizes) or lower the weight of "
                    f"{qtype} in type_mix"
                )
            example = maker.make(qtype, pool)
            if example is None or example.question in seen:
                continue
            seen.add(example.question)
            if "side" in example.metadata:
                pool.sides[qtype, example.metadata["side"]] += 1
            out.append(example)
            made += 1
    maker.rng.shuffle(out)
    for number, example in enumerate(out):
        example.id = f"world-{split}-{number:05d}"
    return out


def generate_world(config: WorldConfig | None = None) -> World:
    """Build the world, its passages, and its train and dev questions. Deterministic for a config.

    Dev questions start from entities that no train question starts from, so dev measures reasoning over
    passages rather than recall of what training showed.
    """
    config = config or WorldConfig()
    builder = _WorldBuilder(config)
    builder.build_places()
    builder.build_people()
    builder.build_organisations()
    builder.build_works()
    builder.build_passages()

    starts = [e for e in builder.entities.values() if e.kind in ("person", "org", "work")]
    total = config.train_questions + config.dev_questions
    dev_share = config.dev_questions / total if total else 0.0
    dev_pool: list[Entity] = []
    train_pool: list[Entity] = []
    for entity in starts:
        (
            dev_pool
            if builder.rng.random() < max(dev_share, 0.15 if config.dev_questions else 0)
            else train_pool
        ).append(entity)
    maker = _QuestionMaker(builder)
    type_mix = dict(config.type_mix)
    train_starts, dev_starts = _Pool("train", train_pool), _Pool("dev", dev_pool)
    _check_capacity(maker, train_starts, config.train_questions, type_mix)
    _check_capacity(maker, dev_starts, config.dev_questions, type_mix)
    seen: set[str] = set()
    train = _questions(maker, train_starts, config.train_questions, type_mix, seen)
    dev = _questions(maker, dev_starts, config.dev_questions, type_mix, seen)
    return World(config, builder.entities, builder.passages, train, dev)


def write_world(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write ``corpus.jsonl``, ``train.jsonl``, ``dev.jsonl`` and ``world.yaml`` (the config) to a folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "corpus": out / "corpus.jsonl",
        "train": out / "train.jsonl",
        "dev": out / "dev.jsonl",
        "config": out / "world.yaml",
    }
    write_corpus(paths["corpus"], world.passages)
    write_flashrag(paths["train"], world.train)
    write_flashrag(paths["dev"], world.dev)
    world.config.to_yaml(paths["config"])
    return paths


SearchFn = Callable[[list[str], int], list[list[Passage]]]


@dataclass
class HopHitRate:
    """How well the gold decomposition retrieves, for one question type."""

    hops: int = 0
    hops_found: int = 0
    questions: int = 0
    questions_all_found: int = 0

    @property
    def hop_rate(self) -> float:
        return self.hops_found / self.hops if self.hops else 0.0

    @property
    def question_rate(self) -> float:
        return self.questions_all_found / self.questions if self.questions else 0.0


def hop_hit_rates(
    examples: Sequence[QAExample], search: SearchFn, k: int = 2, *, rule: MatchRule
) -> dict[str, HopHitRate]:
    """Per question type: how often a search with each gold sub-question finds that hop's gold passage in
    the top ``k``, and how often that holds for every hop of a question. Gold passages are recognised by
    ``rule`` (:func:`~r3rag.gold.resolve_gold_match` over the questions and the searched index).

    This is the world's difficulty gauge: at rates near 1, a policy that merely copies the gold
    decomposition never has to notice a miss and reformulate.
    """
    queries = [hop.question for e in examples for hop in e.decomposition]
    results = iter(search(queries, k) if queries else [])
    rates: dict[str, HopHitRate] = defaultdict(HopHitRate)
    for example in examples:
        rate = rates[example.type]
        golds = [GoldSet.of(hop.supporting_ids, hop.supporting_titles, rule) for hop in example.decomposition]
        found = [any(p in gold for p in next(results)) for gold in golds]
        rate.hops += len(found)
        rate.hops_found += sum(found)
        rate.questions += 1
        rate.questions_all_found += all(found)
    return dict(sorted(rates.items()))
