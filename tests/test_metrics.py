"""Answer and retrieval metrics against hand-computed values."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r3rag.rewards.metrics import (
    cover_exact_match,
    exact_match,
    normalize_answer,
    supporting_precision,
    supporting_recall,
    token_f1,
)
from r3rag.schema import Passage


def squad_normalize(s: str) -> str:
    """SQuAD v1.1's normalize_answer, written out as the reference for ASCII input."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_normalisation_is_squad_on_ascii(text: str) -> None:
    assert normalize_answer(text) == squad_normalize(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Eiffel\tTower!", "eiffel tower"),
        ("Theatre", "theatre"),  # "the" inside a word is not an article
        ("“The Godfather”, Part II", "godfather part ii"),  # curly quotes are punctuation
        ("ＵＳＡ", "usa"),  # full-width letters fold (NFKC)
        ("Straße", "strasse"),  # casefold, not just lower
        ("the-end", "theend"),  # punctuation goes before articles, as in SQuAD
        ("A", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# (prediction, gold aliases, EM, F1), every F1 worked out by hand in the comment.
CASES = [
    ("Paris", ["Paris"], 1, 1.0),
    ("the Eiffel Tower", ["Eiffel Tower"], 1, 1.0),  # article dropped
    ("An apple a day", ["apple day"], 1, 1.0),  # three articles dropped
    ("Theatre", ["the atre"], 0, 0.0),  # gold -> "atre"; no shared token
    ("U.S.A.", ["USA"], 1, 1.0),
    ("Paris, France", ["Paris"], 0, 2 / 3),  # P 1/2, R 1 -> 2/3
    ("New York City", ["New York"], 0, 0.8),  # P 2/3, R 1 -> 0.8
    ("york new", ["New York"], 0, 1.0),  # F1 is a bag of words
    ("Obama Obama", ["Barack Obama"], 0, 0.5),  # common 1 (clipped count); P 1/2, R 1/2
    ("1,000", ["1000"], 1, 1.0),
    ("3.5 million", ["35 million"], 1, 1.0),  # SQuAD quirk: the decimal point is punctuation
    ("April 4, 1968", ["4 April 1968"], 0, 1.0),
    ("1968", ["April 4, 1968"], 0, 0.5),  # P 1, R 1/3 -> 0.5
    ("1939–1945", ["1939-1945"], 1, 1.0),  # en dash and hyphen both removed
    ("100 %", ["100%"], 1, 1.0),
    ("$5", ["5"], 1, 1.0),  # ASCII symbols are in string.punctuation
    ("€5", ["5"], 0, 0.0),  # non-ASCII symbols are not punctuation
    ("“The Godfather”", ["The Godfather"], 1, 1.0),
    ("Beyoncé", ["Beyonce"], 0, 0.0),  # accents are kept, as in SQuAD
    ("ＵＳＡ", ["usa"], 1, 1.0),
    ("STRASSE", ["Straße"], 1, 1.0),
    ("Ⅳ", ["IV"], 1, 1.0),  # the Roman numeral character folds to "iv"
    ("O'Neil", ["ONeil"], 1, 1.0),
    ("rock'n'roll", ["rock n roll"], 0, 0.0),  # "rocknroll" vs three tokens
    ("  Barack   Obama\n", ["Barack Obama"], 1, 1.0),
    ("the Who", ["The Who"], 1, 1.0),
    ("yes", ["yes"], 1, 1.0),
    ("Yes.", ["yes"], 1, 1.0),
    ("no", ["yes"], 0, 0.0),
    ("yes it is", ["yes"], 0, 0.0),  # a yes/no gold only scores against the same word
    ("yes", ["yes it is"], 0, 0.0),  # a yes/no prediction likewise
    ("Nobody", ["no"], 0, 0.0),
    ("no answer", ["noanswer"], 0, 0.0),
    ("Noanswer", ["noanswer"], 1, 1.0),
    ("JFK", ["John F. Kennedy", "JFK"], 1, 1.0),  # any alias
    ("John Kennedy", ["John F. Kennedy", "JFK"], 0, 0.8),  # P 1, R 2/3 -> 0.8 (best alias)
    ("President Kennedy", ["John F. Kennedy", "Kennedy"], 0, 2 / 3),  # 0.4 vs 2/3: max
    ("the the the", ["The"], 0, 0.0),  # empty prediction; empty gold ignored
    ("", ["Paris"], 0, 0.0),
    (None, ["Paris"], 0, 0.0),
    ("an", ["a"], 0, 0.0),  # both empty after normalisation: no match
    ("A", ["A", "Option A"], 0, 0.0),  # "a" is an article: nothing is left
    ("Option A", ["A", "Option A"], 1, 1.0),
]


def test_token_f1_clips_counts_of_repeated_tokens() -> None:
    """Counter intersection, not set intersection: "new" twice in both is 2 common tokens (P = R = 2/3), where
    sets would see 1 ("Obama Obama" vs "Barack Obama" cannot tell the two apart)."""
    assert token_f1("new new york", ["new new jersey"]) == pytest.approx(2 / 3)
    assert token_f1("new new new", ["new york"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


@pytest.mark.parametrize(("prediction", "golds", "em", "f1"), CASES)
def test_exact_match_and_f1(prediction: str | None, golds: list[str], em: int, f1: float) -> None:
    assert exact_match(prediction, golds) == em
    assert token_f1(prediction, golds) == pytest.approx(f1, abs=1e-9)


@pytest.mark.parametrize(
    ("prediction", "golds", "whole_words", "expected"),
    [
        ("He was born in Paris, France.", ["Paris"], True, 1),
        ("it was JFK", ["John F. Kennedy", "JFK"], True, 1),
        ("the answer is the Who", ["The Who"], True, 1),
        ("No, they are not.", ["no"], True, 1),
        ("I don't know", ["no"], True, 0),  # "no" inside "know" does not count ...
        ("I don't know", ["no"], False, 1),  # ... except as a raw substring (FlashRAG)
        ("yes, I know", ["yes"], True, 1),  # nor does "no" inside "know" count as the opposite of "yes"
        ("yes or no", ["yes"], True, 0),  # both polarities: not covered
        ("yes or no", ["yes"], False, 1),
        ("New Yorker", ["New York"], True, 0),
        ("New Yorker", ["New York"], False, 1),
        ("John F Kennedy", ["Kennedy John"], True, 0),  # order matters for cover-EM
        ("anything at all", ["The"], True, 0),  # an empty gold covers nothing
        ("anything at all", ["The"], False, 0),
        ("", ["Paris"], False, 0),
    ],
)
def test_cover_exact_match(prediction: str, golds: list[str], whole_words: bool, expected: int) -> None:
    assert cover_exact_match(prediction, golds, whole_words=whole_words) == expected


A = Passage(id="a", title="Alpha", text="...")
B = Passage(id="b", title="Beta", text="...")
C = Passage(id="c", title="  alpha ", text="...")


def test_supporting_recall_by_id_and_title() -> None:
    assert supporting_recall([A, B], ["a", "x"], [], "id") == 0.5
    assert supporting_recall([A, A, B], ["a", "b"], [], "id") == 1.0  # a passage found twice counts once
    assert supporting_recall([A, B], [], ["ALPHA", "Gamma"], "title") == 0.5  # case and spacing ignored
    assert supporting_recall([A], ["c"], ["Alpha"], "id") == 0.0  # by id when the example has ids
    assert supporting_recall([A, B], [], ["Alpha", "Gamma"], "id") == 0.5  # ... else by its titles
    assert supporting_recall([A], ["c"], ["Alpha"], "title") == 1.0
    assert supporting_recall([A], [], [], "id") is None


def test_supporting_precision() -> None:
    assert supporting_precision([A, B, C], [], ["Alpha"], "id") == pytest.approx(2 / 3)
    assert supporting_precision([A, B, C], ["a"], ["Alpha"], "id") == pytest.approx(1 / 3)
    assert supporting_precision([A, B, C], ["a"], ["Alpha"], "title") == pytest.approx(2 / 3)
    assert supporting_precision([], ["a"], [], "id") == 0.0
    assert supporting_precision([A], [], [], "title") is None
