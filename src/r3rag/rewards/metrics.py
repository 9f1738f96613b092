"""Answer and retrieval metrics: normalisation, exact match, token F1, cover-EM, gold-passage recall.

These are the cheap, deterministic halves of the paper's judges and the EM/F1 columns of the evaluation.
They follow SQuAD / FlashRAG so numbers stay comparable with the literature, with three deliberate changes
that only matter on input those scripts handle badly (each is pinned by a test):

* Normalisation also folds Unicode (NFKC, ``casefold``) and removes Unicode punctuation (curly quotes, en
  dashes, ...). On ASCII text it is exactly SQuAD's ``normalize_answer``.
* A gold alias that normalises to nothing (``"The"``, ``"A"``) is ignored, and an empty prediction scores 0:
  an empty string would otherwise "match" or "be contained in" anything, which a policy can exploit.
* Cover-EM matches whole tokens by default (gold ``"no"`` is not covered by ``"I don't know"``) and a yes/no
  gold is not covered by a prediction that also contains the opposite word (``"yes or no"``). FlashRAG's
  raw-substring behaviour is available with ``whole_words=False``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from r3rag.gold import GoldSet, MatchRule
from r3rag.schema import Passage

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)
# FlashRAG's F1 only credits these when prediction and gold are the same word: a "yes" must not earn partial
# credit against "no", nor "no answer" against anything.
_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})
_OPPOSITE = {"yes": "no", "no": "yes"}


def _is_punctuation(ch: str) -> bool:
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (lower case, drop punctuation and articles, collapse whitespace), Unicode-aware."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _normalized_golds(golds: Iterable[str]) -> list[str]:
    """Normalised gold aliases, without the ones that normalise to nothing."""
    return [g for g in (normalize_answer(gold) for gold in golds) if g]


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias, else 0.0."""
    pred = normalize_answer(prediction or "")
    return float(bool(pred) and pred in _normalized_golds(golds))


def token_f1(prediction: str | None, golds: Sequence[str]) -> float:
    """Token-level F1 between prediction and gold, the maximum over gold aliases (FlashRAG's rules).

    A prediction or gold that is ``yes``/``no``/``noanswer`` scores only against an identical string, so
    ``"no"`` gets nothing against ``"yes"`` and ``"yes it is"`` gets nothing against ``"yes"``.
    """
    pred = normalize_answer(prediction or "")
    pred_tokens = pred.split()
    best = 0.0
    for gold in _normalized_golds(golds):
        if (pred in _SPECIAL_ANSWERS or gold in _SPECIAL_ANSWERS) and pred != gold:
            continue
        gold_tokens = gold.split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision = common / len(pred_tokens)
        recall = common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _contains_tokens(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def cover_exact_match(prediction: str | None, golds: Sequence[str], whole_words: bool = True) -> float:
    """1.0 if some normalised gold alias occurs inside the normalised prediction, else 0.0.

    With ``whole_words`` (default) the gold must occur as a run of whole tokens, and a ``yes``/``no`` gold is
    not covered when the prediction also contains the opposite word. Without it this is FlashRAG's
    substring test (``Sub_ExactMatch``).
    """
    pred = normalize_answer(prediction or "")
    if not pred:
        return 0.0
    if not whole_words:
        return float(any(gold in pred for gold in _normalized_golds(golds)))
    pred_tokens = pred.split()
    for gold in _normalized_golds(golds):
        opposite = _OPPOSITE.get(gold)
        if opposite is not None and opposite in pred_tokens:
            continue
        if _contains_tokens(pred_tokens, gold.split()):
            return 1.0
    return 0.0


def supporting_recall(
    passages: Iterable[Passage],
    supporting_ids: Sequence[str],
    supporting_titles: Sequence[str],
    by: MatchRule,
) -> float | None:
    """Share of the gold supporting passages found among ``passages``; None without gold. ``by`` is the rule
    :func:`~r3rag.gold.resolve_gold_match` decided for the run (ids, else titles; or titles)."""
    gold = GoldSet.of(supporting_ids, supporting_titles, by)
    if not gold:
        return None
    return len({gold.key(p) for p in passages} & gold.keys) / len(gold)


def supporting_precision(
    passages: Sequence[Passage],
    supporting_ids: Sequence[str],
    supporting_titles: Sequence[str],
    by: MatchRule,
) -> float | None:
    """Share of ``passages`` that are gold supporting passages; None without gold, 0.0 for no passages.
    ``by`` as for :func:`supporting_recall`."""
    gold = GoldSet.of(supporting_ids, supporting_titles, by)
    if not gold:
        return None
    if not passages:
        return 0.0
    return sum(p in gold for p in passages) / len(passages)
