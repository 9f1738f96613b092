"""Gold evidence: which retrieved passages are a question's gold supporting passages, decided once per run.

A question names its gold passages by id and by title. Ids are exact, but they belong to one corpus:
``r3rag data convert`` gives content-derived ids (:func:`~r3rag.schema.passage_id_for`), FlashRAG's wiki18
numbers its passages "0", "1", ... Matched by id against an index with other ids, no passage is ever gold,
and every consumer of gold evidence reads zero without a word: evaluation's gold recall, the reference
relevance judge (the default process reward of ``r3rag train``), the oracle teacher and the world's
difficulty gauge. So the rule is decided from the data, once, where the questions meet the index
(:func:`resolve_gold_match`); the decision is recorded by the run and handed to each consumer as a
concrete ``"id"`` or ``"title"``:

- ``auto``: ids when the index holds every gold passage id of the questions; otherwise titles: when it holds
  none (another corpus's numbering), only some (a corpus missing passages, or ids that coincide by chance:
  titles still find the passages that are there, where ids would call the rest never retrieved), when it
  cannot say (a retriever without :class:`PassageLookup`), or when the questions carry no ids.
- ``id``: ids, as configured; an error naming the question file when the index holds none of that file's
  gold ids, since every score would be zero.
- ``title``: titles, compared case-, Unicode- and spacing-insensitively (corpora and datasets disagree on
  all three).

Under ``id``, an example that carries no ids (its source had no context paragraphs to derive them from) is
matched by its titles, the best evidence it has. Titles are coarser than ids: a title names every passage of
one article, so matching by title credits any chunk of a gold article.

This module sits on the ground floor (it imports only :mod:`r3rag.schema`) so that the data, rewards,
cold-start and evaluation layers all share it.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from r3rag.schema import Passage, QAExample

logger = logging.getLogger(__name__)

MatchBy = Literal["auto", "id", "title"]
"""What a config asks for (``JudgeConfig.reference_match``)."""
MatchRule = Literal["id", "title"]
"""What is in force once :func:`resolve_gold_match` has decided."""

_EXAMPLES_SHOWN = 3


@runtime_checkable
class PassageLookup(Protocol):
    """An index that can say which passage ids it holds (local BM25 and dense indexes, the HTTP client)."""

    def known_ids(self, ids: Iterable[str]) -> set[str] | None:
        """The subset of ``ids`` the index holds; None when it cannot tell (e.g. an older server)."""
        ...


def title_key(title: str) -> str:
    """A title as gold matching compares it: NFKC, case-folded, spacing collapsed."""
    return " ".join(unicodedata.normalize("NFKC", title).casefold().split())


@dataclass(frozen=True, slots=True)
class GoldSet:
    """One question's (or one hop's) gold passages under a rule: the passage field compared and the keys."""

    field: MatchRule
    keys: frozenset[str]

    @classmethod
    def of(cls, ids: Sequence[str], titles: Sequence[str], rule: MatchRule) -> GoldSet:
        """Ids under ``id`` when there are any, else the normalised titles."""
        if rule == "id" and ids:
            return cls("id", frozenset(ids))
        return cls("title", frozenset(title_key(t) for t in titles))

    def key(self, passage: Passage) -> str:
        return passage.id if self.field == "id" else title_key(passage.title)

    def __contains__(self, passage: object) -> bool:
        return isinstance(passage, Passage) and self.key(passage) in self.keys

    def __len__(self) -> int:
        return len(self.keys)


def gold_ids(examples: Iterable[QAExample]) -> set[str]:
    """Every gold passage id the examples name, their decompositions' included (the oracle's evidence)."""
    return {
        pid
        for ex in examples
        for pid in (*ex.supporting_ids, *(i for hop in ex.decomposition for i in hop.supporting_ids))
    }


@dataclass(frozen=True, slots=True)
class GoldMatch:
    """The rule in force for a run's questions, with what decided it (for manifests, logs and reports).

    ``gold_ids`` counts the distinct gold passage ids of the questions; ``in_index`` how many of them the
    index holds (None when it cannot tell).
    """

    rule: MatchRule
    requested: MatchBy
    gold_ids: int
    in_index: int | None

    @property
    def reason(self) -> str:
        if not self.gold_ids:
            found = "the questions carry no gold passage ids"
        elif self.in_index is None:
            found = f"the index cannot tell which of the {self.gold_ids} gold passage ids it holds"
        else:
            found = f"{self.in_index} of {self.gold_ids} gold passage ids are in the index"
        return f"{self.requested}: {found}"

    def describe(self) -> str:
        """'gold passages matched by title (auto: 0 of 128 gold passage ids are in the index)'."""
        return f"gold passages matched by {self.rule} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "requested": self.requested,
            "gold_ids": self.gold_ids,
            "in_index": self.in_index,
            "description": self.describe(),
        }


def _held(index: object | None, ids: set[str]) -> set[str] | None:
    if not ids:
        return set()
    if not isinstance(index, PassageLookup):
        return None
    held = index.known_ids(sorted(ids))
    return None if held is None else held & ids


def resolve_gold_match(
    requested: MatchBy, sources: Mapping[str, Sequence[QAExample]], index: object | None
) -> GoldMatch:
    """Decide how the questions of ``sources`` (question file name -> its examples) recognise gold passages
    retrieved from ``index`` (see the module docstring for the rules). One look-up of every gold id.

    Raises ValueError, naming the files, when ``requested`` is ``id`` and the index holds none of a file's
    gold passage ids.
    """
    per_source = {name: gold_ids(examples) for name, examples in sources.items()}
    wanted = set().union(*per_source.values())
    held = _held(index, wanted)
    if requested == "id":
        absent = [name for name, ids in per_source.items() if ids and held is not None and not ids & held]
        if absent:
            missing = sorted(set().union(*(per_source[name] for name in absent)))
            raise ValueError(
                f"reference_match: id, but the index holds none of the gold passage ids of "
                f"{', '.join(absent)} ({len(missing)} ids, e.g. {', '.join(missing[:_EXAMPLES_SHOWN])}): "
                "the corpus numbers its passages differently; use reference_match: auto or title"
            )
        rule: MatchRule = "id"
    elif requested == "title":
        rule = "title"
    else:
        rule = "id" if wanted and held is not None and len(held) == len(wanted) else "title"
    match = GoldMatch(rule, requested, len(wanted), None if held is None else len(held))
    partial = held is not None and 0 < len(held) < len(wanted)
    if (requested == "auto" and wanted and rule == "title") or (requested == "id" and partial):
        logger.warning("%s: %s", ", ".join(sources), match.describe())
    else:
        logger.info("%s: %s", ", ".join(sources), match.describe())
    return match
