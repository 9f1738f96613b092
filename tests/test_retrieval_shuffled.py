"""The sentence-shuffled retriever of the RL rollout: the same passages, their sentences reordered by a
stream of the wrapper's seed and the passage's id; and the trainer searches through it only when asked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from r3rag.retrieval.shuffled import SentenceShuffledRetriever
from r3rag.schema import Passage
from r3rag.sentences import split_sentences
from rl_fixtures import FixedRetriever, tiny_config, tiny_trainer

SENTENCES = ("Film {i} is by Ada.", "It was produced by Bo Films.", "It came out in 19{i:02d}.", "Cy stars.")
PASSAGES = [
    Passage(f"p{i}", f"Film {i}", " ".join(s.format(i=i) for s in SENTENCES), score=float(i))
    for i in range(200)
]


class Index:
    """Every query finds all 200 passages; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], int]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.asked.append((list(queries), k))
        return [list(PASSAGES) for _ in queries]


def test_each_passage_keeps_its_sentences_in_an_order_drawn_for_it() -> None:
    index = Index()
    first, second = SentenceShuffledRetriever(index, seed=1).search(["a", "b"], 5)
    assert index.asked == [(["a", "b"], 5)]  # passed through as asked
    assert first == second  # a passage reads the same whichever query found it
    for before, after in zip(PASSAGES, first, strict=True):
        assert (after.id, after.title, after.score) == (before.id, before.title, before.score)
        assert sorted(split_sentences(after.text)) == sorted(split_sentences(before.text))
    # where the film's maker was the first sentence of every passage, it is now first about once in four
    still_first = sum(split_sentences(p.text)[0] == f"Film {i} is by Ada." for i, p in enumerate(first))
    assert 30 <= still_first <= 70, still_first
    assert first == SentenceShuffledRetriever(Index(), seed=1).search(["a"], 5)[0]  # a stream of the seed
    other = SentenceShuffledRetriever(Index(), seed=2).search(["a"], 5)[0]
    assert sum(a.text != b.text for a, b in zip(first, other, strict=True)) > 100


def test_a_one_sentence_passage_is_left_as_it_is() -> None:
    passage = Passage("p", "t", "Only this.")
    assert SentenceShuffledRetriever(FixedRetriever([passage]), seed=3).search(["q"], 1) == [[passage]]


def test_the_rollout_searches_shuffled_passages_only_when_asked_and_anew_each_iteration(
    tmp_path: Path,
) -> None:
    plain = tiny_trainer(tiny_config(tmp_path / "plain"))
    assert plain.rollout_retriever(1) is plain.retriever
    trainer = tiny_trainer(tiny_config(tmp_path / "shuffled", shuffle_sentences=True))
    trainer.retriever = Index()
    once, again, later = (trainer.rollout_retriever(n).search(["q"], 5)[0] for n in (1, 1, 2))
    assert once == again  # an iteration's order is fixed by the run's seed: a resumed run draws the same
    assert sum(a.text != b.text for a, b in zip(once, later, strict=True)) > 100
    assert sum(a.text != b.text for a, b in zip(PASSAGES, once, strict=True)) > 100
